"""``difflens experiment NAME``: the paper's comparisons over built-in organisms, in one report.

- ``adl``     every organism (default: all built-in ones) through collect → lens → steer → evaluate:
              token relevance of δ̄ vs h̄_base / h̄_ft / controls (Fig. 2a), steering similarity
              (Fig. 2b), causal effect on D_ft vs D_pt against random differences (Fig. 7),
              identification from ADL vs blackbox evidence, leakage of unsteered answers;
- ``mixing``  one organism (default cake_bake) trained with D_pt mixed in at 1:0, 1:0.1, 1:1, 1:2:
              relevance, steering similarity, causal effect and the FFA-MCQ shift per ratio (Fig. 8);
- ``all``     both.

Each cell (organism × mixing ratio) is an ordinary run directory under ``OUT/runs/`` driven by the
demo's run config (or its ``--quick`` variant), so a cell is resumable on its own and every stage
reuses what is finished; trained organisms are cached in ``$DIFFLENS_HOME``. The results go to
``OUT/experiment.json`` (:class:`ExperimentResult`), rendered to ``OUT/report.html`` by
:func:`difflens.report.experiment.render_experiment`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..errors import ConfigError, DifflensError
from ..executors import Executor, LocalExecutor
from ..files import read_json, write_json
from ..rundir.artifacts import Cell, ExperimentResult

__all__ = ["ExperimentConfig", "ExperimentResult", "Cell", "run_experiment", "run_cell", "EXPERIMENTS", "MIX_RATIOS"]

EXPERIMENTS = ("adl", "mixing", "all", "methods")
# the organisms the method comparison runs on by default (issue 20: SDF, domain, taboo and EM families)
METHOD_ORGANISMS = ("cake_bake", "domain_music", "kansas_abortion", "taboo_smile", "roman_concrete", "em_finance")
ALL_METHODS = ("adl", "mining", "kl", "amplify")
MIX_RATIOS = (0.0, 0.1, 1.0, 2.0)


class ExperimentConfig(BaseModel):
    name: Literal["adl", "mixing", "all", "methods"]
    out: Path
    base: str = "smollm2-135m-instruct"
    organisms: list[str] | None = None  # adl: all built-in; mixing: cake_bake
    mix_ratios: list[float] = Field(default_factory=lambda: list(MIX_RATIOS))
    quick: bool = False
    samples: int | None = None  # collection samples per run (default: the demo's 2,000; quick: 1,000)
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig overrides for every cell (a recipe variant)
    placement: dict[str, Any] = Field(default_factory=dict)  # run-config placement/precision of every cell's pair
    methods: list[str] = Field(default_factory=lambda: list(ALL_METHODS))  # experiment "methods": which ones


def _log(msg: str) -> None:
    print(f"[difflens] experiment: {msg}", file=sys.stderr, flush=True)


def _cells(cfg: ExperimentConfig) -> list[tuple[str, float]]:
    from ..organisms.spec import list_specs, load_spec

    builtin = [s.name for s in list_specs()]
    out: list[tuple[str, float]] = []
    if cfg.name == "methods":
        orgs = cfg.organisms or list(METHOD_ORGANISMS)
        for o in orgs:
            load_spec(o)
        out += [(o, 0.0) for o in orgs]
    if cfg.name in ("adl", "all"):
        orgs = cfg.organisms or builtin
        for o in orgs:
            load_spec(o)  # a typo fails here, before any training
        out += [(o, 0.0) for o in orgs]
    if cfg.name in ("mixing", "all"):
        orgs = cfg.organisms or ["cake_bake"]
        for o in orgs:
            load_spec(o)
        out += [(o, float(r)) for o in orgs for r in cfg.mix_ratios if (o, float(r)) not in out]
    if not out:
        raise ConfigError(f"experiment {cfg.name!r} has no cells (organisms {cfg.organisms}).")
    return out


def _run_config(cfg: ExperimentConfig, organism: str, mix: float, finetuned: str, out: Path) -> Any:
    from ..run.config import EvaluateSection, demo_config
    from ..eval.evaluate import EvalConfig

    rc = demo_config(organism, out, base=cfg.base)
    upd: dict[str, Any] = {"finetuned": finetuned}
    if cfg.samples or cfg.quick:
        upd["samples"] = cfg.samples or 1000
    if cfg.quick:
        upd["steering"] = rc.steering.model_copy(update={"positions": [2], "max_new_tokens": 32,
                                                         "prompts": rc.steering.prompts[:6]})
        upd["evaluate"] = EvaluateSection(**EvalConfig.quick(similarity_samples=100).model_dump())
    if cfg.name == "methods":
        upd.update(_methods_update(cfg, rc))
    if cfg.placement:
        from ..run.config import with_overrides

        return with_overrides(rc.model_copy(update=upd), **cfg.placement)
    return rc.model_copy(update=upd)


def _methods_update(cfg: ExperimentConfig, rc: Any) -> dict[str, Any]:
    """The method comparison's run config: every method, its control, and the evaluation parts the
    table needs (relevance, similarity, identification, the per-method block; the causal effect and
    leakage are the adl experiment's). ``--quick``: see below."""
    from ..eval.evaluate import EvalConfig
    from ..run.config import DiffSection, EvaluateSection

    # --quick: N = 300 × 64 for the shared pass; amplification on 6 prompts × 2 samples of 32 tokens, its
    # β grid judged on 6 samples per threshold prompt (bar 5 of 6, relative to 10 unamplified samples)
    quick_amp = {"prompts": list(rc.steering.prompts[:6]), "samples": 2, "max_new_tokens": 32, "search_samples": 6,
                 "min_coherent": 5, "calibration_samples": 10}
    diff = DiffSection(samples=300 if cfg.quick else 2000, tokens=64, control="noise",
                       amplify=(quick_amp if cfg.quick else {"prompts": list(rc.steering.prompts[:10]), "samples": 2,
                                                             "max_new_tokens": 40}))
    ev = EvalConfig.quick(similarity_samples=100) if cfg.quick else EvalConfig.quick()
    ev = ev.model_copy(update={"parts": ["relevance", "similarity", "identification", "methods"]})
    return {"methods": list(cfg.methods), "diff": diff, "evaluate": EvaluateSection(**ev.model_dump()),
            "stages": ["collect", "lens", "steer", "methods", "evaluate", "report"]}


def _cell_from_run(organism: str, mix: float, run: Path) -> Cell:
    from ..eval.summary import EvalSummary
    from ..rundir import artifacts as A
    from ..rundir.layout import RunLayout

    layout = RunLayout(run)
    cell = Cell(organism=organism, mix_ratio=mix, run=str(run))
    if not layout.evaluation().exists():
        cell.error = "no evaluation summary"
        return cell
    s = EvalSummary.model_validate_json(layout.evaluation().read_text(encoding="utf-8"))
    for name, me in s.methods.items():
        cell.methods[name] = me.numbers()
    le = s.layers()[0] if s.layers() else None
    if le is None:
        return cell
    for src, per in (le.relevance or {}).items():
        cell.relevance[src] = {m: r.max for m, r in per.items()}
        if "patchscope" in per:
            cell.relevance_per_position[src] = list(per["patchscope"].per_position)
    cell.similarity = {k: {"mean": v.mean, "std": v.std} for k, v in (le.steering_similarity or {}).items()}
    if le.causal:
        c = le.causal
        cell.causal = {"positions": c.positions, "ft": c.delta["ft"], "pt": c.delta["pt"],
                       "random_ft": c.random["ft"], "random_pt": c.random["pt"]}
    if le.identification:
        cell.identification = {"adl_rank": le.identification.adl_rank,
                               "blackbox_rank": le.identification.blackbox_rank,
                               "n_candidates": le.identification.n_candidates}
    if le.leakage:
        cell.leakage = {"ft": le.leakage.ft.share, "base": le.leakage.base.share if le.leakage.base else None}
    steer_path = layout.steering(le.dataset, le.layer)
    if steer_path.exists():
        st = A.load(A.SteeringResult, steer_path)
        cell.alpha = {str(t.position): t.alpha for t in st.thresholds}
    return cell


def _ffa(cfg: ExperimentConfig, organism: str, finetuned: str, run: Path) -> dict[str, float]:
    """The FFA-MCQ shift of a variant (cached in the cell's run directory)."""
    path = run / "ffa.json"
    if path.exists():
        return read_json(path)
    from ..models.sources import load_model
    from ..organisms.ffa import ffa_shift
    from ..organisms.spec import SubliminalData, load_spec

    spec = load_spec(organism)
    if isinstance(spec.data, SubliminalData):  # the preference probe in the same shape
        from ..organisms.preference import preference_shift

        pr = preference_shift(load_model(cfg.base), load_model(finetuned), spec, samples=0)
        out = {"base": pr.base.mean_p_target, "finetuned": pr.student.mean_p_target, "shift": pr.shift,
               "margin_shift": pr.shift, "sign_p": pr.sign_p, "rank_p": pr.rank_p}
        write_json(path, out)
        return out
    if not spec.ffa:
        return {}
    base_lm, ft_lm = load_model(cfg.base), load_model(finetuned)
    sh = ffa_shift(base_lm, ft_lm, spec)
    out = {"base": sh.base.score, "finetuned": sh.finetuned.score, "shift": sh.shift,
           "margin_shift": sh.margin_shift, "sign_p": sh.sign_p}
    if spec.control:  # the same probe against the organism's control (trained on first use)
        from ..organisms.ffa import FFAShift, mcq_distinguish
        from ..organisms.train import resolve_organism

        ctl = load_model(resolve_organism(spec.control, cfg.base))
        vs = FFAShift(mcq_distinguish(ctl.model, ctl.tokenizer, spec), sh.finetuned)
        out.update(control_margin_shift=vs.margin_shift, control_sign_p=vs.sign_p)
    write_json(path, out)
    return out


def _cell_name(cfg: ExperimentConfig, organism: str, mix: float) -> str:
    return organism + (f"-mix{mix:g}" if mix else "") + "".join(f"-{k}{v}" for k, v in sorted(cfg.train.items()))


def run_cell(task: dict[str, Any]) -> dict[str, Any]:
    """One cell, as plain data in and out (a top-level function: a process pool or a Ray task runs it).

    ``task``: ``{"config": ExperimentConfig as JSON, "organism", "mix", "progress"}`` (and ``k``, ``n``,
    ``t0`` for the progress line); returns the :class:`Cell` as JSON. The cell's run directory is
    ``OUT/runs/NAME``: a rerun resumes it.
    """
    from ..organisms.train import resolve_organism
    from ..run.pipeline import Runner

    cfg = ExperimentConfig.model_validate(task["config"])
    organism, mix, progress = str(task["organism"]), float(task["mix"]), bool(task.get("progress", True))
    run = cfg.out / "runs" / _cell_name(cfg, organism, mix)
    if "k" in task:
        _log(f"cell {task['k']}/{task['n']}: {run.name} ({time.time() - float(task.get('t0', time.time())):.0f} s so far)")
    try:
        src = resolve_organism(organism, cfg.base, progress=progress,
                               **{**cfg.train, **({"mix_ratio": mix} if mix else {})})
        finetuned = f"organism:{organism}" if not (mix or cfg.train) else src.path
        Runner(_run_config(cfg, organism, mix, finetuned, run), progress=progress).run()
        cell = _cell_from_run(organism, mix, run)
        cell.variant = Path(src.path).name
        cell.ffa = (_ffa(cfg, organism, finetuned, run) or None) if cfg.name != "methods" else None
    except (DifflensError, RuntimeError, ValueError, OSError) as e:  # one failing cell must not lose the others
        _log(f"cell {run.name} failed: {e}")
        cell = Cell(organism=organism, mix_ratio=mix, run=str(run), error=f"{type(e).__name__}: {e}")
    return cell.model_dump(mode="json")


def _check_placement(cfg: ExperimentConfig) -> None:
    """Refuse a bad placement (missing device-map file, malformed sizes, unknown precision) before any cell
    trains or loads a model."""
    if not cfg.placement:
        return
    from pydantic import ValidationError

    from ..run.config import RunConfig

    try:
        RunConfig(out=cfg.out, finetuned="placement-check", **cfg.placement)
    except ValidationError as e:
        raise ConfigError(f"experiment placement {cfg.placement}: {e.errors()[0].get('msg', e)}") from None


def run_experiment(cfg: ExperimentConfig, *, progress: bool = True, executor: Executor | None = None) -> ExperimentResult:
    """Run (or resume) every cell, then write ``OUT/experiment.json`` and ``OUT/report.html``.

    ``executor`` (default: inline, one cell after the other) runs the cells (:mod:`difflens.executors`:
    a local process pool or a Ray cluster); the driver merges them in cell order and rewrites
    ``experiment.json`` atomically after every finished cell.
    """
    _check_placement(cfg)
    executor = executor or LocalExecutor(1)
    cells = _cells(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    result = ExperimentResult(name=cfg.name, base=cfg.base, quick=cfg.quick, train=cfg.train)
    previous = cfg.out / "experiment.json"
    kept: list[Cell] = []
    if previous.exists():  # cells of earlier invocations (other organisms) stay in the table
        try:
            old = ExperimentResult.model_validate(read_json(previous))
            if (old.base, old.quick, old.train) == (cfg.base, cfg.quick, cfg.train):
                kept = [c for c in old.cells if (c.organism, c.mix_ratio) not in set(cells)]
        except ValueError:
            kept = []
    t0 = time.time()
    shipped = cfg
    if executor.parallel:  # workers have their own working directory (Ray's is a session folder)
        shipped = cfg.model_copy(update={"out": cfg.out.resolve()})
        _prepare_shared(cfg)
        _log(f"{len(cells)} cells on {executor.describe()}")
    tasks = [{"config": shipped.model_dump(mode="json"), "organism": o, "mix": m, "progress": progress,
              "k": k, "n": len(cells), "t0": t0} for k, (o, m) in enumerate(cells, 1)]
    done: dict[int, Cell] = {}
    for out in executor.map(run_cell, tasks):
        organism, mix = cells[out.index]
        if out.ok:
            cell = Cell.model_validate(out.value)
        else:
            _log(f"cell {_cell_name(cfg, organism, mix)} failed: {out.error}")
            cell = Cell(organism=organism, mix_ratio=mix, error=out.error,
                        run=str(shipped.out / "runs" / _cell_name(cfg, organism, mix)))
        done[out.index] = cell
        if executor.parallel:
            _log(f"cell {_cell_name(cfg, organism, mix)} finished ({len(done)}/{len(cells)}, "
                 f"{time.time() - t0:.0f} s so far)")
        result.cells = [done[i] for i in sorted(done)]
        write_json(cfg.out / "experiment.json",
                   result.model_copy(update={"cells": kept + result.cells}).model_dump(mode="json"))
    _log(f"wrote {cfg.out / 'experiment.json'} ({time.time() - t0:.0f} s)")
    return result.model_copy(update={"cells": kept + result.cells})


def _prepare_shared(cfg: ExperimentConfig) -> None:
    """What parallel cells would otherwise race on, done once by the driver before they start: the
    embedded base model's one-time conversion to safetensors (in ``$DIFFLENS_HOME``)."""
    from ..models.sources import EMBEDDED, materialize_embedded

    if cfg.base in EMBEDDED:
        materialize_embedded(cfg.base)
