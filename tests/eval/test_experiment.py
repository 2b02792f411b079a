"""`difflens experiment` and `difflens sweep` on tiny models: every cell runs the whole pipeline,
the results table has each organism's numbers beside its baselines, a failing cell is recorded
without losing the others, reruns reuse finished runs."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import difflens.run.experiment as E
from conftest import AllCoherent, FirstScale, save_tiny, write_mini_spec


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




class _Relevance:
    name = "words"

    def identity(self):
        return {"backend": "test"}

    def grade(self, tokens, description, frequent):
        return [t.strip().lower() in {"cake", "oven", "butter", "sugar", "flour"} for t in tokens]


@pytest.fixture
def pretrained(tmp_path, monkeypatch):
    """Organisms resolve to a saved tiny checkpoint instead of being trained (plumbing-only tests)."""
    import difflens.organisms.train as train_mod
    from difflens.models.sources import ModelSource

    ft = save_tiny(tmp_path, "llama", 1)
    monkeypatch.setattr(train_mod, "resolve_organism",
                        lambda name, base=None, **kw: ModelSource("local", f"organism:{name}", str(ft)))
    return ft


@pytest.fixture
def mini(tmp_path, monkeypatch, _isolated_home):
    """A tiny base, the mini_cake organism spec, test-size runs and fast fake graders (the real
    graders are tested on their own; here the experiment's plumbing is under test)."""
    import difflens.run.pipeline as pipeline
    from difflens.graders import Graders

    write_mini_spec(_isolated_home)
    monkeypatch.setattr(E, "_run_config", _shrink(E._run_config))
    monkeypatch.setattr(pipeline, "graders_for", lambda pair, backend, llm=None: Graders(AllCoherent(), FirstScale(),
                                                                                         _Relevance()))
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


def test_cells_of_other_invocations_are_kept(tmp_path, mini, pretrained, monkeypatch):
    out = tmp_path / "exp"
    out.mkdir()
    other = E.Cell(organism="other_org", run="x")
    (out / "experiment.json").write_text(E.ExperimentResult(name="adl", base=mini, quick=False,
                                                           cells=[other]).model_dump_json())
    monkeypatch.setattr(E, "_cell_from_run", lambda organism, mix, run: E.Cell(organism=organism, mix_ratio=mix,
                                                                              run=str(run)))
    res = E.run_experiment(E.ExperimentConfig(name="adl", out=out, base=mini, organisms=["mini_cake"]), progress=False)
    assert [c.organism for c in res.cells] == ["other_org", "mini_cake"]
    saved = E.ExperimentResult.model_validate_json((out / "experiment.json").read_text())
    assert [c.organism for c in saved.cells] == ["other_org", "mini_cake"]


def test_a_failing_cell_is_recorded(tmp_path, mini, pretrained, monkeypatch):
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


def test_sweep_builds_the_position_and_layer_grid(tmp_path, monkeypatch):
    import difflens.run.pipeline as pipeline
    from difflens.cli.main import app

    seen = []

    class Capture:
        def __init__(self, cfg, **kw):
            seen.append(cfg)

        def run(self):
            return {}

    monkeypatch.setattr(pipeline, "Runner", Capture)
    r = CliRunner().invoke(app, ["sweep", "--finetuned", "organism:cake_bake", "--out", str(tmp_path / "s"),
                                 "--positions", "128", "--quick"])
    assert r.exit_code == 0, r.output
    cfg = seen[0]
    assert cfg.positions == 128 and cfg.layers == [0.25, 0.5, 0.75, 1.0]
    assert cfg.lens.positions == [0, 1, 2, 4, 8, 16, 32, 64, 127] == cfg.steering.positions
    assert cfg.organism == "cake_bake" and cfg.evaluate.parts == ["relevance", "similarity"]
    assert cfg.steering.max_new_tokens == 32
    CliRunner().invoke(app, ["sweep", "--finetuned", "x", "--out", str(tmp_path / "t"), "--positions", "10",
                             "--layers", "3,0.5", "--steer-position", "2"])
    assert seen[1].lens.positions == [0, 1, 2, 4, 8, 9] and seen[1].layers == [3, 0.5]
    assert seen[1].steering.positions == [2] and seen[1].organism is None


def test_across_layers_overview_in_the_report(tmp_path):
    from difflens.eval.summary import EvalSummary, LayerEval
    from difflens.eval.relevance import MethodRelevance
    from difflens.files import write_json
    from difflens.report.evaluation import evaluation_section

    def le(layer, vals):
        return LayerEval(dataset="wiki", layer=layer, relevance={"delta": {"patchscope": MethodRelevance(
            positions=[0, 1, 2], per_position=vals, max=max(vals))}})

    s = EvalSummary(results={"wiki": {"3": le(3, [10, 20, 30]), "6": le(6, [40, 50, 60])}})
    p = tmp_path / "summary.json"
    write_json(p, s.model_dump(mode="json"))
    html = evaluation_section(p)
    assert "across layers" in html and "layer 3" in html and "layer 6" in html
    assert "δ̄ Patchscope relevance by position and layer" in html


def test_train_overrides_are_parsed_and_checked():
    from difflens.cli.evaluate import _parse_overrides
    from difflens.errors import ConfigError

    assert _parse_overrides(["chat_mix=1", "lora=true", "lr=3e-5"]) == {"chat_mix": 1, "lora": True, "lr": 3e-5}
    with pytest.raises(ConfigError, match="unknown training option"):
        _parse_overrides(["colour=red"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _parse_overrides(["chat_mix"])


def test_run_config_sizes(tmp_path):
    quick = E._run_config(E.ExperimentConfig(name="adl", out=tmp_path, quick=True), "cake_bake", 0.0,
                          "organism:cake_bake", tmp_path / "r")
    assert quick.samples == 1000 and quick.steering.positions == [2] and quick.steering.max_new_tokens == 32
    assert quick.evaluate.similarity_samples == 100 and quick.evaluate.causal.n_random == 8
    full = E._run_config(E.ExperimentConfig(name="adl", out=tmp_path), "cake_bake", 0.0, "x", tmp_path / "r")
    assert full.samples == 2000 and full.finetuned == "x" and full.organism == "cake_bake"


def test_report_shows_the_rank_control_beside_a_subliminal_probe():
    from difflens.run.experiment import Cell
    from difflens.report.experiment import _organisms

    html = _organisms([Cell(organism="subliminal_owl", run="r", ffa={"shift": 0.03, "sign_p": 6e-8, "rank_p": 0.125}),
                       Cell(organism="cake_bake", run="r", ffa={"shift": 0.5, "sign_p": 0.003}),
                       Cell(organism="em_finance", run="r", ffa={"shift": 0.1, "sign_p": 0.01, "control_margin_shift": 0.3,
                                                                "control_sign_p": 0.12})])
    assert "(rank p 0.125)" in html and html.count("(rank p ") == 1  # the subliminal row only
    assert "(vs control: 0.3 nats, p 0.12)" in html and html.count("(vs control") == 1
