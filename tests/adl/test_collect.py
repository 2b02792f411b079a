"""Collection: δ̄ equals a naive full-forward computation; η; bad inputs; runs resume."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import save_tiny
from difflens.models.tokens import bos_prefix_ids
from difflens.adl.collect import CollectConfig, collect, load_collected
from difflens.data.corpora import load_corpus, sample_ids
from difflens.errors import DataError, ModelSourceError, RunDirError
from difflens.run.layout import RunLayout
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
