"""The shared decode loop (difflens.models.decoding) on tiny random-init models of every family.

- ``draw``: its frequencies match the softmax at temperature T (a chi-square bound), a
  zero-probability id is never drawn, temperature 0 is the argmax;
- ``sample_rows`` at temperature 0 gives ``model.generate(do_sample=False)``'s tokens, row for
  row, while rows finish at different steps and are dropped from the batch (its KV cache and the
  per-row steering vectors follow);
- sampled: the first token's frequencies over many rows match the model's own softmax;
- the growing cache hands the model views of one buffer (no copy per step) and equals transformers'
  DynamicCache;
- a broadcast prefix cache (rows continuing one prompt prefix, no copy per row) gives the logits of
  the prefix repeated per row, and leaves the prefix's cache as it was.
"""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import FAMILIES, tiny_model, tiny_tokenizer
from difflens.models.decoding import broadcast_cache, cache_kwarg, draw, growing_cache, sample_rows
from difflens.models.tokens import pad_left


pytestmark = pytest.mark.usefixtures("one_thread")


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    expected = probs * n
    keep = expected > 5
    return float((((counts - expected) ** 2)[keep] / expected[keep]).sum())


def test_draw_matches_the_softmax_at_temperature():
    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([0.0, 1.0, 2.0, -1.0, -1e9, 0.5])
    for temp in (1.0, 0.7, 1.2):
        n = 40_000
        idx = draw(scores.repeat(n, 1), temp, g)
        counts = torch.bincount(idx, minlength=6).double()
        probs = torch.softmax(scores.double() / temp, -1)
        assert counts[4] == 0  # probability 0 (e^-1e9): never drawn
        # 4 degrees of freedom: P(chi2 > 25) < 1e-4; a wrong temperature (T vs 1) gives hundreds
        assert chi_square(counts, probs) < 25, (temp, counts / n, probs)
    wrong = torch.softmax(scores.double(), -1)
    idx = draw(scores.repeat(40_000, 1), 0.7, g)
    assert chi_square(torch.bincount(idx, minlength=6).double(), wrong) > 100  # the check can fail
    assert draw(torch.tensor([[0.1, 3.0, 2.9], [5.0, 0.0, 1.0]]), 0.0, g).tolist() == [1, 0]


def test_draw_leaves_its_scores_alone_unless_told_and_draws_the_same_either_way():
    scores = torch.randn(50, 1000) * 3
    keep = scores.clone()
    a = draw(scores, 1.1, torch.Generator().manual_seed(5))
    assert torch.equal(scores, keep)  # a copy was normalised
    b = draw(scores, 1.1, torch.Generator().manual_seed(5), inplace=True)
    assert torch.equal(a, b) and not torch.equal(scores, keep)  # same tokens; the scores were used up
    # the draw uses the softmax's cumulative sum: a uniform at the CDF's value lands on the next id
    cdf = torch.softmax(keep.double() / 1.1, -1).cumsum(-1)
    u = torch.rand((50, 1), generator=torch.Generator().manual_seed(5), dtype=torch.float32).double()
    assert torch.equal(a, torch.searchsorted(cdf, u, right=True).squeeze(1))


def _prompts(tok, texts):
    rows = [tok(t, add_special_tokens=False).input_ids for t in texts]
    return pad_left(rows, tok.pad_token_id, torch.device("cpu"))


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_rows_equal_generate_while_rows_finish_and_drop(family):
    tok = tiny_tokenizer()
    model = tiny_model(family, seed=3)
    ids, mask = _prompts(tok, ["tell me a story", "why", "give me some ideas for the cat", "why not", "the cat"])
    free = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                          pad_token_id=tok.pad_token_id, eos_token_id=-1)
    new = free[:, ids.shape[1]:]
    # the end-of-sequence id: the token after which rows finish at the most different steps

    def ends(x):
        return [r.index(x) + 1 if x in r else len(r) for r in new.tolist()]

    eos = max(sorted(set(new.flatten().tolist())), key=lambda x: len(set(ends(x))))
    model.generation_config.eos_token_id = eos
    want = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                          pad_token_id=tok.pad_token_id)[:, ids.shape[1]:].tolist()
    want = [r[:r.index(eos) + 1] if eos in r else r for r in want]
    assert len({len(r) for r in want}) >= 2, f"rows do not finish apart: {want}"
    selected = []
    got = sample_rows(model, ids, mask, tokenizer=tok, temperature=0.0, max_new_tokens=12, seed=0,
                      on_select=lambda idx: selected.append(idx.tolist()), prune_fraction=0.01)
    assert got == want
    assert selected, "no row was dropped"


