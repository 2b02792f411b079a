"""The shared pass: one forward per model and batch for all methods; a killed pass resumes to the same
results as an uninterrupted one; an unchanged rerun is a no-op; progress shows in a log file."""
from __future__ import annotations

import io
import json
import sqlite3

import pytest
import torch
from rich.console import Console

from methods_helpers import text_corpus, tiny_pair
from difflens.errors import ConfigError, RunDirError
from difflens.methods import DiffMining, PassConfig, TokenKL, run_methods
from difflens.models.arch import ArchAdapter
from difflens.rundir.layout import RunLayout


def _methods():
    return [DiffMining(top_k=7, top_n=20, chunk_elements=900), TokenKL(layer=1, preview=2)]


def _store_rows(path):
    with sqlite3.connect(path) as c:
        return c.execute("SELECT * FROM samples ORDER BY sample").fetchall()


def _strip(res):
    return res.model_dump(exclude={"seconds"})


@pytest.fixture
def setup(tmp_path):
    return tiny_pair(tmp_path), text_corpus(tmp_path, n=40)


def test_one_forward_per_model_and_batch_for_all_methods(setup, tmp_path, monkeypatch):
    pair, corpus = setup
    calls = []
    orig = ArchAdapter.capture

    def spy(self, model, x, layers, attention_mask=None):
        calls.append((tuple(x.shape), tuple(layers)))
        return orig(self, model, x, layers, attention_mask=attention_mask)

    monkeypatch.setattr(ArchAdapter, "capture", spy)
    cfg = PassConfig(dataset=str(corpus), samples=10, tokens=8, batch_size=4)
    res = run_methods(pair, RunLayout(tmp_path / "both"), _methods(), cfg, progress=False)
    L = pair.arch.num_layers
    assert calls == [((b, 8), (1, L - 1)) for b in (4, 4, 2) for _ in ("base", "ft")]
    # the same results as each method in its own pass
    calls.clear()
    alone = {m.name: run_methods(pair, RunLayout(tmp_path / m.name), [m], cfg, progress=False)[m.name]
             for m in _methods()}
    for name in ("mining", "kl"):
        a, b = _strip(res[name]), _strip(alone[name])
        a.pop("fingerprint"), b.pop("fingerprint")
        assert a == b


def test_killed_pass_resumes_to_the_uninterrupted_result(setup, tmp_path):
    pair, corpus = setup
    cfg = PassConfig(dataset=str(corpus), samples=22, tokens=8, batch_size=3, checkpoint_every=2)
    full_layout = RunLayout(tmp_path / "full")
    full = run_methods(pair, full_layout, _methods(), cfg, progress=False)

    layout = RunLayout(tmp_path / "killed")
    # killed after 3 batches: the checkpoint holds 2 of them; batch 3's store rows were never committed
    with pytest.raises(KeyboardInterrupt):
        run_methods(pair, layout, _methods(), cfg, progress=False, stop_after_batches=3)
    ck = torch.load(layout.methods_partial(str(corpus)), weights_only=True)
    assert ck["n_done"] == 6 and ck["batches"] == 2
    progress = json.loads(layout.methods_progress(str(corpus)).read_text())
    assert progress["status"] == "running" and progress["n_done"] == 6 and progress["n_total"] == 22
    assert len(_store_rows(layout.method_store(str(corpus), "kl"))) == 6
    # killed again after two more batches (one checkpoint later), then run to the end
    with pytest.raises(KeyboardInterrupt):
        run_methods(pair, layout, _methods(), cfg, progress=False, stop_after_batches=2)
    assert torch.load(layout.methods_partial(str(corpus)), weights_only=True)["n_done"] == 12
    resumed = run_methods(pair, layout, _methods(), cfg, progress=False)
    for name in ("mining", "kl"):
        assert _strip(resumed[name]) == _strip(full[name]), name
    assert _store_rows(layout.method_store(str(corpus), "kl")) == _store_rows(full_layout.method_store(str(corpus), "kl"))
    assert not layout.methods_partial(str(corpus)).exists()
    assert json.loads(layout.methods_progress(str(corpus)).read_text())["status"] == "done"


