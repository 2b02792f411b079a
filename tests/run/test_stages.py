"""Stages: a grader's identity is part of the fingerprint — changing the LLM model, the embedder or a
threshold recomputes the stage it judged; an unchanged grader reuses the result."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

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


def test_steer_killed_during_final_generations_resumes_at_the_next_call(tiny_run, monkeypatch):
    """The final steered / control generations run in several calls; a stage interrupted after the
    first call keeps it and, run again, generates only the calls left, giving the texts an
    uninterrupted run gives."""
    import shutil

    import difflens.adl.steered as steered
    from difflens.adl.steering import SteeringConfig
    from difflens.rundir.artifacts import Generation, load_jsonl
    from difflens.run.stages import run_steer

    pair, layout, _ = tiny_run
    graders = Graders(coherence=PassesEveryOther(), scale=None, relevance=None)
    cfg = SteeringConfig(positions=[0, 1], search_iters=2, refine_iters=0, search_samples=2, min_coherent=1,
                         final_samples=2, max_new_tokens=3, prompts=["hi", "tell me a story"])
    monkeypatch.setattr(steered, "rows_per_call", lambda pair, context, budget_bytes=None: 4)
    real = steered.generate_vectors
    calls = {"n": 0, "fail_at": None}

    def counting(*a, **kw):
        calls["n"] += 1
        if calls["fail_at"] is not None and calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(steered, "generate_vectors", counting)
    [clean] = run_steer(pair, layout, graders, cfg, progress=False)
    want = [g.model_dump() for g in load_jsonl(Generation, layout.steering_generations(clean.dataset, clean.layer))]
    # 2 positions × (steered + random) × 2 prompts × 2 samples = 16 rows: 4 calls of 4
    finals = [g for g in want if g["position"] is not None]
    assert len(finals) == 16
    total = calls["n"]

    # the same stage in a fresh run directory, interrupted at its second final call
    root = layout.root.parent / "again"
    shutil.copytree(layout.root, root, ignore=shutil.ignore_patterns("steer", "stages"))
    (root / "stages").mkdir()
    fresh = type(layout)(root)
    calls["n"], calls["fail_at"] = 0, total - 1  # the 3rd of the 4 final calls (the last 4 of the run)
    with pytest.raises(KeyboardInterrupt):
        run_steer(pair, fresh, graders, cfg, progress=False)
    partial = json.loads(fresh.steering_partial(clean.dataset, clean.layer).read_text())
    assert sorted(partial["final_calls"]["calls"]) == ["0/4", "1/4"]
    calls["n"], calls["fail_at"] = 0, None
    [again] = run_steer(pair, fresh, graders, cfg, progress=False)
    assert calls["n"] == 2  # only the two calls left
    got = [g.model_dump() for g in load_jsonl(Generation, fresh.steering_generations(again.dataset, again.layer))]
    assert got == want


def test_a_stage_rerun_in_another_precision_computes_again(tiny_run, tmp_path, monkeypatch):
    """Lens and steer results depend on the precision the pair computes in: `difflens steer RUN
    --dtype bfloat16` after a float32 steer (or the other way round) runs the stage again instead
    of returning the other precision's results; a float32 stage keeps the fingerprint it had before
    precision was part of it."""
    from conftest import save_tiny
    from difflens.adl.steering import SteeringConfig
    from difflens.models.pair import load_pair
    from difflens.models.precision import fingerprint_part
    from difflens.run.stages import run_steer

    assert fingerprint_part("float32") == fingerprint_part(None) == {}
    assert fingerprint_part("bf16-fp32res") == {"precision": "bf16-fp32res"}
    pair32, layout, _ = tiny_run
    # the same tiny checkpoints (save_tiny is deterministic), loaded in bfloat16
    pair16 = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)), dtype="bfloat16")
    assert pair16.precision == "bfloat16"
    calls = {"lens": 0, "steer": 0}
    real_ps, real_find, real_finds = stages.patchscope, stages.find_threshold, stages.find_thresholds

    def ps(*a, **k):
        calls["lens"] += 1
        return real_ps(*a, **k)

    def find(*a, **k):
        calls["steer"] += 1
        return real_find(*a, **k)

    def finds(*a, **k):
        calls["steer"] += 1
        return real_finds(*a, **k)

    monkeypatch.setattr(stages, "patchscope", ps)
    monkeypatch.setattr(stages, "find_threshold", find)
    monkeypatch.setattr(stages, "find_thresholds", finds)
    graders = Graders(coherence=PassesEveryOther(), scale=PicksFirst("m"), relevance=None)
    lens_cfg = LensConfig(positions=[1], controls=False)
    steer_cfg = SteeringConfig(positions=[0], search_iters=2, refine_iters=0, search_samples=2, min_coherent=2,
                               final_samples=1, max_new_tokens=2, prompts=["hi"], random_control=False)

    for pair, want in ((pair32, 1), (pair32, 1), (pair16, 2), (pair16, 2), (pair32, 3)):
        [ps] = run_lens(pair, layout, graders, lens_cfg, progress=False)
        [res] = run_steer(pair, layout, graders, steer_cfg, progress=False)
        assert calls == {"lens": want, "steer": want}, (pair.precision, calls)
        assert res.precision == ps.precision == pair.precision
        # written into the files when not float32 (a float32 file is as it was before the field)
        files = [layout.steering(res.dataset, 2), layout.patchscope(res.dataset, 2)]
        assert all(json.loads(f.read_text()).get("precision") == (None if pair is pair32 else "bfloat16")
                   for f in files)