def test_sampled_first_tokens_follow_the_models_softmax():
    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=1)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8)
    ids, mask = _prompts(tok, ["tell me a story"] * 4000)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids[:1]).logits[0, -1].double() / 1.1, -1)
    rows = sample_rows(model, ids, mask, tokenizer=tok, temperature=1.1, max_new_tokens=1, seed=4)
    counts = torch.bincount(torch.tensor([r[0] for r in rows]), minlength=probs.numel()).double()
    cells = int((probs * 4000 > 5).sum())
    assert cells >= 3
    assert chi_square(counts, probs) < cells + 6 * cells ** 0.5 + 10
    again = sample_rows(model, ids[:50], mask[:50], tokenizer=tok, temperature=1.1, max_new_tokens=3, seed=4)
    assert again == sample_rows(model, ids[:50], mask[:50], tokenizer=tok, temperature=1.1, max_new_tokens=3, seed=4)
    assert again != sample_rows(model, ids[:50], mask[:50], tokenizer=tok, temperature=1.1, max_new_tokens=3, seed=5)


def test_growing_cache_hands_out_views_of_one_buffer_and_equals_dynamic_cache():
    from transformers import DynamicCache

    tok = tiny_tokenizer()
    model = tiny_model("qwen2", seed=2)
    ids, mask = _prompts(tok, ["tell me a story", "why"])
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)

    def run(cache):
        m = mask
        out = model(input_ids=ids, attention_mask=m, position_ids=pos, past_key_values=cache, use_cache=True)
        steps = [out.logits[:, -1]]
        for t in range(6):  # past the reserved room of 4 + prompt: the buffer grows
            nxt = steps[-1].argmax(-1)[:, None]
            m = torch.cat([m, torch.ones_like(nxt)], -1)
            out = model(input_ids=nxt, attention_mask=m, position_ids=pos[:, -1:] + t + 1, past_key_values=cache,
                        use_cache=True)
            steps.append(out.logits[:, -1])
        return torch.stack(steps)

    caches = {"growing": growing_cache(model.config, room=ids.shape[1] + 4),
              "dynamic": DynamicCache(config=model.config)}
    with torch.no_grad():
        logits = {name: run(cache) for name, cache in caches.items()}
    torch.testing.assert_close(logits["growing"], logits["dynamic"])
    layer = caches["growing"].layers[0]
    assert type(layer).__name__ == "GrowingLayer"
    assert layer.keys.data_ptr() == layer.kbuf.data_ptr() and layer.kbuf.shape[-2] >= layer.keys.shape[-2]
    assert layer.keys.shape[-2] == ids.shape[1] + 6
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.keys.shape[0] == 1 and layer.keys.data_ptr() == layer.kbuf.data_ptr()


