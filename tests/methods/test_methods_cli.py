"""`difflens diff`: a run on a tiny pair, and bad input refused with one error line before any model loads."""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import save_tiny
from methods_helpers import text_corpus
from difflens.cli import app


@pytest.fixture
def dirs(tmp_path):
    return str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)), str(text_corpus(tmp_path))


def _diff(tmp_path, base, ft, corpus, *extra):
    return CliRunner().invoke(app, ["diff", str(tmp_path / "run"), "--base", base, "--finetuned", ft, "--dataset",
                                    corpus, "--samples", "6", "--tokens", "8", "--batch-size", "3", *extra])


def test_diff_runs_mining_and_kl_on_a_pair_given_by_paths(tmp_path, dirs):
    r = _diff(tmp_path, *dirs, "--top-k", "5", "--layer", "1", "--show", "3")
    assert r.exit_code == 0, r.output
    assert "diff mining: 6 samples × 8 tokens, K=5" in r.output and "KL(P_ft‖P_base)" in r.output
    assert "[[" in r.output  # a top context with its token marked
    d = tmp_path / "run" / "methods"
    (ds,) = list(d.iterdir())
    assert {p.name for p in ds.iterdir()} >= {"mining.json", "mining.safetensors", "kl.json", "kl.sqlite",
                                              "progress.json"}
    assert json.loads((ds / "kl.json").read_text())["layer"] == 1


@pytest.mark.parametrize("args,message", [
    (["--samples", "-5"], "--samples: input should be greater than or equal to 1 (got -5)"),
    (["--tokens", "0"], "--tokens: input should be greater than or equal to 1 (got 0)"),
    (["--batch-size", "0"], "--batch-size: input should be greater than or equal to 1"),
    (["--top-k", "0"], "--top-k: input should be greater than or equal to 1"),
    (["--top-k", "100000"], "--top-k 100000 is larger than the vocabulary"),
    (["--tokens", "500"], "--tokens 500 is more than dataset"),
    (["--layer", "1.5"], "--layer: a relative layer lies in [0, 1], got 1.5"),
    (["--lens-layer", "x"], "--lens-layer: 'x' is neither a layer index nor a relative depth"),
    (["--skip-positions", "8"], "--skip-positions 8 leaves none of the 8 positions per sample"),
    (["--skip-positions", "-1"], "--skip-positions: input should be greater than or equal to 0"),
    (["--methods", "mining,pca"], "unknown method 'pca'; choose from mining, kl"),
    (["--methods", ","], "give at least one method"),
    (["--dataset", "/nonexistent.jsonl"], "unknown dataset"),
    (["--control", "bogus"], "--control: unknown control 'bogus'; choose from none, noise"),
    (["--control", "noise", "--control-scale", "big"], "--control-scale: 'big' is neither 'matched' nor a number"),
    (["--control", "noise", "--control-scale", "-0.1"], "--control-scale: the noise scale σ must be a finite number ≥ 0"),
    (["--control-scale", "0.01"], "--control-scale needs --control noise"),
    (["--control-seed", "3"], "--control-seed needs --control noise"),
])
def test_bad_input_is_one_error_before_any_model_loads(tmp_path, dirs, no_model_loads, args, message):
    base, ft, corpus = dirs
    r = _diff(tmp_path, base, ft, corpus, *args)
    out = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert out.startswith("error: ") and message in out and "Traceback" not in out, out
    assert not (tmp_path / "run").exists()


def test_mismatched_vocabularies_are_refused_before_any_model_loads(tmp_path, dirs, no_model_loads):
    base, ft, corpus = dirs
    tok = json.loads((save_tiny(tmp_path, "llama", 1) / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["cake"], vocab["oven"] = vocab["oven"], vocab["cake"]
    other = tmp_path / "other-ft"
    shutil.copytree(ft, other)
    (other / "tokenizer.json").write_text(json.dumps(tok))
    r = _diff(tmp_path, base, str(other), corpus)
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and out.startswith("error: tokenizer mismatch") and "'cake'" in out, out


def test_the_pair_defaults_to_the_collected_runs(tmp_path, dirs, no_model_loads):
    base, ft, corpus = dirs
    r = CliRunner().invoke(app, ["diff", str(tmp_path / "fresh"), "--dataset", corpus])
    assert r.exit_code == 2 and "give --base and --finetuned" in " ".join(r.output.split())


def test_diff_on_a_collected_run_takes_its_pair(tmp_path, dirs):
    from difflens.models.sources import fingerprint_source, resolve_source

    base, ft, corpus = dirs
    run = tmp_path / "collected"
    run.mkdir()
    models = {"base": {"spec": base, "fingerprint": fingerprint_source(resolve_source(base))},
              "finetuned": {"spec": ft, "fingerprint": fingerprint_source(resolve_source(ft))}}
    (run / "manifest.json").write_text(json.dumps({"models": models}))
    r = CliRunner().invoke(app, ["diff", str(run), "--dataset", corpus, "--samples", "4", "--tokens", "8",
                                 "--methods", "mining", "--top-k", "3", "--show", "2"])
    assert r.exit_code == 0, r.output
    got = json.loads(next((run / "methods").glob("*/mining.json")).read_text())
    assert got["models"]["base"]["spec"] == base and got["n_samples"] == 4 and got["top_k"] == 3


def test_diff_with_a_noise_control_writes_beside_the_real_results(tmp_path, dirs):
    r = _diff(tmp_path, *dirs, "--top-k", "5", "--layer", "1", "--show", "2", "--control", "noise",
              "--control-scale", "0.01", "--control-seed", "2")
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "control noise: the base model against itself + noise (σ = 0.01, seed 2" in out
    assert "control noise: diff mining" in out and "control noise: KL(P_ft‖P_base)" in out
    assert "baseline, ft alone: entropy H(P_ft)" in out and "pair vs control noise: mean kl" in out
    (ds,) = list((tmp_path / "run" / "methods").iterdir())
    real, ctl = json.loads((ds / "kl.json").read_text()), json.loads((ds / "control-noise" / "kl.json").read_text())
    assert real["control"] is None and ctl["control"] == "noise"
    assert ctl["models"]["control"]["sigma"] == 0.01 and ctl["models"]["control"]["seed"] == 2
    assert ctl["stats"]["kl"]["mean"] < real["stats"]["kl"]["mean"]  # σ = 1 % against two random inits
    assert {p.name for p in (ds / "control-noise").iterdir()} >= {"mining.json", "kl.json", "kl.sqlite"}
