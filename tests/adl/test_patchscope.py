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
    seen = []

    def grab(_m, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = pair.ft_arch.layers[layer + 1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        probs = patched_next_token_probs(pair, layer, v, [0.5, 2.0], eta)
    finally:
        handle.remove()
    assert probs.shape[:2] == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))
    unit = v / v.norm()
    # one forward per prompt above the layer: only the patched last token, one row per scale (the
    # prompt's prefix comes from its cache; tests/adl/test_patchscope_restart.py compares with whole
    # patched forwards)
    prefixes, patched = seen[:3], seen[3:]  # each prompt's prefix once, then the patched calls
    assert all(h.shape[0] == 1 and h.shape[1] > 1 for h in prefixes) and len(patched) == 3
    for h in patched:
        assert h.shape[:2] == (2, 1)
        for r, lam in enumerate((0.5, 2.0)):
            torch.testing.assert_close(h[r, 0], lam * eta * unit, rtol=1e-5, atol=1e-5)


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


def test_random_control_has_delta_norm_and_is_deterministic(tiny_run):
    _, _, c = tiny_run
    r = c.vectors("random")
    assert torch.allclose(r.norm(dim=-1), c.delta.norm(dim=-1), rtol=1e-5)
    assert torch.equal(r, c.vectors("random"))
    cos = torch.nn.functional.cosine_similarity(r, c.delta, dim=-1)
    assert cos.abs().max() < 0.9  # a different direction


def test_patchscope_through_the_base_model_patches_the_base(tiny_run):
    pair, _, c = tiny_run
    v = c.delta[2]
    via_base = patched_next_token_probs(pair, 2, v, [1.0], c.eta_base, side="base")
    via_ft = patched_next_token_probs(pair, 2, v, [1.0], c.eta_base, side="ft")
    assert not torch.allclose(via_base, via_ft)  # two different models read the same vector
    # the base side equals patching the base model by hand
    from difflens.adl.interventions import replace_rows
    from difflens.adl.patchscope import _encode_prompts

    enc = _encode_prompts(pair, IDENTITY_PROMPTS[:1])
    ids = torch.tensor(enc)
    val = (c.eta_base * v / v.norm())[None]
    with pair.base() as m, pair.arch_of("base").edit_layer(2, replace_rows(torch.tensor([ids.shape[1] - 1]), val)):
        manual = m(input_ids=ids).logits[0, -1].float().softmax(-1)
    assert torch.allclose(via_base[0, 0], manual, atol=1e-5)


def test_lens_stores_controls_and_unpatched(tiny_run):
    from difflens.adl.patchscope import patchscope, unpatched_tokens
    from difflens.graders import OfflineScaleGrader

    pair, _, c = tiny_run
    res = patchscope(pair, c, [1], OfflineScaleGrader(), progress=False)
    assert {e.source for e in res.entries} == {"delta", "base", "ft", "delta_via_base", "random", "base_via_ft"}
    assert res.eta_base == c.eta_base and res.unpatched == unpatched_tokens(pair)
    # unpatched = the finetuned model's own next tokens, each prompt run alone (no padding), ranked alike
    from difflens.adl.patchscope import _encode_prompts

    with pair.ft() as m:
        probs = torch.stack([m(input_ids=torch.tensor([e])).logits[0, -1].float().softmax(-1)
                             for e in _encode_prompts(pair, IDENTITY_PROMPTS)])
    idx, vals = intersect_rank(probs)
    assert [t.token_id for t in res.unpatched] == idx
    assert [t.prob for t in res.unpatched] == pytest.approx(vals, rel=1e-4)


def test_every_entry_is_graded_with_its_controls_and_scored_per_scale(tiny_run):
    from difflens.adl.patchscope import patchscope, scale_context
    from difflens.graders import ScaleContext

    pair, _, c = tiny_run
    seen: list[tuple[frozenset, int]] = []

    class Recorder:
        name = "recorder"

        def choose(self, candidates, context=None):
            assert isinstance(context, ScaleContext)
            seen.append((frozenset(context.controls), len(context.other_positions)))
            return max(candidates), [], "recorded"

    res = patchscope(pair, c, [0, 1], Recorder(), progress=False)
    # 6 sources × 2 positions, each graded as a tournament of 3 batches + a final
    assert len(seen) == 12 * 4
    by_source = {(e.source, e.position): e for e in res.entries}
    d = by_source[("delta", 1)]
    assert d.chosen_scale == max(SCALES) and d.grader == "recorder"
    assert d.specificity is not None and len(d.specificity) == len(d.scales) == len(SCALES)
    stored = {(e.source, e.position): e.scales for e in res.entries}
    ctx = scale_context(stored, "delta", 1, res.unpatched)
    # the random vector's lists at every position and scale; δ̄ through the base model at this position
    assert len(ctx.controls["random"]) == 2 * len(SCALES) and len(ctx.controls["delta_via_base"]) == len(SCALES)
    assert ctx.controls["unpatched"] == [[t.token for t in res.unpatched[:20]]]
    assert len(ctx.other_positions) == 1 and ctx.sweep[0.5] == [t.token for t in d.at(0.5).tokens[:20]]
    # a control is not its own control
    assert "random" not in scale_context(stored, "random", 1, res.unpatched).controls


def test_more_specific_flags_a_far_more_specific_scale():
    from difflens.rundir.artifacts import PatchscopeEntry, PatchscopeScale

    scales = [PatchscopeScale(scale=s, tokens=[]) for s in (0.5, 1.0, 2.0)]
    e = PatchscopeEntry(source="delta", position=0, scales=scales, chosen_scale=0.5, selected_tokens=[],
                        grader="llm", specificity=[0.4, 3.0, 1.0])
    assert e.more_specific() == (1.0, 3.0, 0.4)
    assert e.model_copy(update={"chosen_scale": 1.0}).more_specific() is None
    assert e.model_copy(update={"specificity": [1.5, 2.5, 1.0]}).more_specific() is None  # not 2× more
    assert e.model_copy(update={"specificity": None}).more_specific() is None  # results from before


def test_h_base_is_read_by_the_base_model_and_its_control_by_the_finetuned_model(tiny_run):
    """The authors' convention (auto_patch_scope): h̄_base patched into the BASE model at η_ft; the old
    baseline, h̄_base through the finetuned model, stays as the control ``base_via_ft``."""
    from difflens.adl.patchscope import patchscope

    pair, _, c = tiny_run

    class First:
        name = "first"

        def choose(self, candidates, context=None):
            return min(candidates), [], ""

    res = patchscope(pair, c, [1], First(), sources=("base", "base_via_ft"), progress=False)
    for source, side in (("base", "base"), ("base_via_ft", "ft")):
        want = patched_next_token_probs(pair, c.layer, c.base_mean[1], SCALES, c.eta_ft, side=side)
        idx, vals = intersect_rank(want[0])
        got = res.get(source, 1).at(SCALES[0]).tokens
        assert [t.token_id for t in got] == idx and [t.prob for t in got] == pytest.approx(vals, rel=1e-4)
    assert [t.token_id for t in res.get("base", 1).at(SCALES[0]).tokens] != \
        [t.token_id for t in res.get("base_via_ft", 1).at(SCALES[0]).tokens]