@pytest.mark.parametrize("family", FAMILIES)
def test_broadcast_cache_continues_the_prefix_per_row_and_leaves_it_unchanged(family):
    import copy

    model = tiny_model(family, seed=3)
    key = cache_kwarg(model)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(4, 200, (1, 9), generator=g)
    rows = torch.randint(4, 200, (5, 4), generator=g)  # five rows, four tokens each after the prefix
    mask = torch.ones(5, 13, dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=prefix, use_cache=True)
        pre = getattr(out, key, None) or out.past_key_values
        before = [(layer.keys.clone(), layer.values.clone()) for layer in pre.layers]
        repeated = copy.deepcopy(pre)
        repeated.batch_repeat_interleave(5)
        want = model(input_ids=rows, attention_mask=mask, **{key: repeated}, use_cache=True).logits
        shared = broadcast_cache(pre, 5)
        assert all(layer.keys.stride(0) == 0 for layer in shared.layers)  # views: no copy per row
        got = model(input_ids=rows, attention_mask=mask, **{key: shared}, use_cache=True).logits
        again = model(input_ids=rows, attention_mask=mask, **{key: broadcast_cache(pre, 5)},
                      use_cache=True).logits
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(again, want)  # the prefix's cache served twice: nothing of it was overwritten
    for layer, (k, v) in zip(pre.layers, before):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    with pytest.raises(ValueError, match="one-row"):
        broadcast_cache(repeated, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_shared_prefill_gives_the_rows_of_a_prefill_per_row(family):
    tok = tiny_tokenizer()
    model = tiny_model(family, seed=5)
    texts = ["tell me a story", "why", "tell me a story", "give me some ideas for the cat", "why", "why"]
    ids, mask = _prompts(tok, texts)
    same = torch.tensor([0, 1, 0, 2, 1, 1])
    kw = dict(tokenizer=tok, temperature=0.0, max_new_tokens=9, seed=0)
    assert sample_rows(model, ids, mask, same_prefill=same, **kw) == sample_rows(model, ids, mask, **kw)
    with pytest.raises(ValueError, match="entries"):
        sample_rows(model, ids, mask, same_prefill=same[:3], **kw)


@pytest.mark.parametrize("backend", ["mkl", "onednn"])
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_weights_decode_the_rows_generate_decodes(family, backend, monkeypatch):
    """Decode steps run from packed weights (models.packed; MKL's from MIN_ROWS rows, oneDNN's for the
    prefill too): greedy rows equal ``generate``'s while rows finish and the batch changes size."""
    import difflens.models.decode_step as S
    import difflens.models.decoding as D
    from difflens.models.packed import MIN_ROWS, PackedLinears, available

    if not available(backend):
        pytest.skip(f"this PyTorch build has no {backend} packed linear")
    monkeypatch.setenv("DIFFLENS_PACKED", backend)
    made = []

    class Recording(PackedLinears):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
            self.sizes = []

        def pack(self, rows):
            if rows != self.rows:
                self.sizes.append(rows)
            super().pack(rows)

    monkeypatch.setattr(D, "PackedLinears", Recording)
    monkeypatch.setattr(S, "PackedLinears", Recording)  # the decode step's fused projections
    tok = tiny_tokenizer()
    model = tiny_model(family, seed=3)
    stepped = family in S.FAMILIES  # decode steps by models.decode_step: q/k/v and gate/up as one product each
    texts = ["tell me a story", "why", "give me some ideas for the cat", "why not", "the cat"] * 4
    ids, mask = _prompts(tok, texts)
    assert len(texts) >= MIN_ROWS
    free = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                          pad_token_id=tok.pad_token_id, eos_token_id=-1)[:, ids.shape[1]:].tolist()
    eos = free[1][3]  # row "why" ends after 4 tokens, the rows that drew it elsewhere where they did
    want = [r[:r.index(eos) + 1] if eos in r else r for r in free]
    model.generation_config.eos_token_id = eos
    got = sample_rows(model, ids, mask, tokenizer=tok, temperature=0.0, max_new_tokens=12, seed=0,
                      prune_fraction=0.01, packed=True)
    assert got == want
    packers = made[-2:] if stepped else made[-1:]  # the model's, then the step's
    for packer in packers:
        assert packer.active and packer.packed_calls > 0 and packer.backend == backend
        if backend == "mkl":  # packed for the running rows, again as rows left (below MIN_ROWS: unpacked)
            assert packer.sizes[0] >= MIN_ROWS and len(packer.sizes) >= 2 \
                and packer.sizes == sorted(packer.sizes)[::-1]
        assert all("forward" not in m.__dict__ for m in packer.layers)  # the modules' own forward is back
    if backend == "onednn":  # every forward packed: the prefill and each of the 11 decode steps, every product
        n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
        per_step = n_linear - 3 * model.config.num_hidden_layers if stepped else n_linear
        assert sum(p.packed_calls for p in packers) == n_linear + 11 * per_step
    made.clear()
    off = sample_rows(model, ids, mask, tokenizer=tok, temperature=0.0, max_new_tokens=12, seed=0,
                      prune_fraction=0.01, packed=False)
    assert off == want and made and all(p.packed_calls == 0 and not p.active for p in made)


