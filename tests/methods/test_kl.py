"""Per-token KL and activation differences: equal a naive full-logit computation; per-sample means and
maxima, histograms and top contexts; the SQLite store pages and refuses another run's file."""
from __future__ import annotations

import shutil

import pytest
import torch

from methods_helpers import naive, text_corpus, tiny_pair
from difflens.errors import RunDirError
from difflens.methods import ExamplesStore, PassConfig, TokenKL, open_examples, run_methods
from difflens.methods.kl import bin_edges
from difflens.rundir.layout import RunLayout


@pytest.fixture(params=[0, 2], ids=["all-positions", "skip-2"])
def kl_run(tmp_path, request):
    pair = tiny_pair(tmp_path)
    corpus = text_corpus(tmp_path)
    T, N, layer = 8, 11, 2
    layout = RunLayout(tmp_path / "run")
    m = TokenKL(layer=layer, preview=3, chunk_elements=700, skip_positions=request.param)
    res = run_methods(pair, layout, [m], PassConfig(dataset=str(corpus), samples=N, tokens=T, batch_size=3),
                      progress=False)["kl"]
    ref = naive(pair, corpus, n=N, T=T, layer=layer)
    lpf, lpb = ref["ft"]["logits"].log_softmax(-1), ref["base"]["logits"].log_softmax(-1)
    want = {"kl": (lpf.exp() * (lpf - lpb)).sum(-1),
            "norm": (ref["ft"]["hidden"] - ref["base"]["hidden"]).norm(dim=-1),
            "cos": 1 - torch.nn.functional.cosine_similarity(ref["ft"]["hidden"], ref["base"]["hidden"], dim=-1),
            "ent": -(lpf.exp() * lpf).sum(-1)}  # the baseline: the finetuned model alone
    return pair, layout, corpus, res, want, ref


def test_kl_and_activation_differences_equal_naive(kl_run):
    pair, layout, corpus, res, want, ref = kl_run
    N, T = want["kl"].shape
    k = res.skip_positions
    assert res.n_positions == N * (T - k) and res.layer == 2
    assert want["kl"].min() > 0
    assert set(res.stats) == {"kl", "norm", "cos", "ent"} and res.baselines == ["ent"]
    for s, full_w in want.items():
        st = res.stats[s]
        assert st.by_position == pytest.approx(full_w.mean(0).tolist(), rel=1e-4)  # every position
        w = full_w[:, k:]  # the rest: the positions after the skipped ones
        assert st.count == N * (T - k)
        assert st.mean == pytest.approx(float(w.mean()), rel=1e-4)
        assert st.std == pytest.approx(float(w.std(unbiased=False)), rel=1e-3)
        assert st.max == pytest.approx(float(w.max()), rel=1e-4)
        # fixed bins, streamed: the same counts as binning everything at once; every token counted once
        edges = bin_edges(s)
        full = torch.bincount(torch.bucketize(w.reshape(-1), edges, right=True), minlength=edges.numel() + 1)
        assert st.tokens.counts == full.tolist() and sum(st.tokens.counts) == N * (T - k)
        assert sum(st.sample_means.counts) == sum(st.sample_maxes.counts) == N
    # per-sample mean and max, with the position of the max, in the store
    with open_examples(layout, str(corpus)) as store:
        assert store.count() == N
        for s, full_w in want.items():
            w = full_w[:, k:]
            for agg in ("max", "mean"):
                per = w.max(1).values if agg == "max" else w.mean(1)
                page = store.top(f"{s}_{agg}", 0, N)
                assert [e.sample for e in page] == per.argsort(descending=True).tolist()
                assert [e.value for e in page] == pytest.approx(per.sort(descending=True).values.tolist(), rel=1e-4)
                for e in page:
                    assert e.position == int(w[e.sample].argmax()) + k
                    assert e.ids == ref["ids"][e.sample]
                    assert e.values[s] == pytest.approx(full_w[e.sample].tolist(), rel=1e-4, abs=1e-7)
    # the token rankings: Σ KL over the positions where each id's probability rose most; ft's top predictions
    pf, pb = ref["ft"]["logits"].softmax(-1), ref["base"]["logits"].softmax(-1)
    raised, ft_top = (pf - pb).argmax(-1)[:, k:].reshape(-1), pf.argmax(-1)[:, k:].reshape(-1)
    V = pf.shape[-1]
    w_raised = torch.bincount(raised, weights=want["kl"][:, k:].reshape(-1), minlength=V)
    c_raised = torch.bincount(raised, minlength=V)
    got = {e.token_id: e for e in res.rankings["raised_total"]}
    assert set(got) == set(torch.nonzero(c_raised).reshape(-1).tolist())
    for i, e in got.items():
        assert e.weight == pytest.approx(float(w_raised[i]), rel=1e-4)
        assert e.count == int((raised == i).sum())
    # "raised": the mean KL where raised most, ids raised at ≥ min_count (5) positions only
    mean = {e.token_id: e for e in res.rankings["raised"]}
    assert mean and set(mean) == set(torch.nonzero(c_raised >= 5).reshape(-1).tolist())
    for i, e in mean.items():
        assert e.weight == pytest.approx(float(w_raised[i] / c_raised[i]), rel=1e-4)
    for r in ("raised", "raised_total"):
        assert [e.weight for e in res.rankings[r]] == sorted((e.weight for e in res.rankings[r]), reverse=True)
    c_top = torch.bincount(ft_top, minlength=V)
    assert {e.token_id: e.count for e in res.rankings["ft_top"]} == \
        {i: int(c_top[i]) for i in torch.nonzero(c_top).reshape(-1).tolist()}
    # the result previews the top contexts per statistic
    top = res.stats["kl"].top["max"]
    assert len(top) == 3 and top[0].sample == int(want["kl"][:, k:].max(1).values.argmax())


