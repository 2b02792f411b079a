"""Diff mining: streaming counts equal a naive full-logit computation; a crafted finetune that raises
one token's logit surfaces that token first; the statistics' size does not grow with N."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from methods_helpers import crafted_pair, naive, text_corpus, tiny_pair
from difflens.methods import DiffMining, PassConfig, load_result, run_methods
from difflens.rundir.layout import RunLayout


def naive_counts(logits_ft, logits_base, K):
    V = logits_ft.shape[-1]
    d = (logits_ft - logits_base).reshape(-1, V)
    f, b = logits_ft.reshape(-1, V), logits_base.reshape(-1, V)

    def occ(x):
        return torch.bincount(x.topk(K, dim=-1).indices.reshape(-1), minlength=V)

    return {"top_k_count": occ(d), "bottom_k_count": occ(-d), "ft_top_k_count": occ(f), "base_top_k_count": occ(b),
            "positive_count": (d > 0).sum(0), "mean_diff": d.mean(0)}


@pytest.mark.parametrize("lens_layer", [None, 1])
def test_counts_equal_naive_full_logits(tmp_path, lens_layer):
    pair = tiny_pair(tmp_path)
    corpus = text_corpus(tmp_path)
    T, N, K = 8, 13, 20
    cfg = PassConfig(dataset=str(corpus), samples=N, tokens=T, batch_size=4)
    m = DiffMining(top_k=K, top_n=30, layer=lens_layer, chunk_elements=1000)  # several chunks per batch
    res = run_methods(pair, RunLayout(tmp_path / "run"), [m], cfg, progress=False)["mining"]
    ref = naive(pair, corpus, n=N, T=T, layer=lens_layer)
    if lens_layer is None:
        lf, lb = ref["ft"]["logits"], ref["base"]["logits"]
    else:  # both models' logit lens at the layer: final norm + unembedding of the hidden state there
        with torch.no_grad():
            lf = torch.stack([pair.arch_of("ft").unembed(h.float()) for h in ref["ft"]["hidden"]]).double()
            lb = torch.stack([pair.arch_of("base").unembed(h.float()) for h in ref["base"]["hidden"]]).double()
    want = naive_counts(lf.float(), lb.float(), K)
    st = m.stats()
    assert res.n_positions == m.n_positions == N * T and res.n_samples == N and res.layer == lens_layer
    for key in ("top_k_count", "bottom_k_count", "ft_top_k_count", "base_top_k_count", "positive_count"):
        assert np.array_equal(st[key], want[key].numpy()), key
    np.testing.assert_allclose(st["mean_diff"], (lf - lb).reshape(-1, lf.shape[-1]).mean(0).numpy(), atol=1e-5)
    # the ranking is the counts sorted (ties by mean difference), tokens decoded
    top = res.rankings["top_k"]
    counts = [e.top_k_count for e in top]
    assert counts == sorted(counts, reverse=True) and counts[0] == int(want["top_k_count"].max())
    for e in top:  # decoded; ids beyond the tokenizer (padding rows of the tiny model) are named
        assert e.token == (pair.tokenizer.decode([e.token_id]) or f"<id {e.token_id}>")
    assert len(top) == 30 and set(res.rankings) == {"top_k", "positive", "mean_diff", "bottom_k", "ft_top_k",
                                                    "base_top_k"}
    ft_top = res.rankings["ft_top_k"]
    assert ft_top[0].ft_top_k_count == int(want["ft_top_k_count"].max())
    # the result is written where the run layout says, and reads back typed
    again = load_result(RunLayout(tmp_path / "run"), str(corpus), "mining")
    assert again == res


def test_crafted_finetune_surfaces_the_raised_token_first(tmp_path):
    target = 100  # an id the tiny tokenizer decodes
    pair = crafted_pair(tmp_path, target, raise_by=3.0)
    corpus = text_corpus(tmp_path)
    cfg = PassConfig(dataset=str(corpus), samples=10, tokens=8, batch_size=5)
    res = run_methods(pair, RunLayout(tmp_path / "run"), [DiffMining(top_k=10, top_n=10)], cfg,
                      progress=False)["mining"]
    for ranking in ("top_k", "positive", "mean_diff"):
        first = res.rankings[ranking][0]
        assert first.token_id == target, ranking
    first = res.rankings["top_k"][0]
    assert first.top_k_count == res.n_positions and first.positive_fraction == 1.0
    assert first.mean_diff == pytest.approx(3.0, abs=0.05)
    assert first.token == pair.tokenizer.decode([target])
    # the next token is far behind: only noise
    assert res.rankings["top_k"][1].top_k_count < res.n_positions * 0.6
    assert all(e.token_id != target for e in res.rankings["bottom_k"][:5])


def test_statistics_do_not_grow_with_n(tmp_path):
    pair = tiny_pair(tmp_path)
    corpus = text_corpus(tmp_path, n=60)
    sizes, shapes = [], []
    for n in (4, 40):
        m = DiffMining(top_k=5)
        seen = []
        orig = m.update

        def spy(batch, orig=orig, seen=seen):
            seen.append(tuple(batch.logits("ft").shape))
            orig(batch)

        m.update = spy
        run_methods(pair, RunLayout(tmp_path / f"run{n}"),
                    [m], PassConfig(dataset=str(corpus), samples=n, tokens=8, batch_size=4), progress=False)
        state = m.state_dict()
        sizes.append({k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)})
        shapes.append(set(seen))
    assert sizes[0] == sizes[1]  # [V] vectors whatever N is
    assert all(s == (pair.vocab_size,) for s in sizes[0].values())
    assert shapes[1] == {(4, 8, pair.vocab_size)}  # logits only ever for one batch: [B, T, V], never [N, T, V]