def test_packed_linears_match_f_linear_and_fall_back_off_their_row_count(monkeypatch):
    """The ``mkl`` backend: packed for one row count; other row counts take ``F.linear``."""
    from difflens.models.packed import MIN_ROWS, PackedLinears, available

    if not available("mkl"):
        pytest.skip("this PyTorch build has no MKL packed linear")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.SiLU(), torch.nn.Linear(96, 40, bias=False))
    x = torch.randn(32, 48)
    with torch.no_grad():
        want = net(x)
        with PackedLinears(net, backend="mkl") as p:
            assert p.active and len(p.layers) == 2 and p.backend == "mkl"
            p.pack(32)
            got = net(x)
            assert p.packed_calls == 2
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            assert torch.equal(net(x[:20]), _unpacked(net, x[:20]))  # another row count: the module's own F.linear
            assert p.packed_calls == 2
            torch.testing.assert_close(net(x.view(2, 16, 48)), want.view(2, 16, 40), rtol=1e-6, atol=1e-6)
            assert p.packed_calls == 4  # [2, 16, d]: 32 rows too
            p.pack(MIN_ROWS - 1)
            assert not p._packs
            net(x[:MIN_ROWS - 1])
            assert p.packed_calls == 4
    assert all("forward" not in m.__dict__ for m in net)
    with torch.no_grad(), PackedLinears(net.to(torch.bfloat16), backend="mkl") as p:  # not float32: nothing packed
        assert not p.active
    monkeypatch.setenv("DIFFLENS_PACKED", "0")
    assert not PackedLinears(net.float()).active and not PackedLinears(net.float(), backend="mkl").active


def test_onednn_packs_serve_every_shape_and_stay_float32_exact():
    """The ``onednn`` backend: packed on entering, for any row count and shape (prefill and decode
    alike); float32 products (within float rounding of F.linear, far from a bfloat16 product's error);
    autograd calls take F.linear."""
    from difflens.models.packed import PackedLinears, available

    if not available("onednn"):
        pytest.skip("this PyTorch build has no oneDNN packed linear")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.SiLU(), torch.nn.Linear(96, 40, bias=False))
    with torch.no_grad(), PackedLinears(net, backend="onednn") as p:
        assert p.active and p.backend == "onednn" and len(p._packs) == 2
        calls, ref = 0, copy.deepcopy(net).double()
        for shape in [(32, 48), (20, 48), (1, 48), (3, 7, 48), (48,)]:
            x = torch.randn(*shape, dtype=torch.float64)
            want = _unpacked(ref, x)
            got = net(x.float())
            calls += 2
            assert p.packed_calls == calls and got.shape == want.shape
            err = (got.double() - want).abs().max().item()
            assert err < 1e-5, (shape, err)  # bfloat16 inputs would be off by ~1e-2
        x = torch.randn(32, 48)
        p.pack(7)  # the mkl backend's repack: nothing to do here
        assert p.packed_calls == calls and len(p._packs) == 2
        with torch.enable_grad():
            torch.testing.assert_close(net(x), _unpacked(net, x), rtol=0, atol=0)
        assert p.packed_calls == calls
    assert all("forward" not in m.__dict__ for m in net) and not p._packs


def test_kept_packs_are_reused_until_a_weight_changes(monkeypatch):
    import difflens.models.packed as P

    if not P.available("onednn"):
        pytest.skip("this PyTorch build has no oneDNN packed linear")
    made = []
    real = torch.ops.mkldnn._reorder_linear_weight

    class Ops:  # counts the packs made
        @staticmethod
        def _reorder_linear_weight(w, rows):
            made.append(w.shape)
            return real(w, rows)

    monkeypatch.setattr(P, "_onednn_reorder", Ops._reorder_linear_weight)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 4))
    x = torch.randn(5, 8)
    with torch.no_grad():
        with P.PackedLinears(net, backend="onednn"):
            pass
        with P.PackedLinears(net, backend="onednn"):
            pass
        assert len(made) == 4  # outside keep_packs: packed per block
        with P.keep_packs():
            for _ in range(3):
                with P.PackedLinears(net, backend="onednn"):
                    net(x)
            assert len(made) == 6  # once per weight
            net[1].weight.mul_(2.0)  # an in-place update: that weight is packed again
            with P.PackedLinears(net, backend="onednn"):
                torch.testing.assert_close(net(x), _unpacked_pair(net, x), rtol=1e-5, atol=1e-5)
            assert len(made) == 7
        with P.PackedLinears(net, backend="onednn"):
            pass
        assert len(made) == 9  # the kept packs went with the block