def test_store_pages_and_marks_the_token(kl_run):
    pair, layout, corpus, res, want, _ = kl_run
    N = want["kl"].shape[0]
    with open_examples(layout, str(corpus)) as store:
        full = store.top("norm_max", 0, N)
        pages = [e for off in range(0, N, 4) for e in store.top("norm_max", off, 4)]
        assert [e.sample for e in pages] == [e.sample for e in full]
        assert [e.rank for e in pages] == list(range(N))
        assert store.top("norm_max", N, 5) == []
        e = full[0]
        assert e.text == "".join(e.tokens) and e.tokens == [pair.tokenizer.decode([i]) for i in e.ids]
        marked = e.marked("<<", ">>")
        assert "<<" + e.tokens[e.index] + ">>" in marked
        assert marked.replace("<<", "").replace(">>", "") == e.text
        short = e.marked("<<", ">>", context=3)
        assert "<<" + e.tokens[e.index] + ">>" in short and len(short) <= 3 + 3 + 2 + 4 + len(e.tokens[e.index])
        with pytest.raises(RunDirError, match="unknown statistic"):
            store.top("perplexity")


def test_store_from_another_run_is_refused(kl_run, tmp_path):
    pair, layout, corpus, res, _, _ = kl_run
    store_path = layout.method_store(str(corpus), "kl")
    # a second run of the same pair on other data: its store copied over this run's is refused
    other_corpus = text_corpus(tmp_path, n=30, name="other.jsonl")
    other = RunLayout(tmp_path / "other")
    run_methods(pair, other, [TokenKL(layer=2)], PassConfig(dataset=str(other_corpus), samples=5, tokens=8),
                progress=False)
    shutil.copy(other.method_store(str(other_corpus), "kl"), store_path)
    with pytest.raises(RunDirError, match="holds examples of another run"):
        open_examples(layout, str(corpus))
    with pytest.raises(RunDirError, match="holds examples of another run"):
        ExamplesStore.open(store_path, fingerprint=res.fingerprint)
    # a file that is no store at all
    store_path.write_text("not sqlite")
    with pytest.raises(RunDirError, match="not a difflens examples store"):
        open_examples(layout, str(corpus))
