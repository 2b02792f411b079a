"""Collection: δ̄ equals a naive full-forward computation (plain text, and chat data from the
assistant's reply); η; bad inputs; runs resume; shortfalls warn."""
from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import WORDS, save_tiny
from difflens.models.tokens import bos_prefix_ids
from difflens.adl.collect import CHAT_SAMPLING, CollectConfig, _stage_fp, collect, load_collected
from difflens.data.chat import render_chat
from difflens.data.corpora import load_corpus, sample_ids
from difflens.errors import DataError, ModelSourceError, RunDirError
from difflens.rundir.layout import RunLayout, fingerprint
from difflens.models.pair import load_pair


def naive_means(pair, corpus_path, k, n, seed, layer):
    """Untruncated full forward with output_hidden_states, then slicing the first k positions."""
    corpus = load_corpus(str(corpus_path))
    bos = bos_prefix_ids(pair.tokenizer, pair.arch)
    sample = sample_ids(corpus, pair.tokenizer, n=n, k=k, seed=seed, max_len=10_000, bos=bos)
    acc = {"base": [], "ft": []}
    for ids in sample.ids:
        x = torch.tensor([ids])
        for side in ("base", "ft"):
            with pair.side(side) as m, torch.no_grad():
                hs = m(input_ids=x, output_hidden_states=True).hidden_states
            acc[side].append(hs[layer + 1][0, :k].double())
    base = torch.stack(acc["base"]).mean(0)
    ft = torch.stack(acc["ft"]).mean(0)
    return base, ft, len(sample.ids)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen3", "gemma2", "gemma3_text", "gpt2"])
def test_delta_equals_naive_full_forward(tmp_path, corpus_file, family):
    base_dir, ft_dir = save_tiny(tmp_path, family, 0), save_tiny(tmp_path, family, 1)
    pair = load_pair(str(base_dir), str(ft_dir))
    layout = RunLayout(tmp_path / "run")
    cfg = CollectConfig(datasets=[str(corpus_file)], samples=40, positions=5, layers=[1, 0.5], batch_size=7,
                        norm_samples=20)
    res = collect(pair, layout, cfg, progress=False)
    layers = sorted({1, pair.arch.resolve_layer(0.5)})
    assert [c.layer for c in res[str(corpus_file)]] == layers
    for layer in layers:
        got = load_collected(layout, str(corpus_file), layer)
        base, ft, n = naive_means(pair, corpus_file, 5, 40, 0, layer)
        assert got.n == n == 40
        torch.testing.assert_close(got.base_mean.double(), base, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.ft_mean.double(), ft, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.delta.double(), ft - base, rtol=1e-5, atol=1e-5)
        assert got.eta_base > 0 and got.eta_ft > 0
    manifest = json.loads(layout.manifest.read_text())
    ds = manifest["datasets"][0]
    assert ds["n_used"] == 40 and ds["n_skipped_short"] > 0  # the corpus has texts shorter than k
    assert {entry["absolute"] for entry in manifest["layers"]} == set(layers)
    assert manifest["models"]["base"]["fingerprint"] != manifest["models"]["finetuned"]["fingerprint"]


def test_eta_is_mean_norm_past_position_3(tmp_path, corpus_file):
    base_dir, ft_dir = save_tiny(tmp_path, "llama", 0), save_tiny(tmp_path, "llama", 1)
    pair = load_pair(str(base_dir), str(ft_dir))
    cfg = CollectConfig(datasets=[str(corpus_file)], samples=10, layers=[2], norm_samples=15, norm_len=8,
                        batch_size=5)
    got = collect(pair, RunLayout(tmp_path / "run"), cfg, progress=False)[str(corpus_file)][0]
    norm = sample_ids(load_corpus(str(corpus_file)), pair.tokenizer, n=15, k=4, seed=1, max_len=8)
    norms = []
    for ids in norm.ids:
        with torch.no_grad():
            hs = pair.base_lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        norms.extend(hs[3][0, 3:].norm(dim=-1).tolist())
    assert got.eta_base == pytest.approx(sum(norms) / len(norms), rel=1e-5)


