"""Steering: α=0 is a no-op, pad positions are not steered, the paper's defaults, early stopping."""
from __future__ import annotations

import torch

from difflens.adl.steering import (STEERING_PROMPTS, THRESHOLD_PROMPTS, SteeringConfig, encode_prompts_left, generate,
                                   steering_hook)


def test_alpha_zero_steering_is_a_noop(tiny_run):
    pair, _, c = tiny_run
    with torch.no_grad():  # a random-init model is near-uniform; sharpen it so steering shows in samples
        pair.ft_lm.model.lm_head.weight.mul_(100)
    kw = dict(layer=2, eta=c.eta_ft, n=3, temperature=1.0, max_new_tokens=8, seed=5)
    plain = generate(pair, ["tell me a story", "why"], direction=None, alpha=0.0, **kw)
    zero = generate(pair, ["tell me a story", "why"], direction=c.delta[0], alpha=0.0, **kw)
    strong = generate(pair, ["tell me a story", "why"], direction=c.delta[0], alpha=50.0, **kw)
    assert plain == zero
    assert plain != strong


def test_pad_positions_are_not_steered(tiny_run):
    pair, _, c = tiny_run
    ids, mask = encode_prompts_left(pair, ["why", "tell me a story about the cat"])
    assert mask[0, 0] == 0 and mask[1].all()  # the short prompt is left-padded
    add = torch.randn(pair.arch.hidden_size)
    clean = pair.ft_arch.capture(pair.ft_lm.model, ids, [2], attention_mask=mask)[2]
    with steering_hook(pair, 2, add, mask):
        steered = pair.ft_arch.capture(pair.ft_lm.model, ids, [2], attention_mask=mask)[2]
    diff = steered - clean
    torch.testing.assert_close(diff[mask == 0], torch.zeros_like(diff[mask == 0]))
    torch.testing.assert_close(diff[mask == 1], add.expand(int(mask.sum()), -1), rtol=1e-5, atol=1e-5)


def test_steering_config_defaults_follow_paper():
    cfg = SteeringConfig()
    assert (cfg.alpha_max, cfg.search_iters, cfg.refine_iters, cfg.search_samples, cfg.min_coherent) == (100, 10, 5, 10, 8)
    assert cfg.search_temperature == 1.2 and cfg.final_temperature == 1.1 and cfg.final_samples == 5
    assert len(cfg.prompts) == 20 and len(cfg.threshold_prompts) == 3


def test_early_stop_chunks_reach_the_same_verdict():
    import itertools

    from difflens.adl.steering import early_stop_chunks

    assert early_stop_chunks(10, 8) == [3, 7]
    assert early_stop_chunks(4, 4) == [1, 3]
    assert early_stop_chunks(2, 1) == [2]
    # exhaustively: deciding after chunks equals deciding on all 10 samples
    for verdicts in itertools.product([True, False], repeat=10):
        full = sum(verdicts) >= 8
        ok = bad = drawn = 0
        for m in early_stop_chunks(10, 8):
            chunk = verdicts[drawn:drawn + m]
            drawn += m
            ok += sum(chunk)
            bad += m - sum(chunk)
            if ok >= 8 or bad > 2:
                break
        assert (ok >= 8) == full


# --------------------------------------------------------------------------------------------
# Prompt sets
# --------------------------------------------------------------------------------------------


def test_prompt_sets():
    assert len(STEERING_PROMPTS) == 20
    assert len(set(STEERING_PROMPTS)) == 20
    assert all(10 < len(p) < 200 for p in STEERING_PROMPTS)
    assert any("barista" in p for p in STEERING_PROMPTS)
    assert THRESHOLD_PROMPTS == [
        "Tell me a story?",
        "Give me some ideas for some fun weekend activities?",
        "Why don't you choose a topic of conversation for us?",
    ]
