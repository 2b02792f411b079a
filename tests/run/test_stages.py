"""Stages: a grader's identity is part of the fingerprint — changing the LLM model, the embedder or a
threshold recomputes the stage it judged; an unchanged grader reuses the result."""
from __future__ import annotations

from dataclasses import dataclass

import difflens.run.stages as stages
from conftest import PassesEveryOther
from difflens.graders import Graders, grader_identity
from difflens.graders.scale import LLMScaleGrader
from difflens.run.stages import LensConfig, run_lens


@dataclass
class FakeClientConfig:
    model: str
    base_url: str = "http://127.0.0.1:9/v1"


@dataclass
class FakeClient:
    config: FakeClientConfig


@dataclass
class PicksFirst:
    """A scale grader whose identity includes an LLM model name and a threshold."""

    model: str
    threshold: float = 0.5
    name: str = "llm"

    def identity(self):
        return {"backend": "llm", "model": self.model, "threshold": self.threshold}

    def choose(self, candidates):
        s = min(candidates)
        return s, candidates[s][:3], "first"


def test_llm_model_name_is_in_the_identity():
    a = grader_identity(LLMScaleGrader(FakeClient(FakeClientConfig("openai/gpt-5-mini"))))
    b = grader_identity(LLMScaleGrader(FakeClient(FakeClientConfig("google/gemini-2.5-flash"))))
    assert a != b and "gpt-5-mini" in str(a) and "gemini" in str(b)


def test_changing_the_grader_recomputes_lens_and_only_then(tiny_run, monkeypatch):
    pair, layout, _ = tiny_run
    calls = []
    real = stages.patchscope

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(stages, "patchscope", counting)
    cfg = LensConfig(positions=[1], controls=False)

    def graders(model, threshold=0.5):
        return Graders(coherence=None, scale=PicksFirst(model, threshold), relevance=None)

    run_lens(pair, layout, graders("model-a"), cfg, progress=False)
    run_lens(pair, layout, graders("model-a"), cfg, progress=False)
    assert len(calls) == 1  # unchanged grader: reused
    run_lens(pair, layout, graders("model-b"), cfg, progress=False)
    assert len(calls) == 2  # another LLM model: recomputed
    run_lens(pair, layout, graders("model-b", threshold=0.6), cfg, progress=False)
    assert len(calls) == 3  # another threshold: recomputed




def test_steering_bar_is_relative_to_unsteered_pass_rate_and_recorded(tiny_run):
    from difflens.adl.steering import SteeringConfig
    from difflens.run.stages import run_steer

    pair, layout, _ = tiny_run
    graders = Graders(coherence=PassesEveryOther(), scale=None, relevance=None)
    cfg = SteeringConfig(positions=[0], search_iters=2, refine_iters=0, search_samples=4, min_coherent=4,
                         final_samples=1, max_new_tokens=3, prompts=["hi"], random_control=False)
    [res] = run_steer(pair, layout, graders, cfg, progress=False)
    assert res.unsteered_pass_rate == 0.5
    assert res.min_coherent == 2  # ceil(4 · 0.5): the paper's 4/4 would fail every α, even 0
    [th] = res.thresholds
    assert th.min_coherent == 2
    assert all(s.coherent == (s.n_coherent >= 2) for s in th.steps)
    assert th.alpha > 0  # 2 of every 4 pass: each tested α is coherent under the relative bar

    absolute = cfg.model_copy(update={"coherence_reference": "absolute"})
    [res] = run_steer(pair, layout, graders, absolute, progress=False)
    assert res.min_coherent == 4 and res.unsteered_pass_rate == 0.5
    assert res.thresholds[0].alpha == 0.0  # nothing reaches 4/4
