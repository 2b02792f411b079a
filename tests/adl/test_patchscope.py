"""Patchscope: the paper's scale grid, the patched forward really carries the vector, intersection ranking."""
from __future__ import annotations

import pytest
import torch

from difflens.adl.patchscope import IDENTITY_PROMPTS, SCALES, intersect_rank, patched_next_token_probs


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