def test_kept_packs_need_no_memory_again(monkeypatch):
    """The memory check counts only the packs still to make: a block over weights whose packs are
    kept runs packed even when free memory has since become short; new weights are not packed then."""
    import difflens.models.packed as P

    if not P.available("onednn"):
        pytest.skip("this PyTorch build has no oneDNN packed linear")
    torch.manual_seed(0)
    net, other = torch.nn.Sequential(torch.nn.Linear(8, 6)), torch.nn.Sequential(torch.nn.Linear(8, 6))
    with torch.no_grad(), P.keep_packs():
        with P.PackedLinears(net, backend="onednn") as p:
            assert p.active
        monkeypatch.setattr(P, "_free_bytes", lambda: 16)  # almost nothing free now
        with P.PackedLinears(net, backend="onednn") as p:
            assert p.active and p._packs  # its packs are kept: nothing new to fit
        assert not P.PackedLinears(other, backend="onednn").active  # a new pack would not fit
        net[0].weight.add_(1.0)  # changed: its pack must be made again, and would not fit
        assert not P.PackedLinears(net, backend="onednn").active


def test_every_stage_entry_point_keeps_its_packs():
    """Each stage's entry point runs inside keep_packs (its many short forwards pack each weight once,
    and ModelPair's sides run packed only there): collect, lens, steer, the methods pass, amplification,
    evaluate (the causal effect)."""
    from difflens.adl.collect import collect
    from difflens.eval.evaluate import evaluate
    from difflens.methods.amplify import run_amplify
    from difflens.methods.driver import run_methods
    from difflens.models.packed import with_kept_packs
    from difflens.run.stages import run_lens, run_steer

    wrapper = with_kept_packs(lambda: None).__code__
    for fn in (collect, run_lens, run_steer, run_methods, run_amplify, evaluate):
        assert fn.__code__ is wrapper and hasattr(fn, "__wrapped__"), fn.__name__


def _unpacked_pair(net, x):
    import torch.nn.functional as F
    return F.linear(F.linear(x, net[0].weight, net[0].bias), net[1].weight, net[1].bias)


def test_the_backend_is_chosen_by_speed_or_by_the_environment(monkeypatch):
    import difflens.models.packed as P

    monkeypatch.setattr(P, "_RATES", {"mkl": 150e9, "onednn": 420e9})
    monkeypatch.delenv("DIFFLENS_PACKED", raising=False)
    want = "onednn" if P.available("onednn") else "mkl"
    assert P.choose_backend() == want
    monkeypatch.setattr(P, "_RATES", {"mkl": 300e9, "onednn": 320e9})  # not enough faster: MKL
    assert P.choose_backend() == "mkl"
    monkeypatch.setenv("DIFFLENS_PACKED", "onednn")
    assert P.choose_backend() == ("onednn" if P.available("onednn") else None)
    monkeypatch.setenv("DIFFLENS_PACKED", "0")
    assert P.choose_backend() is None
    with pytest.raises(ValueError, match="unknown packed-linear backend"):
        P.available("blas")


def _unpacked(net, x):
    """``net``'s layers through plain ``F.linear``."""
    import torch.nn.functional as F
    h = F.linear(x, net[0].weight, net[0].bias)
    return F.linear(F.silu(h), net[2].weight)