def test_missing_and_corrupt_inputs(tmp_path, corpus_file):
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_pair(str(tmp_path / "nope"), str(tmp_path / "nope2"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError, match="neither a transformers checkpoint"):
        load_pair(str(empty), str(empty))
    with pytest.raises(ModelSourceError, match="unknown model"):
        load_pair("not-a-model", "x")
    bad = tmp_path / "adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelSourceError, match="not valid JSON"):
        load_pair(str(save_tiny(tmp_path, "llama")), str(bad))

    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(DataError, match="unknown dataset"):
        collect(pair, layout, CollectConfig(datasets=["missing.jsonl"], samples=5), progress=False)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "the cat sat on the mat"}\n{oops\n')
    with pytest.raises(DataError, match=r"broken.jsonl:2 is not valid JSON"):
        collect(pair, layout, CollectConfig(datasets=[str(broken)], samples=5), progress=False)
    wrong_field = tmp_path / "field.jsonl"
    wrong_field.write_text('{"body": "the cat sat on the mat"}\n')
    with pytest.raises(DataError, match="no field 'text'.*--text-field"):
        collect(pair, layout, CollectConfig(datasets=[str(wrong_field)], samples=5), progress=False)
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "the cat"}\n{"text": "a dog"}\n')
    with pytest.raises(DataError, match="no text with at least 5 tokens.*2 too short"):
        collect(pair, layout, CollectConfig(datasets=[str(short)], samples=5), progress=False)
    # a corrupt artifact in the run directory is reported, not silently used
    collect(pair, layout, CollectConfig(datasets=[str(corpus_file)], samples=8, layers=[1], norm_samples=4),
            progress=False)
    layout.collect_file(str(corpus_file), 1).write_bytes(b"garbage")
    with pytest.raises(RunDirError, match="corrupt"):
        load_collected(layout, str(corpus_file), 1)


def test_interrupted_run_resumes_and_rerun_is_noop(tmp_path, corpus_file):
    pair = load_pair(str(save_tiny(tmp_path, "qwen3", 0)), str(save_tiny(tmp_path, "qwen3", 1)))
    cfg = CollectConfig(datasets=[str(corpus_file)], samples=60, layers=[2], batch_size=6, checkpoint_every=2,
                        norm_samples=8)
    ref = collect(pair, RunLayout(tmp_path / "ref"), cfg, progress=False)[str(corpus_file)][0]

    layout = RunLayout(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        collect(pair, layout, cfg, progress=False, stop_after_batches=4)
    ck = torch.load(layout.collect_partial(str(corpus_file)), weights_only=True)
    assert ck["n"] == 24 and ck["next"] == 24
    calls = {"n": 0}
    for arch in (pair.arch, pair.ft_arch):
        def counting(*a, _orig=arch.capture, **k):
            calls["n"] += 1
            return _orig(*a, **k)

        arch.capture = counting  # type: ignore[method-assign]
    res = collect(pair, layout, cfg, progress=False)[str(corpus_file)][0]
    # only the 6 remaining batches per model, plus the norm pass (8 samples in batches of 6 // 4 = 1)
    assert calls["n"] == 2 * 6 + 2 * 8
    torch.testing.assert_close(res.delta, ref.delta)
    assert not layout.collect_partial(str(corpus_file)).exists()

    mtime = layout.collect_file(str(corpus_file), 2).stat().st_mtime_ns
    calls["n"] = 0
    collect(pair, layout, cfg, progress=False)
    assert calls["n"] == 0 and layout.collect_file(str(corpus_file), 2).stat().st_mtime_ns == mtime

    changed = cfg.model_copy(update={"samples": 30})
    res2 = collect(pair, layout, changed, progress=False)[str(corpus_file)][0]
    assert calls["n"] > 0 and res2.n == 30
    assert json.loads(layout.collect_stats(str(corpus_file)).read_text())["n_used"] == 30


def test_second_dataset_is_added_and_other_pair_refused(tmp_path, corpus_file):
    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    layout = RunLayout(tmp_path / "run")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": "the cat sat on the mat and the dog ran"}) + "\n" for _ in range(6)))
    for ds in (str(corpus_file), str(other)):
        collect(pair, layout, CollectConfig(datasets=[ds], samples=6, layers=[1], norm_samples=3), progress=False)
    assert layout.collected_datasets() == [str(corpus_file), str(other)]
    stranger = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 2)))
    with pytest.raises(RunDirError, match="another model pair.*new --out"):
        collect(stranger, layout, CollectConfig(datasets=[str(other)], samples=6, layers=[1]), progress=False)


BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} \n{% endfor %}"
                "{% if add_generation_prompt %}assistant : {% endif %}")


