"""Logit lens, Patchscope, steering and the offline graders on tiny models."""
from __future__ import annotations

import pytest
import torch

from conftest import save_tiny
from difflens.run import artifacts as A
from difflens.adl.collect import CollectConfig, collect
from difflens.graders import OfflineScaleGrader, tournament
from difflens.graders.coherence import repetition_score
from difflens.run.layout import RunLayout
from difflens.adl.logit_lens import logit_lens
from difflens.adl.patchscope import IDENTITY_PROMPTS, SCALES, intersect_rank, patched_next_token_probs
from difflens.models.pair import load_pair
from difflens.adl.steering import SteeringConfig, encode_prompts_left, generate, steering_hook


@pytest.fixture
def tiny_run(tmp_path, corpus_file):
    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    layout = RunLayout(tmp_path / "run")
    res = collect(pair, layout, CollectConfig(datasets=[str(corpus_file)], samples=20, layers=[2], batch_size=10,
                                              norm_samples=10), progress=False)
    return pair, layout, res[str(corpus_file)][0]


def test_scale_grid_is_the_papers():
    assert len(SCALES) == 30 and SCALES[:3] == (0.5, 0.6, 0.7) and SCALES[15] == 2.0
    assert SCALES[16:21] == (3.0, 4.0, 5.0, 10.0, 20.0) and SCALES[-1] == 200.0
    assert IDENTITY_PROMPTS[0] == "man -> man\n1135 -> 1135\nhello -> hello\n?"


def test_patched_forward_carries_the_vector(tiny_run):
    pair, _, c = tiny_run
    layer, eta = 2, 7.5
    v = c.delta[1]
    seen = {}

    def grab(_m, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handle = pair.ft_arch.layers[layer + 1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        probs = patched_next_token_probs(pair, layer, v, [0.5, 2.0], eta)
    finally:
        handle.remove()
    assert probs.shape[:2] == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))
    from difflens.adl.patchscope import _encode_prompts

    enc = _encode_prompts(pair, IDENTITY_PROMPTS)
    unit = v / v.norm()
    h = seen["h"]  # input of layer+1 = patched output of layer, rows ordered (scale, prompt)
    for r, (lam, p) in enumerate([(s, p) for s in (0.5, 2.0) for p in range(3)]):
        torch.testing.assert_close(h[r, len(enc[p]) - 1], lam * eta * unit, rtol=1e-5, atol=1e-5)
        # earlier positions are untouched: they equal the clean forward
    clean = pair.ft_arch.capture(pair.ft_lm.model, torch.tensor([enc[0]]), [layer])[layer]
    torch.testing.assert_close(h[0, :len(enc[0]) - 1], clean[0, :-1], rtol=1e-5, atol=1e-5)


def test_intersection_and_ranking_hand_made():
    probs = torch.tensor([[0.40, 0.30, 0.20, 0.10, 0.00],
                          [0.10, 0.35, 0.05, 0.30, 0.20],
                          [0.25, 0.25, 0.30, 0.00, 0.20]])
    idx, vals = intersect_rank(probs, top=3, keep=10)
    # top-3 sets: {0,1,2}, {1,3,4}, {2,0,1} (ties at 0.25 resolved by topk) -> intersection {1}
    assert idx == [1] and vals[0] == pytest.approx((0.30 + 0.35 + 0.25) / 3)
    idx, vals = intersect_rank(probs, top=5, keep=3)
    assert idx == [1, 0, 2]  # everything kept, ranked by mean probability
    assert vals == sorted(vals, reverse=True)


def test_logit_lens_matches_manual(tiny_run):
    pair, _, c = tiny_run
    res = logit_lens(pair, c, [0, 3], k=5)
    e = res.get("delta", 3)
    manual = pair.ft_arch.unembed(c.delta[3]).softmax(-1)
    assert e.top_positive[0].token_id == int(manual.argmax())
    assert e.top_positive[0].prob == pytest.approx(float(manual.max()), rel=1e-5)
    neg = pair.ft_arch.unembed(-c.delta[3]).softmax(-1)
    assert e.top_negative[0].token_id == int(neg.argmax())
    assert len(res.entries) == 3 * 2


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


def test_offline_scale_grader_prefers_a_coherent_set():
    g = OfflineScaleGrader()
    cands = {1.0: ["Ġthe", "Ġ1135", "Ġzx", "Ġqq", "Ġand", "Ġhello", "Ġ42"],
             2.0: ["Ġcake", "Ġbaking", "Ġoven", "Ġflour", "Ġsugar", "Ġthe", "Ġ1135", "Ġbutter"],
             3.0: ["Ġcar", "Ġcake", "Ġriver", "Ġpolitics", "Ġguitar"]}
    scale, sel, _ = tournament(g, cands)
    assert scale == 2.0
    words = {s.strip("Ġ") for s in sel}
    assert {"cake", "oven", "flour", "sugar"} <= words and "1135" not in words and "the" not in words


def test_repetition_score():
    assert repetition_score("Duddin D Duddin Danza Duddin D Duddin Danza Duddin D Duddin Danza") > 0.5
    assert repetition_score("The quick brown fox jumps over the lazy dog near the river bank today.") == 0.0


def test_artifacts_roundtrip_and_corruption(tmp_path, tiny_run):
    pair, _, c = tiny_run
    res = logit_lens(pair, c, [0], k=3)
    p = tmp_path / "ll.json"
    A.save(res, p)
    assert A.load(A.LogitLensResult, p) == res
    p.write_text("{broken")
    from difflens.errors import RunDirError

    with pytest.raises(RunDirError, match="corrupt"):
        A.load(A.LogitLensResult, p)


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