def test_per_row_temperatures_follow_their_rows_as_rows_leave():
    """A [B] temperature tensor: rows at T = 1e-7 decode greedily beside rows at T = 50 that draw
    nearly uniformly, while rows finish and leave the batch; a temperature that slid to another row
    would make a greedy row wander. All rows at one T equal the scalar temperature's draws."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=3)
    texts = ["tell me a story", "why", "give me some ideas for the cat", "why not", "the cat"] * 4
    ids, mask = _prompts(tok, texts)
    free = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                          pad_token_id=tok.pad_token_id, eos_token_id=-1)[:, ids.shape[1]:].tolist()
    eos = free[1][3]
    want = [r[:r.index(eos) + 1] if eos in r else r for r in free]
    model.generation_config.eos_token_id = eos
    temps = torch.tensor([1e-7 if i % 2 == 0 else 50.0 for i in range(len(texts))])
    got = sample_rows(model, ids, mask, tokenizer=tok, temperature=temps, max_new_tokens=12, seed=1,
                      prune_fraction=0.01)
    cold, hot = got[::2], got[1::2]
    assert cold == want[::2] and hot != want[1::2]
    assert any(len(g) < 12 for g in cold)  # cold "why" rows ended early and left: the rows after them moved up
    same = sample_rows(model, ids, mask, tokenizer=tok, temperature=torch.full((len(texts),), 0.9), max_new_tokens=12,
                       seed=1, prune_fraction=0.01)
    assert same == sample_rows(model, ids, mask, tokenizer=tok, temperature=0.9, max_new_tokens=12, seed=1,
                               prune_fraction=0.01)
    with pytest.raises(ValueError, match="temperatures for a batch of"):
        sample_rows(model, ids, mask, tokenizer=tok, temperature=temps[:3], max_new_tokens=2, seed=1)
    with pytest.raises(ValueError, match="above 0"):
        sample_rows(model, ids, mask, tokenizer=tok, temperature=temps * 0, max_new_tokens=2, seed=1)


@pytest.mark.parametrize("kv_heads", [1, 3, 9])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_decode_attention_equals_sdpa_at_one_query_and_defers_otherwise(kv_heads, mask_kind):
    """One query per row (a decode step), key/value heads shared by query groups, left padding in the
    mask: the two-matmul attention gives sdpa's output to float rounding. Several queries, another
    dtype, or an argument it does not handle (a softcap) go to transformers' sdpa itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from difflens.models.decoding import decode_attention

    g = torch.Generator().manual_seed(kv_heads)
    b, heads, dim, length = 5, 9, 16, 11
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv_heads, True
    q = torch.randn(b, 1, heads, dim, generator=g).transpose(1, 2)  # as the projections hand it over
    room = torch.randn(2, b, kv_heads, length + 4, dim, generator=g)
    k, v = room[0, :, :, :length], room[1, :, :, :length]  # views of a cache with room to spare
    mask = None
    if mask_kind != "none":
        keep = torch.ones(b, 1, 1, length, dtype=torch.bool)
        keep[0, ..., :3] = False  # left padding
        keep[3, ..., :1] = False
        mask = keep if mask_kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    for scaling in (None, 0.3):
        got, _ = decode_attention(module, q, k, v, mask, scaling=scaling)
        want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=scaling)
        assert got.shape == want.shape == (b, 1, heads, dim)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # a padded position really is ignored: changing its key and value changes nothing
    if mask_kind != "none":
        k2, v2 = k.clone(), v.clone()
        k2[0, :, :3] += 100.0
        v2[0, :, :3] -= 100.0
        torch.testing.assert_close(decode_attention(module, q, k2, v2, mask)[0], decode_attention(module, q, k, v, mask)[0])
    # not a decode step, or a softcap: transformers' sdpa, bit for bit
    q3 = torch.randn(b, heads, 3, dim, generator=g)
    m3 = None if mask is None else torch.ones(b, 1, 3, length, dtype=torch.bool)
    assert torch.equal(decode_attention(module, q3, k, v, m3)[0], sdpa_attention_forward(module, q3, k, v, m3)[0])
    with pytest.raises(ValueError, match="softcap"):
        decode_attention(module, q, k, v, mask, softcap=30.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_loop_attends_with_decode_attention_and_restores_sdpa(family, monkeypatch):
    """sample_rows gives an sdpa model the decode attention for its loop (greedy rows still equal
    ``generate``'s) and hands sdpa back after; DIFFLENS_DECODE_ATTENTION=0 leaves the model alone."""
    import difflens.models.decoding as D

    tok = tiny_tokenizer()
    model = tiny_model(family, seed=5)
    texts = ["tell me a story", "why", "give me some ideas for the cat", "why not"]
    ids, mask = _prompts(tok, texts)
    want = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=7,
                          pad_token_id=tok.pad_token_id, eos_token_id=-1)[:, ids.shape[1]:].tolist()
    impl = model.config.get_text_config(decoder=True)._attn_implementation
    calls = []
    real = D.decode_attention

    def counting(*a, **k):
        calls.append(a[1].shape[2])
        return real(*a, **k)

    monkeypatch.setattr(D, "decode_attention", counting)
    monkeypatch.setenv("DIFFLENS_DECODE_STEP", "0")  # the steps through forward (decode_step.py has its own tests)
    got = sample_rows(model, ids, mask, tokenizer=tok, temperature=0.0, max_new_tokens=7, seed=0)
    assert got == want
    assert model.config.get_text_config(decoder=True)._attn_implementation == impl
    if impl == "sdpa":
        assert calls and set(calls) == {ids.shape[1], 1}  # the prefill (deferred to sdpa) and every decode step
    else:
        assert not calls
    calls.clear()
    monkeypatch.setenv("DIFFLENS_DECODE_ATTENTION", "0")
    assert sample_rows(model, ids, mask, tokenizer=tok, temperature=0.0, max_new_tokens=7, seed=0) == want
    assert not calls