@pytest.fixture
def chat_file(tmp_path):
    """Conversations with user turns of varied length (so prefixes differ), some replies shorter
    than k=5 tokens, later turns, and a few without any assistant reply."""
    rng = random.Random(0)
    pool = [w for w in WORDS if w not in ("\n", "?", "", "->")]

    def say(lo, hi):
        return " ".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))

    rows = []
    for i in range(60):
        msgs = [{"role": "user", "content": say(1, 20)}]
        if i % 15 != 7:
            msgs.append({"role": "assistant", "content": say(2, 10)})
            if i % 3 == 0:
                msgs += [{"role": "user", "content": say(1, 5)}, {"role": "assistant", "content": say(1, 5)}]
        rows.append(json.dumps({"messages": msgs}))
    p = tmp_path / "chat.jsonl"
    p.write_text("\n".join(rows) + "\n")
    return p


def naive_chat_means(pair, corpus_path, k, n, seed, layer, bos):
    """Independent reference: the seeded selection redone by hand, each WHOLE conversation (all
    turns) tokenised and run untruncated, sliced at the start of its first assistant reply."""
    tok = pair.tokenizer
    convs = load_corpus(str(corpus_path)).texts
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    acc = {"base": [], "ft": []}
    for i in order:
        msgs = convs[i]
        turn = next((t for t, m in enumerate(msgs) if t > 0 and m["role"] == "assistant"), None)
        if turn is None or len(tok(msgs[turn]["content"], add_special_tokens=False).input_ids) < k:
            continue
        head = tok(render_chat(tok, msgs[:turn], add_generation_prompt=True), add_special_tokens=False).input_ids
        full = tok(render_chat(tok, msgs), add_special_tokens=False).input_ids
        lead = bos if full[:1] != bos else []
        start = len(lead) + len(head)
        x = torch.tensor([lead + full])
        for side in ("base", "ft"):
            with pair.side(side) as m, torch.no_grad():
                hs = m(input_ids=x, output_hidden_states=True).hidden_states
            acc[side].append(hs[layer + 1][0, start:start + k].double())
        if len(acc["base"]) == n:
            break
    return torch.stack(acc["base"]).mean(0), torch.stack(acc["ft"]).mean(0), len(acc["base"])


@pytest.mark.parametrize("family,template", [("llama", None), ("gemma2", None), ("gemma2", BOS_TEMPLATE)])
def test_chat_delta_is_taken_at_the_reply(tmp_path, chat_file, family, template):
    pair = load_pair(str(save_tiny(tmp_path, family, 0)), str(save_tiny(tmp_path, family, 1)))
    if template:
        pair.tokenizer.chat_template = template  # a template that writes BOS itself
    layout = RunLayout(tmp_path / "run")
    cfg = CollectConfig(datasets=[str(chat_file)], samples=16, positions=5, layers=[2], batch_size=4,
                        norm_samples=6, norm_len=6)
    got = collect(pair, layout, cfg, progress=False)[str(chat_file)][0]
    bos = [2] if pair.arch.uses_bos else []
    base, ft, n = naive_chat_means(pair, chat_file, 5, 16, 0, 2, bos)
    assert got.n == n == 16
    torch.testing.assert_close(got.base_mean.double(), base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.ft_mean.double(), ft, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.delta.double(), ft - base, rtol=1e-5, atol=1e-5)
    # η: mean norm over the reply positions (≥ 3) of the norm sample
    norm = sample_ids(load_corpus(str(chat_file)), pair.tokenizer, n=6, k=4, seed=1, max_len=6,
                      bos=bos_prefix_ids(pair.tokenizer, pair.arch), chat_bos=bos)
    assert min(norm.starts) > 3 and all(row.count(2) == (1 if bos else 0) for row in norm.ids)
    norms = []
    for ids, st in zip(norm.ids, norm.starts):
        with torch.no_grad():
            hs = pair.base_lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        norms.extend(hs[3][0, st:].norm(dim=-1).tolist())
    assert got.eta_base == pytest.approx(sum(norms) / len(norms), rel=1e-5)
    ds = json.loads(layout.manifest.read_text())["datasets"][0]
    assert ds["positions_from"] == "assistant_reply" and ds["chat_sampling"] == CHAT_SAMPLING
    assert ds["n_skipped_short"] > 0 and ds["shortfall"] == 0


