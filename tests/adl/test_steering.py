"""Steering: α=0 is a no-op, pad positions are not steered, per-row α's in one batch, the paper's
defaults, early stopping, the batched search on a real (tiny) model."""
from __future__ import annotations

import pytest
import torch

from difflens.adl.steering import (STEERING_PROMPTS, THRESHOLD_PROMPTS, SteeringConfig, encode_prompts_left,
                                   find_threshold, generate, generate_rows, steering_hook, steering_vectors)


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


def test_per_row_vectors_differ_by_row_and_leave_pads_untouched(tiny_run):
    pair, _, c = tiny_run
    prompts = ["why", "tell me a story about the cat", "why", "give me some ideas"]
    ids, mask = encode_prompts_left(pair, prompts)
    assert (mask == 0).any()
    alphas = [0.0, 1.0, 2.5, 4.0]
    add = steering_vectors(c.delta[0], alphas, c.eta_ft)
    assert add.shape == (4, pair.arch.hidden_size)
    unit = c.delta[0].float() / c.delta[0].float().norm()
    for b, a in enumerate(alphas):
        torch.testing.assert_close(add[b], a * c.eta_ft * unit)
    clean = pair.ft_arch.capture(pair.ft_lm.model, ids, [2], attention_mask=mask)[2]
    with steering_hook(pair, 2, add, mask):
        steered = pair.ft_arch.capture(pair.ft_lm.model, ids, [2], attention_mask=mask)[2]
    diff = steered - clean
    torch.testing.assert_close(diff[mask == 0], torch.zeros_like(diff[mask == 0]))
    for b in range(4):
        real = mask[b] == 1
        torch.testing.assert_close(diff[b][real], add[b].expand(int(real.sum()), -1), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(diff[1][-1], diff[2][-1])  # the added vector really differs by row
    with pytest.raises(ValueError):
        with steering_hook(pair, 2, add[:3], mask):
            pass


def test_mixed_alpha_batch_equals_single_alpha_batches(tiny_run):
    """Row b of a batch with several α's is the row b of a batch steered by α_b throughout (same
    seed, same prompts, same padding): the per-row sampling noise does not depend on other rows."""
    pair, _, c = tiny_run
    with torch.no_grad():
        pair.ft_lm.model.lm_head.weight.mul_(100)
    prompts = ["tell me a story", "why", "tell me a story", "why"]
    alphas = [0.0, 0.0, 40.0, 40.0]
    kw = dict(layer=2, direction=c.delta[0], eta=c.eta_ft, temperature=1.0, max_new_tokens=8, seed=3)
    mixed = generate_rows(pair, prompts, alphas, **kw)
    low = generate_rows(pair, prompts, [0.0] * 4, **kw)
    high = generate_rows(pair, prompts, [40.0] * 4, **kw)
    assert mixed[:2] == low[:2] and mixed[2:] == high[2:]
    assert mixed[2:] != low[2:]
    # generate() (one α for all rows) is generate_rows with a constant α
    assert sum(generate(pair, prompts, alpha=40.0, n=1, **kw), []) == high


def test_batched_search_on_a_real_model(tiny_run):
    pair, _, c = tiny_run
    with torch.no_grad():
        pair.ft_lm.model.lm_head.weight.mul_(100)

    class LengthGrader:  # deterministic: coherent iff the text has a few words
        name = "len"
        calls = 0

        def grade(self, texts):
            self.calls += 1
            return [len(t.split()) >= 3 for t in texts]

    cfg = SteeringConfig(search_iters=3, refine_iters=0, search_samples=2, min_coherent=1, max_new_tokens=4)
    kw = dict(layer=2, position=0, direction=c.delta[0], eta=c.eta_ft, progress=False)
    g = LengthGrader()
    batched = find_threshold(pair, g, cfg=cfg.model_copy(update={"grid": 3}), **kw)
    assert len(batched.steps) == 2 + 2  # 2 α's per round: 3·3 = 9 ≥ 2^3
    assert g.calls >= 2 and batched.grader_calls <= batched.generations_used == 2 * 4  # judged in waves, lazily
    assert batched == find_threshold(pair, LengthGrader(), cfg=cfg.model_copy(update={"grid": 3}), **kw)
    # grid 1 without refinement prompts, every sample judged: the paper's α's, seeds and samples, hence its
    # verdicts
    exact = {"grid": 1, "grade_all": True}
    one = find_threshold(pair, LengthGrader(), cfg=cfg.model_copy(update=exact), **kw)
    paper = find_threshold(pair, LengthGrader(), cfg=cfg.model_copy(update={"search": "paper"}), **kw)
    assert one == paper
    # judged lazily: the same verdicts from fewer judged samples
    lazy = find_threshold(pair, LengthGrader(), cfg=cfg.model_copy(update={"grid": 1}), **kw)
    assert [(s.alpha, s.coherent) for s in lazy.steps] == [(s.alpha, s.coherent) for s in paper.steps]
    assert lazy.alpha == paper.alpha and lazy.grader_calls <= paper.grader_calls


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


def test_generate_many_one_request_equals_generate(tiny_run):
    """One request through the batched path is the per-request path, bit for bit (same rows, same
    vectors, same seed); a zero steering row is unsteered exactly; rows split over calls keep order."""
    from difflens.adl.steering import GenerationRequest, generate, generate_many

    pair, _, c = tiny_run
    prompts = ["tell me a story", "give me some ideas"]
    kw = dict(layer=c.layer, eta=c.eta_ft, temperature=1.1, max_new_tokens=6, seed=5)
    [got] = generate_many(pair, [GenerationRequest(prompts, c.delta[0], 3.0, 3)], **kw)
    assert got == generate(pair, prompts, direction=c.delta[0], alpha=3.0, n=3, **kw)
    [un] = generate_many(pair, [GenerationRequest(prompts, None, 0.0, 2)], **kw)
    assert un == generate(pair, prompts, direction=None, alpha=0.0, n=2, **kw)
    # mixed: steered and unsteered rows in one call; the unsteered rows get a zero vector
    mixed = generate_many(pair, [GenerationRequest(prompts, c.delta[0], 3.0, 2),
                                 GenerationRequest(prompts, None, 0.0, 2)], **kw)
    assert [len(r) for r in mixed] == [2, 2] and all(len(s) == 2 for r in mixed for s in r)
    split = generate_many(pair, [GenerationRequest(prompts, c.delta[0], 3.0, 2),
                                 GenerationRequest(prompts, None, 0.0, 2)], max_rows=4, **kw)
    assert [len(r) for r in split] == [2, 2]
    assert split[0] == generate(pair, prompts, direction=c.delta[0], alpha=3.0, n=2, **kw)  # call 0: seed 5


def test_per_row_vectors_follow_their_rows_when_finished_rows_drop(tiny_run):
    """The decode loop drops finished rows from the batch; each remaining row must keep its own
    steering vector: greedy answers with rows dropped early equal those with no row ever dropped."""
    from difflens.models.decoding import sample_rows

    pair, _, c = tiny_run
    model = pair.ft_lm.model
    prompts = ["why", "tell me a story about the cat", "why", "give me some ideas", "why", "tell me"]
    ids, mask = encode_prompts_left(pair, prompts)
    add = steering_vectors(c.delta[0], [0.0, 0.5, 1.0, 1.5, 2.0, 3.0], c.eta_ft)

    def run(prune: float, calls: list | None = None) -> list[list[int]]:
        with steering_hook(pair, 2, add, mask) as select:
            def on_select(idx):
                if calls is not None:
                    calls.append(idx.tolist())
                select(idx)
            return sample_rows(model, ids, mask, tokenizer=pair.tokenizer, temperature=0.0, max_new_tokens=10,
                               seed=0, on_select=on_select, prune_fraction=prune)

    free = run(2.0)
    assert len({tuple(r) for r in free}) >= 4  # the vectors change what the rows say

    def ends(x):
        return [r.index(x) + 1 if x in r else len(r) for r in free]

    eos = max(sorted({x for r in free for x in r}), key=lambda x: len(set(ends(x))))
    assert len(set(ends(eos))) >= 3
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        calls: list = []
        dropped = run(0.01, calls)
        kept = run(2.0)
    finally:
        model.generation_config.eos_token_id = old
    assert calls, "no row was dropped"
    assert dropped == kept
    assert [len(r) for r in dropped] == ends(eos)


def test_generate_steered_reuses_saved_calls_only_under_the_same_split(tiny_run):
    from difflens.adl.steering import generate_steered

    pair, _, c = tiny_run
    prompts = ["why", "tell me a story"] * 4
    vectors = [None, steering_vectors(c.delta[0], [2.0], c.eta_ft)[0]] * 4
    kw = dict(layer=2, temperature=1.0, max_new_tokens=4, seed=3)
    ran: list[int] = []
    full = generate_steered(pair, prompts, vectors, max_rows=2, on_call=lambda i, n, t: ran.append(i), **kw)
    assert ran == [0, 1, 2, 3]
    saved = {(0, 4): ["saved a", "saved b"], (2, 4): ["saved c", "saved d"]}
    ran.clear()
    again = generate_steered(pair, prompts, vectors, max_rows=2, done=saved, on_call=lambda i, n, t: ran.append(i), **kw)
    assert ran == [1, 3] and again[:2] == ["saved a", "saved b"] and again[2:4] == full[2:4] and again[6:] == full[6:]
    ran.clear()  # saved under a 4-call split, asked for a 2-call one: everything runs
    generate_steered(pair, prompts, vectors, max_rows=4, done=saved, on_call=lambda i, n, t: ran.append(i), **kw)
    assert ran == [0, 1]


def test_rows_sharing_a_prompt_and_vector_share_one_prefill_and_sample_apart(tiny_run):
    """The samples of one prompt at one steering vector run their prompt once (one prefill row per
    group, the cache repeated to the group): greedy answers equal those of a prefill per row, and
    sampled rows of one group still draw apart."""
    from difflens.adl.steered import generate_vectors, prefill_groups
    from difflens.models.decoding import sample_rows

    pair, _, c = tiny_run
    with torch.no_grad():
        pair.ft_lm.model.lm_head.weight.mul_(20)
    model = pair.ft_lm.model
    prompts = ["why", "tell me a story about the cat", "why", "why", "tell me a story about the cat", "why"]
    add = steering_vectors(c.delta[0], [1.0, 1.0, 1.0, 2.0, 1.0, 0.0], c.eta_ft)
    groups = prefill_groups(prompts, add)
    assert groups.tolist() == [0, 1, 0, 2, 1, 3]  # same prompt and same vector: one group
    assert prefill_groups(prompts, None).tolist() == [0, 1, 0, 0, 1, 0]
    ids, mask = encode_prompts_left(pair, prompts)

    def run(shared: bool, temperature: float, prefills: list | None = None) -> list[list[int]]:
        with steering_hook(pair, 2, add, mask) as select:
            def on_prefill(idx):
                if prefills is not None:
                    prefills.append(idx.tolist())
                select.prefill(idx)
            return sample_rows(model, ids, mask, tokenizer=pair.tokenizer, temperature=temperature,
                               max_new_tokens=10, seed=0, on_select=select,
                               same_prefill=groups if shared else None, on_prefill=on_prefill if shared else None)

    prefills: list = []
    assert run(True, 0.0, prefills) == run(False, 0.0)
    assert prefills == [[0, 1, 3, 5]]  # the first row of each group
    with pytest.raises(ValueError, match="on_prefill"):
        with steering_hook(pair, 2, add, mask) as select:
            sample_rows(model, ids, mask, tokenizer=pair.tokenizer, temperature=1.0, max_new_tokens=2, seed=0,
                        on_select=select, same_prefill=groups)
    many = generate_vectors(pair, ["why"] * 12, add[:1].expand(12, -1).clone(), layer=2, temperature=1.0,
                            max_new_tokens=6, seed=1)
    assert len(set(many)) > 1  # one prefill, twelve different samples
