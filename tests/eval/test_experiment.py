"""`difflens experiment` and `difflens sweep` on tiny models: every cell runs the whole pipeline,
the results table has each organism's numbers beside its baselines, a failing cell is recorded
without losing the others, reruns reuse finished runs."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import difflens.eval.experiment as E
from conftest import save_tiny, write_mini_spec


def _shrink(real):
    """The experiment's run config at test size (the pipeline is the real one)."""
    def small(cfg, organism, mix, finetuned, out):
        rc = real(cfg, organism, mix, finetuned, out)
        steer = rc.steering.model_copy(update={"positions": [1], "search_iters": 2, "refine_iters": 0,
                                               "search_samples": 2, "min_coherent": 1, "final_samples": 1,
                                               "max_new_tokens": 4, "prompts": rc.steering.prompts[:2]})
        from difflens.eval.causal import CausalConfig

        ev = rc.evaluate.model_copy(update={"causal": CausalConfig(n_texts=4, max_len=16, n_random=2, batch_size=4),
                                            "similarity_samples": 10})
        return rc.model_copy(update={"samples": 40, "batch_size": 20, "positions": 3, "steering": steer,
                                     "evaluate": ev, "stages": ["collect", "lens", "steer", "evaluate", "report"]})
    return small


@pytest.fixture
def mini(tmp_path, monkeypatch, _isolated_home):
    write_mini_spec(_isolated_home)
    monkeypatch.setattr(E, "_run_config", _shrink(E._run_config))
    return str(save_tiny(tmp_path, "llama", 0))


def test_mixing_experiment_runs_every_cell_and_renders(tmp_path, mini):
    from difflens.report.experiment import render_experiment

    cfg = E.ExperimentConfig(name="mixing", out=tmp_path / "exp", base=mini, organisms=["mini_cake"],
                             mix_ratios=[0.0, 0.5])
    res = E.run_experiment(cfg, progress=False)
    assert [(c.organism, c.mix_ratio) for c in res.cells] == [("mini_cake", 0.0), ("mini_cake", 0.5)]
    for c in res.cells:
        assert c.error is None, c.error
        assert {"delta", "base", "ft"} <= set(c.relevance) and "patchscope" in c.relevance["delta"]
        assert {"steered_vs_ft", "unsteered_vs_ft", "ft_self"} <= set(c.similarity)
        assert c.causal and len(c.causal["ft"]) == 3 and c.identification and c.leakage is not None
        assert c.ffa is not None and set(c.ffa) >= {"shift", "sign_p"}
    assert (tmp_path / "exp" / "runs" / "mini_cake-mix0.5" / "report.html").exists()
    saved = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert len(saved["cells"]) == 2
    doc = render_experiment(tmp_path / "exp").read_text()
    for s in ("Token relevance (Fig. 2a)", "Data mixing (Fig. 8)", "mini_cake 1:0.5", "FFA shift", "<svg"):
        assert s in doc, s
    # a rerun reuses every finished stage: no training, no new evaluation
    import difflens.organisms.train as train_mod

    def boom(*a, **k):
        raise AssertionError("recomputed")

    stamp = (tmp_path / "exp" / "runs" / "mini_cake" / "eval" / "summary.json").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "train_organism", boom)
        res2 = E.run_experiment(cfg, progress=False)
    assert [c.relevance for c in res2.cells] == [c.relevance for c in res.cells]
    assert all(c.error is None for c in res2.cells)
    assert (tmp_path / "exp" / "runs" / "mini_cake" / "eval" / "summary.json").stat().st_mtime_ns >= stamp


def test_a_failing_cell_is_recorded(tmp_path, mini, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(E, "_cell_from_run", broken)
    res = E.run_experiment(E.ExperimentConfig(name="adl", out=tmp_path / "exp", base=mini, organisms=["mini_cake"]),
                           progress=False)
    assert res.cells[0].error == "RuntimeError: disk full"


def test_experiment_cli_rejects_bad_input_before_work(tmp_path):
    from difflens.cli.main import app

    r = CliRunner().invoke(app, ["experiment", "bogus", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown experiment" in r.output
    r = CliRunner().invoke(app, ["experiment", "adl", "--out", str(tmp_path), "--organism", "no_such_organism"])
    assert r.exit_code == 2 and "no_such_organism" in r.output
