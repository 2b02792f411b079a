"""Executors (difflens.executors) and the experiment's fan-out over them: inline keeps the sequential
behaviour, a 2-worker process pool and a local Ray cluster give the same merged experiment.json as
one worker, a failing cell is recorded without losing the others. The cells here are cheap fakes
(top-level functions writing to the shared run layout), not models: the executor is under test."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import difflens.run.experiment as E
from difflens.errors import ConfigError
from difflens.executors import LocalExecutor, Outcome, RayExecutor, make_executor

TESTS = str(Path(__file__).resolve().parent)


def square(x: int) -> int:
    return x * x


def square_or_fail(x: int) -> int:
    if x == 2:
        raise ValueError("two is unlucky")
    return x * x


def fake_cell(task: dict) -> dict:
    """A stand-in for E.run_cell: resumable (a finished cell is read back), writes OUT/runs/NAME/cell.json,
    fails for organism 'roman_concrete' (an exception, like a crashed cell)."""
    cfg = E.ExperimentConfig.model_validate(task["config"])
    organism, mix = task["organism"], float(task["mix"])
    if organism == "roman_concrete":
        raise RuntimeError("worker lost")
    run = cfg.out / "runs" / E._cell_name(cfg, organism, mix)
    done = run / "cell.json"
    if done.exists():
        return json.loads(done.read_text())
    run.mkdir(parents=True, exist_ok=True)
    cell = E.Cell(organism=organism, mix_ratio=mix, run=str(run), alpha={"2": 1.5 + mix},
                  relevance={"delta": {"patchscope": 10.0 * len(organism) + mix}}, variant=f"pid-independent-{mix:g}")
    done.write_text(json.dumps(cell.model_dump(mode="json")))
    return cell.model_dump(mode="json")


def _config(out: Path, organisms: list[str]) -> E.ExperimentConfig:
    return E.ExperimentConfig(name="all", out=out, base="tiny-base-not-embedded", organisms=organisms,
                              mix_ratios=[0.0, 1.0])


def _merged(out: Path) -> list[dict]:
    cells = json.loads((out / "experiment.json").read_text())["cells"]
    for c in cells:  # the run directory differs by experiment folder only
        c["run"] = Path(c["run"]).name
    return cells


def test_inline_runs_in_order_and_propagates():
    ex = make_executor("local", workers=1)
    assert not ex.parallel
    assert [(o.index, o.value) for o in ex.map(square, [1, 2, 3])] == [(0, 1), (1, 4), (2, 9)]
    with pytest.raises(ValueError, match="unlucky"):
        list(ex.map(square_or_fail, [1, 2, 3]))


def test_process_pool_records_a_failure_and_keeps_the_rest():
    ex = LocalExecutor(2)
    out = sorted(ex.map(square_or_fail, [1, 2, 3]), key=lambda o: o.index)
    assert out == [Outcome(0, 1), Outcome(1, error="ValueError: two is unlucky"), Outcome(2, 9)]


def test_bad_executor_options_fail_before_work():
    with pytest.raises(ConfigError, match="unknown executor"):
        make_executor("slurm")
    with pytest.raises(ConfigError, match="--workers"):
        make_executor("local", workers=0)
    with pytest.raises(ConfigError, match="--executor ray only"):
        make_executor("local", address="auto")


def test_missing_ray_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(ConfigError, match=r"difflens\[ray\]"):
        make_executor("ray", address="auto")


def test_two_local_workers_merge_like_one(tmp_path, monkeypatch, _isolated_home):
    monkeypatch.setattr(E, "run_cell", fake_cell)
    orgs = ["cake_bake", "domain_music"]
    E.run_experiment(_config(tmp_path / "one", orgs), progress=False, executor=LocalExecutor(1))
    r2 = E.run_experiment(_config(tmp_path / "two", orgs), progress=False, executor=LocalExecutor(2))
    assert [(c.organism, c.mix_ratio) for c in r2.cells] == [("cake_bake", 0.0), ("domain_music", 0.0),
                                                              ("cake_bake", 1.0), ("domain_music", 1.0)]
    assert _merged(tmp_path / "one") == _merged(tmp_path / "two")
    # a crashed cell in the pool is recorded; the others are kept and resumed from their run directories
    r3 = E.run_experiment(_config(tmp_path / "two", orgs + ["roman_concrete"]), progress=False,
                          executor=LocalExecutor(2))
    bad = [c for c in r3.cells if c.error]
    assert [(c.organism, c.error) for c in bad] == [("roman_concrete", "RuntimeError: worker lost")] * 2
    assert [c for c in _merged(tmp_path / "two") if not c["error"]] == _merged(tmp_path / "one")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'difflens[ray]'); the Ray "
                                            "executor test needs it")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}})
    yield ray
    ray.shutdown()


def test_ray_executor_maps_and_records_failures(ray_cluster):
    ex = RayExecutor()  # the test's running cluster
    out = sorted(ex.map(square_or_fail, [1, 2, 3]), key=lambda o: o.index)
    assert [o.value for o in out] == [1, None, 9]
    assert out[1].error and "two is unlucky" in out[1].error


def test_ray_experiment_merges_like_one_local_worker(tmp_path, monkeypatch, ray_cluster, _isolated_home):
    monkeypatch.setattr(E, "run_cell", fake_cell)
    orgs = ["cake_bake", "domain_music"]
    E.run_experiment(_config(tmp_path / "one", orgs), progress=False)
    res = E.run_experiment(_config(tmp_path / "ray", orgs + ["roman_concrete"]), progress=False,
                           executor=make_executor("ray"))
    assert len(res.cells) == 6
    assert [c.organism for c in res.cells if c.error] == ["roman_concrete", "roman_concrete"]
    assert all("worker lost" in c.error for c in res.cells if c.error)
    assert [c for c in _merged(tmp_path / "ray") if not c["error"]] == _merged(tmp_path / "one")


def test_agent_grid_on_a_process_pool_matches_threads(tiny_run, tmp_path, _isolated_home):
    import shutil

    from conftest import ScriptedAgent, ScriptedGrader, prepare_agent_run
    from difflens.agent.grid import run_agent_grid

    pair, layout, _ = tiny_run
    prepare_agent_run(pair, layout, _isolated_home)
    settings = (("adl", 0), ("blackbox", 0))
    docs = []
    for name, kw in (("threads", {}), ("pool", {"executor": LocalExecutor(2), "cell_spec": {
            "agent": {"provider": "import", "factory": "conftest:ScriptedAgent"},
            "grader": {"factory": "conftest:ScriptedGrader"}}})):
        runs_dir = tmp_path / name / "adl" / "runs"
        shutil.copytree(layout.root, runs_dir / "mini_cake")
        docs.append(run_agent_grid(runs_dir, tmp_path / name / "agents", ["mini_cake"], provider=ScriptedAgent,
                                   grader=ScriptedGrader(), runs=2, settings=settings, progress=False, **kw))
        summary = json.loads((runs_dir / "mini_cake" / "agent" / "summary.json").read_text())
        assert set(summary["settings"]) == {"adl-i0", "blackbox-i0"}  # both cells merged by the driver
    assert docs[0] == docs[1]
    assert docs[1]["cells"]["mini_cake"]["adl-i0"]["grades"] == [5.0, 5.0]


def test_experiment_cli_checks_the_executor_before_work(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from difflens.cli.main import app

    r = CliRunner().invoke(app, ["experiment", "adl", "--out", str(tmp_path), "--executor", "slurm"])
    assert r.exit_code == 2 and "unknown executor" in r.output
    r = CliRunner().invoke(app, ["experiment", "adl", "--out", str(tmp_path), "--address", "auto"])
    assert r.exit_code == 2 and "--executor ray only" in r.output
    monkeypatch.setitem(sys.modules, "ray", None)
    r = CliRunner().invoke(app, ["experiment", "adl", "--out", str(tmp_path), "--executor", "ray"])
    assert r.exit_code == 2 and "difflens[ray]" in r.output.replace("\n", "")
    assert not any(tmp_path.iterdir())