def test_fingerprint_plain_text_unchanged_chat_recomputes(tmp_path, corpus_file, chat_file):
    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    cfg = CollectConfig(samples=8, layers=[1], norm_samples=4)
    d = pair.describe()

    def before(corpus):  # the fingerprint as runs written before chat sampling changed recorded it
        return fingerprint({"base": d["base"]["fingerprint"], "ft": d["finetuned"]["fingerprint"],
                            "data": corpus.content_hash, "cfg": cfg.semantic(), "abs_layers": [1]})

    plain, chat = load_corpus(str(corpus_file)), load_corpus(str(chat_file))
    assert _stage_fp(pair, plain, cfg, [1]) == before(plain)
    assert _stage_fp(pair, chat, cfg, [1]) != before(chat)
    # a chat collection recorded under the old fingerprint is recomputed
    layout = RunLayout(tmp_path / "run")
    cfg = cfg.model_copy(update={"datasets": [str(chat_file)]})
    collect(pair, layout, cfg, progress=False)
    stats_path = layout.collect_stats(str(chat_file))
    stats = json.loads(stats_path.read_text())
    stats["fingerprint"] = before(chat)
    stats_path.write_text(json.dumps(stats))
    calls = {"n": 0}
    orig = pair.arch.capture

    def counting(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)

    pair.arch.capture = counting  # type: ignore[method-assign]
    collect(pair, layout, cfg, progress=False)
    assert calls["n"] > 0 and json.loads(stats_path.read_text())["fingerprint"] == _stage_fp(pair, chat, cfg, [1])


def test_shortfall_warns_and_is_recorded(tmp_path, corpus_file, capsys):
    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    layout = RunLayout(tmp_path / "run")
    name = str(corpus_file)
    cfg = CollectConfig(datasets=[name], samples=500, layers=[1], norm_samples=4)
    got = collect(pair, layout, cfg, progress=False)[name][0]
    ds = json.loads(layout.collect_stats(name).read_text())["dataset"]
    used, short = ds["n_used"], ds["n_skipped_short"]
    assert got.n == used and used + short == 120 and short > 0  # every text was looked at
    assert (ds["n_requested"], ds["shortfall"]) == (500, 500 - used)
    assert json.loads(layout.manifest.read_text())["datasets"][0] == ds
    line = f"{name}: 500 samples requested, {used} usable (of 120 records; {short} too short) — using {used}"
    assert line in capsys.readouterr().err
    collect(pair, layout, cfg, progress=False)  # a no-op rerun says it again
    assert line in capsys.readouterr().err
    collect(pair, layout, cfg.model_copy(update={"samples": 50}), progress=False)
    assert "requested" not in capsys.readouterr().err
    ds = json.loads(layout.collect_stats(name).read_text())["dataset"]
    assert (ds["n_requested"], ds["n_used"], ds["shortfall"]) == (50, 50, 0)


def test_chat_shortfall_counts_conversations_without_reply(tmp_path, chat_file, capsys):
    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    layout = RunLayout(tmp_path / "run")
    collect(pair, layout, CollectConfig(datasets=[str(chat_file)], samples=100, layers=[1], norm_samples=4),
            progress=False)
    ds = json.loads(layout.manifest.read_text())["datasets"][0]
    assert ds["n_skipped_no_reply"] == 4 and ds["n_used"] + ds["n_skipped_short"] + 4 == 60
    assert ds["shortfall"] == 100 - ds["n_used"]
    assert (f"{chat_file}: 100 samples requested, {ds['n_used']} usable (of 60 records; {ds['n_skipped_short']} too short, "
            f"4 without an assistant reply) — using {ds['n_used']}") in capsys.readouterr().err


def test_auto_norm_samples_follow_the_samples_token_count():
    auto = CollectConfig()  # the paper's N = 10,000, k = 5: 50,000 tokens → the cap, 256 × 64 tokens
    assert auto.norm_samples == "auto" and auto.norm_texts() == 256
    assert auto.semantic() == CollectConfig(norm_samples=256).semantic()  # earlier runs keep their fingerprint
    assert CollectConfig(samples=1000).norm_texts() == 79  # ⌈1000·5 / 64⌉: as many tokens as the samples
    assert CollectConfig(samples=20).norm_texts() == 16  # at least 16 texts
    assert CollectConfig(samples=1000, norm_len=128).norm_texts() == 40
    assert CollectConfig(samples=1000, norm_samples=300).norm_texts() == 300  # explicit: as given
    assert CollectConfig(samples=1000).semantic() != CollectConfig(samples=1000, norm_samples=256).semantic()
    with pytest.raises(ValueError):
        CollectConfig(norm_samples=0)


