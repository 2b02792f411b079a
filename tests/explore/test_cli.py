"""`difflens explore` and `difflens serve` on the command line: help, and refusals before any model loads."""
from __future__ import annotations

from typer.testing import CliRunner


def _flat(r):
    return " ".join(r.output.split())

from difflens.cli import app


def test_explore_help_names_its_options():
    r = CliRunner().invoke(app, ["explore", "--help"])
    assert r.exit_code == 0
    for opt in ("--host", "--port", "--token-env", "--max-queue", "--max-tokens", "--device", "--dtype"):
        assert opt in r.output


def test_explore_and_serve_refuse_a_non_run_and_an_unset_token(tmp_path, no_model_loads, monkeypatch):
    for cmd in ("explore", "serve"):
        r = CliRunner().invoke(app, [cmd, str(tmp_path)])
        assert r.exit_code == 2 and "not a run directory" in _flat(r)
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    r = CliRunner().invoke(app, ["explore", str(tmp_path), "--token-env", "NO_SUCH_TOKEN"])
    assert r.exit_code == 2 and "not set" in _flat(r)
    r = CliRunner().invoke(app, ["explore", str(tmp_path), "--max-queue", "0"])
    assert r.exit_code == 2 and "--max-queue" in _flat(r)


def test_explore_and_serve_refuse_vllm_where_it_is_missing_before_any_model_loads(tmp_path, no_model_loads,
                                                                                  monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm → ImportError, also where it is installed
    (tmp_path / "manifest.json").write_text("{}")
    for cmd in ("explore", "serve"):
        r = CliRunner().invoke(app, [cmd, str(tmp_path), "--backend", "vllm"])
        assert r.exit_code == 2 and "difflens[vllm]" in _flat(r).replace(" ", "")
        r = CliRunner().invoke(app, [cmd, str(tmp_path), "--tensor-parallel-size", "2"])
        assert r.exit_code == 2 and "apply to --backend vllm only" in _flat(r)
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert "--backend" in r.output and "--tensor-parallel-size" in r.output