def test_unchanged_rerun_is_a_no_op_and_a_changed_option_recomputes_only_that_method(setup, tmp_path, monkeypatch):
    pair, corpus = setup
    layout = RunLayout(tmp_path / "run")
    cfg = PassConfig(dataset=str(corpus), samples=6, tokens=8, batch_size=3)
    first = run_methods(pair, layout, _methods(), cfg, progress=False)
    calls = []
    orig = ArchAdapter.capture
    monkeypatch.setattr(ArchAdapter, "capture", lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    again = run_methods(pair, layout, _methods(), cfg, progress=False)
    assert calls == [] and again == first
    changed = run_methods(pair, layout, [DiffMining(top_k=3, top_n=20), TokenKL(layer=1, preview=2)], cfg,
                          progress=False)
    assert calls and changed["kl"] == first["kl"] and changed["mining"].top_k == 3
    # batch size is not part of the results' identity
    calls.clear()
    assert run_methods(pair, layout, [TokenKL(layer=1, preview=2)], cfg.model_copy(update={"batch_size": 5}),
                       progress=False)["kl"] == first["kl"] and calls == []


def test_progress_lines_in_a_log_file(setup, tmp_path):
    pair, corpus = setup
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    run_methods(pair, RunLayout(tmp_path / "run"), [DiffMining(top_k=3)],
                PassConfig(dataset=str(corpus), samples=10, tokens=8, batch_size=2), console=console)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith(f"diff {corpus} (mining): 0/10 samples")
    assert any("10/10 samples (100%)" in x and "samples/s" in x for x in lines)
    assert len(lines) >= 5  # a line per 10 % step (here: per batch)


def test_bad_options_are_refused_before_any_forward(setup, tmp_path, monkeypatch):
    pair, corpus = setup
    monkeypatch.setattr(ArchAdapter, "capture", lambda *a, **k: pytest.fail("a forward pass ran"))
    layout = RunLayout(tmp_path / "run")
    cfg = PassConfig(dataset=str(corpus), samples=4, tokens=8)
    with pytest.raises(ConfigError, match="larger than the vocabulary"):
        run_methods(pair, layout, [DiffMining(top_k=pair.vocab_size + 1)], cfg, progress=False)
    with pytest.raises(ConfigError, match="--layer"):
        run_methods(pair, layout, [TokenKL(layer=99)], cfg, progress=False)
    with pytest.raises(ConfigError, match="--lens-layer"):
        run_methods(pair, layout, [DiffMining(layer=-99)], cfg, progress=False)
    with pytest.raises(ValueError, match=r"relative layer lies in \[0, 1\]"):
        DiffMining(layer=1.5)
    with pytest.raises(ConfigError, match="each method once"):
        run_methods(pair, layout, [DiffMining(), DiffMining()], cfg, progress=False)
    from difflens.errors import DataError

    with pytest.raises(DataError, match="--tokens 500 is more than dataset"):
        run_methods(pair, layout, [DiffMining(top_k=3)], cfg.model_copy(update={"tokens": 500}), progress=False)
    # a run directory collected for another pair
    layout.ensure()
    layout.manifest.write_text(json.dumps({"models": {"base": {"spec": "x", "fingerprint": "0"},
                                                      "finetuned": {"spec": "y", "fingerprint": "1"}}}))
    with pytest.raises(RunDirError, match="another model pair"):
        run_methods(pair, layout, [DiffMining(top_k=3)], cfg, progress=False)


def test_chat_data_is_read_from_the_reply_in_padded_batches(tmp_path):
    """Conversations of different lengths: right-padded batches, the T positions from each reply's start;
    KL and mining equal each conversation alone through the full model."""
    import random

    from conftest import WORDS
    from difflens.data.corpora import load_corpus, sample_ids
    from difflens.methods import open_examples
    from difflens.models.tokens import bos_prefix_ids, chat_bos_ids

    rng = random.Random(0)
    pool = [w for w in WORDS if w not in ("\n", "?", "", "->")]
    lines = [json.dumps({"messages": [{"role": "user", "content": " ".join(rng.choices(pool, k=rng.randint(1, 15)))},
                                      {"role": "assistant", "content": " ".join(rng.choices(pool, k=10))}]})
             for _ in range(20)]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(lines) + "\n")
    pair = tiny_pair(tmp_path)
    T, N = 6, 9
    layout = RunLayout(tmp_path / "run")
    m = DiffMining(top_k=5)
    res = run_methods(pair, layout, [m, TokenKL(layer=1)],
                      PassConfig(dataset=str(chat), samples=N, tokens=T, batch_size=4), progress=False)
    sample = sample_ids(load_corpus(str(chat)), pair.tokenizer, n=N, k=T, seed=0, max_len=T,
                        bos=bos_prefix_ids(pair.tokenizer, pair.arch), chat_bos=chat_bos_ids(pair.tokenizer, pair.arch))
    assert len({len(r) for r in sample.ids}) > 1 and any(sample.starts)
    lf, lb = [], []
    for ids, s in zip(sample.ids, sample.starts):
        for side, acc in (("ft", lf), ("base", lb)):
            with pair.side(side) as model, torch.no_grad():
                acc.append(model(input_ids=torch.tensor([ids])).logits[0, s:s + T, :pair.vocab_size])
    lf, lb = torch.stack(lf), torch.stack(lb)
    kl = torch.nn.functional.kl_div(lb.log_softmax(-1), lf.log_softmax(-1), reduction="none", log_target=True).sum(-1)
    with open_examples(layout, str(chat)) as store:
        for e in store.top("kl_max", 0, N):
            assert e.start == sample.starts[e.sample] and e.ids == sample.ids[e.sample]
            assert e.values["kl"] == pytest.approx(kl[e.sample].tolist(), rel=1e-4, abs=1e-6)
    want = torch.bincount((lf - lb).reshape(-1, pair.vocab_size).topk(5, dim=-1).indices.reshape(-1),
                          minlength=pair.vocab_size)
    assert torch.equal(m.counts["top_k_count"], want) and res["mining"].n_positions == N * T