def test_auto_calibration_changes_eta_only(tmp_path, corpus_file, monkeypatch):
    import difflens.adl.collect as C

    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    seen = []
    real = C.mean_norms

    def counting(pair_, ids, layers, **kw):
        seen.append(len(ids))
        return real(pair_, ids, layers, **kw)

    monkeypatch.setattr(C, "mean_norms", counting)
    out = {}
    for name, ns in (("fixed", 60), ("auto", "auto")):
        cfg = CollectConfig(datasets=[str(corpus_file)], samples=40, layers=[2], norm_samples=ns, norm_len=8)
        out[name] = collect(pair, RunLayout(tmp_path / name), cfg, progress=False)[str(corpus_file)][0]
    assert seen == [60, 25]  # auto: ⌈40·5 / 8⌉ texts
    assert torch.equal(out["fixed"].delta, out["auto"].delta)  # δ̄ bit-identical
    assert torch.equal(out["fixed"].base_mean, out["auto"].base_mean)
    assert out["fixed"].eta_ft == pytest.approx(out["auto"].eta_ft, rel=0.2)  # another sample of the same norm


def test_block_sums_group_the_rows_the_same_at_any_batch_size():
    from difflens.adl.collect import SUM_BLOCK, _BlockSum

    g = torch.Generator().manual_seed(0)
    # magnitudes over many binades, so that float64 sums of these float32 rows round and grouping matters
    rows = (torch.randn(3 * SUM_BLOCK + 21, 3, 4, generator=g) * torch.exp(torch.randn(3 * SUM_BLOCK + 21, 3, 4, generator=g) * 12)).float()
    ref = torch.zeros(3, 4, dtype=torch.float64)  # the per-batch sums of batches of SUM_BLOCK
    for i in range(0, len(rows), SUM_BLOCK):
        ref += rows[i:i + SUM_BLOCK].double().sum(0)
    for sizes in ([len(rows)], [SUM_BLOCK] * 3 + [21], [1, 37, 100, 62, 13], [5] * 42 + [3]):
        acc, i = _BlockSum(torch.zeros(3, 4, dtype=torch.float64)), 0
        for n in sizes:
            acc.add(rows[i:i + n])
            i += n
        assert i == len(rows) and torch.equal(acc.result(), ref), sizes
    # grouping matters: one float64 sum over all rows is not those bits
    assert not torch.equal(rows.double().sum(0), ref)


def test_forward_batches_hold_whole_blocks_and_run_the_last_partial_block_alone():
    from difflens.adl.collect import _sample_batches

    def sizes(n, bs, start=0):
        return [len(m) for _, m in _sample_batches(list(range(n)), bs, start)]

    assert sizes(2000, 256) == [256] * 7 + [192, 16]  # 2000 = 31·64 + 16: the 16 alone, as with batches of 64
    assert sizes(2000, 64) == [64] * 31 + [16]
    assert sizes(300, 100) == [64] * 4 + [44]  # rounded down to whole blocks
    assert sizes(150, 37) == [37, 37, 37, 17, 22]  # smaller than a block: as asked, the tail still alone
    assert sizes(2000, 256, start=1792) == [192, 16]  # a resumed run continues the same batches
    assert [i for i, _ in _sample_batches(list(range(150)), 37)] == [0, 37, 74, 111, 128]


def test_delta_does_not_depend_on_the_batch_size(tmp_path):
    """Batches of 64 (the old default) and 256 (the new): the same sums, so the same δ̄ bits wherever the
    model's rows come out the same in both batchings (checked first); else equal to float rounding."""
    rng = random.Random(1)
    words = [w for w in WORDS if w not in ("\n", "?")]
    corpus_file = tmp_path / "long.jsonl"
    corpus_file.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(8))}) + "\n"
                                   for _ in range(200)))
    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    got = {}
    for bs in (64, 256):
        cfg = CollectConfig(datasets=[str(corpus_file)], samples=150, layers=[2], batch_size=bs, norm_samples=8)
        got[bs] = collect(pair, RunLayout(tmp_path / f"bs{bs}"), cfg, progress=False)[str(corpus_file)][0]
    corpus = load_corpus(str(corpus_file))
    ids = sample_ids(corpus, pair.tokenizer, n=150, k=5, seed=0, max_len=5, bos=bos_prefix_ids(pair.tokenizer, pair.arch)).ids
    same_rows = True
    for side in ("base", "ft"):
        arch = pair.arch_of(side)
        with pair.side(side) as m:
            def rows(bs):
                return torch.cat([arch.capture(m, torch.tensor(ids[i:i + bs]), [2])[2] for i in range(0, 128, bs)])
            same_rows &= torch.equal(rows(64), rows(128))
    assert got[64].n == got[256].n == 150
    if same_rows:
        assert torch.equal(got[64].delta, got[256].delta) and torch.equal(got[64].ft_mean, got[256].ft_mean)
    else:
        torch.testing.assert_close(got[64].delta, got[256].delta, rtol=1e-6, atol=1e-6)
    assert got[64].eta_base == got[256].eta_base  # η's batches do not follow batch_size above 64
