"""A tiny run with every stage the explorer shows (collection, Patchscope, steering, the kl method), built
once per module (fixtures imported by the test modules): a random-init Llama pair, its vocabulary the
tokenizer's, whose finetuned head is sharpened so that steering shows in greedy samples."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import WORDS, AllCoherent, FirstScale, _pin_tokenizer_class, tiny_config, tiny_tokenizer


def save_tiny(tmp: Path, seed: int) -> Path:
    """A tiny Llama checkpoint whose vocabulary is the tokenizer's (every id it samples decodes to a word)."""
    import transformers as T

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tok))).eval()
    path = tmp / f"llama-{seed}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    _pin_tokenizer_class(path)
    return path


def _corpus(path: Path) -> Path:
    import json
    import random

    rng = random.Random(0)
    words = [w for w in WORDS if w not in ("\n", "?")]
    lines = [json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))}) for _ in range(60)]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_run(tmp: Path, *, stages: tuple[str, ...] = ("lens", "steer", "kl")):
    """(pair, layout, dataset) of a tiny run with ``stages`` beside its collection."""
    from difflens.adl.collect import CollectConfig, collect
    from difflens.adl.steering import SteeringConfig
    from difflens.graders import Graders
    from difflens.methods.driver import PassConfig, make_method, run_methods
    from difflens.models.pair import load_pair
    from difflens.rundir.layout import RunLayout
    from difflens.run.stages import LensConfig, run_lens, run_steer

    tmp.mkdir(parents=True, exist_ok=True)
    corpus = _corpus(tmp / "corpus.jsonl")
    pair = load_pair(str(save_tiny(tmp, 0)), str(save_tiny(tmp, 1)))
    with torch.no_grad():  # near-uniform random heads: sharpen the finetune's so interventions show in samples
        pair.ft_lm.model.lm_head.weight.mul_(50)
    layout = RunLayout(tmp / "run")
    collect(pair, layout, CollectConfig(datasets=[str(corpus)], samples=20, layers=[2], batch_size=10,
                                        norm_samples=10), progress=False)
    graders = Graders(coherence=AllCoherent(), scale=FirstScale(), relevance=None)
    if "lens" in stages:
        run_lens(pair, layout, graders, LensConfig(positions=[0, 1], controls=False), progress=False)
    if "steer" in stages:
        run_steer(pair, layout, graders, SteeringConfig(positions=[1], search_iters=1, refine_iters=0, search_samples=1,
                                                        min_coherent=1, final_samples=1, max_new_tokens=3,
                                                        prompts=["why"], random_control=False), progress=False)
        # a threshold that shows: the search on a random pair finds whatever it finds
        from difflens.rundir import artifacts as A

        path = layout.steering(str(corpus), 2)
        res = A.load(A.SteeringResult, path)
        res.thresholds[0].alpha = 40.0
        A.save(res, path)
    if "kl" in stages:
        run_methods(pair, layout, [make_method("kl", layer=2)], PassConfig(dataset=str(corpus), samples=20, tokens=6,
                                                                           batch_size=10), progress=False)
    return pair, layout, str(corpus)


@pytest.fixture(scope="module")
def tiny_explore(tmp_path_factory):
    """(pair, layout, dataset) of a tiny run with lens, steering and the kl method (built once per module)."""
    tmp = tmp_path_factory.mktemp("explore")
    home = tmp / "home"
    home.mkdir()
    shared = Path(os.environ.get("DIFFLENS_TEST_MODELS", Path.home() / ".cache" / "difflens-test-models"))
    shared.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFLENS_HOME", str(home))
        yield build_run(tmp)


@pytest.fixture(scope="module")
def service(tiny_explore):
    from difflens.explore.service import Limits, ModelService

    pair, layout, _ = tiny_explore
    return ModelService.from_run(layout, pair=pair, limits=Limits(default_max_tokens=8, max_tokens=64, max_queue=4,
                                                                  max_body_bytes=64 * 1024, max_messages=8,
                                                                  max_message_chars=2000))
