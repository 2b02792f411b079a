"""Placement options on the commands that build run configs (run, demo, sweep, experiment): bad input is
refused before any model loads, and given options reach the config (unset ones keep the config's values)."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from conftest import write_run_config
from difflens.cli import app
from difflens.run.experiment import ExperimentConfig, _run_config




def test_bad_placement_is_refused_before_any_model_loads(tmp_path, no_model_loads):
    cfg = write_run_config(tmp_path, out=str(tmp_path / "r"), finetuned="x")
    missing = str(tmp_path / "nope.json")
    for args in (["run", str(cfg), "--max-memory", "0=lots"],
                 ["run", str(cfg), "--device-map", missing],
                 ["demo", "--out", str(tmp_path / "d"), "--ft-device", missing],
                 ["sweep", "--finetuned", "x", "--out", str(tmp_path / "s"), "--dtype", "float8"],
                 ["experiment", "adl", "--out", str(tmp_path / "e"), "--organism", "cake_bake", "--device-map", missing]):
        r = CliRunner().invoke(app, args)
        out = r.output.replace("\n", " ")
        assert r.exit_code != 0 and "AssertionError" not in out, (args, r.output)
        assert any(w in out for w in ("max_memory", "max-memory", "nope.json", "float8", "dtype")), (args, r.output)
    assert not any((tmp_path / d).exists() for d in ("r", "d", "s"))


def test_experiment_cells_get_the_placement_and_unset_options_keep_the_defaults(tmp_path):
    cfg = ExperimentConfig(name="adl", out=tmp_path, quick=True, placement={"dtype": "float32", "max_memory": "cpu=8GiB",
                                                                           "device_map": "auto"})
    rc = _run_config(cfg, "cake_bake", 0.0, "organism:cake_bake", tmp_path / "run")
    assert (rc.dtype, rc.device_map, rc.max_memory) == ("float32", "auto", "cpu=8GiB") and rc.samples == 1000
    plain = _run_config(ExperimentConfig(name="adl", out=tmp_path, quick=True), "cake_bake", 0.0, "organism:cake_bake",
                        Path(tmp_path / "run"))
    assert plain.device_map is None and plain.dtype == "auto"
