"""``difflens experiment agents``: the paper's agent grid (Fig. 4) — the ADL agent with i ∈ {0, 5}
model interactions and the blackbox agent with i ∈ {0, 5, 50}, R runs each, over organisms.

Each organism's run directory comes from the ``adl`` experiment (``OUT/adl/runs/<organism>``; run it
first, or the grid runs it at ``--quick`` size). Every episode is a resumable unit of
:func:`~.run.run_setting` (a finished, graded episode is never repeated); cells are run in parallel
threads (``parallel``), each organism's models behind one lock — or, with a parallel
:mod:`~difflens.executors` executor (a local process pool, a Ray cluster), as :func:`run_grid_cell`
tasks that rebuild the agent and grader from plain data (``cell_spec``) and load their own models;
the driver then merges every cell into the organism's ``agent/summary.json`` (one writer). The grid's table goes to
``OUT/agents/grid.json``: per organism and setting the grades, per setting the organism-balanced
summary (:func:`~.stats.summarize_grouped`) and one-sided tests of ADL > blackbox
(:func:`~.stats.compare`).
"""
from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..executors import Executor
from ..files import write_json
from ..rundir.layout import RunLayout

__all__ = ["SETTINGS", "LockedModels", "run_agent_grid", "run_grid_cell", "agent_from_spec", "COMPARISONS"]

SETTINGS: tuple[tuple[str, int], ...] = (("adl", 0), ("adl", 5), ("blackbox", 0), ("blackbox", 5), ("blackbox", 50))
COMPARISONS: tuple[tuple[str, str], ...] = (("adl-i0", "blackbox-i0"), ("adl-i5", "blackbox-i5"),
                                            ("adl-i5", "blackbox-i50"), ("adl-i0", "blackbox-i50"))


class LockedModels:
    """A ModelAccess whose calls are serialised (one organism's in-process models, shared by threads:
    a steering hook installed by one call must not leak into another's generation)."""

    def __init__(self, inner: Any):
        self.inner, self.lock = inner, threading.Lock()

    def ask(self, prompts: list[str]) -> dict[str, list[str]]:
        with self.lock:
            return self.inner.ask(prompts)

    def steered(self, dataset: str, layer: int, position: int, prompts: list[str], n: int) -> list[list[str]]:
        with self.lock:
            return self.inner.steered(dataset, layer, position, prompts, n)


def _import(factory: str) -> Any:
    """``"package.module:name"`` → that object, called with no arguments."""
    import importlib

    mod, sep, attr = factory.partition(":")
    if not sep:
        raise ConfigError(f"factory {factory!r} must be 'package.module:name'.")
    return getattr(importlib.import_module(mod), attr)()


def agent_from_spec(spec: dict[str, Any]) -> Any:
    """An agent provider from plain data: ``{"provider": "endpoint", "model", "base_url", "key_env",
    "max_tokens"?}``, ``{"provider": "local", "model"}`` or ``{"provider": "import", "factory":
    "package.module:name"}`` (your own agent class; the manual agent needs this terminal)."""
    from .providers import EndpointAgent, LocalAgent

    kind = spec.get("provider")
    if kind == "import":
        return _import(spec["factory"])
    if kind == "endpoint":
        from ..llm import client_for

        return EndpointAgent(client_for(spec["model"], spec["base_url"], spec["key_env"]),
                             **({"max_tokens": spec["max_tokens"]} if spec.get("max_tokens") else {}))
    if kind == "local":
        return LocalAgent(spec.get("model") or "smollm2-135m-instruct")
    raise ConfigError(f"agent provider {kind!r} cannot run in a worker: use endpoint or local.")


def run_grid_cell(task: dict[str, Any]) -> dict[str, Any]:
    """One (organism, setting) cell as plain data in and out (a process-pool or Ray task): the
    :class:`~.records.SettingResult` as JSON. ``task``: ``run`` (the organism's run directory),
    ``organism``, ``kind``, ``budget``, ``runs``, ``grade_repeats``, ``protocol``, ``progress``,
    ``agent`` (:func:`agent_from_spec`) and ``grader`` (``{"model", "base_url", "key_env"}``,
    ``{"factory": "package.module:name"}`` or None)."""
    from ..organisms.spec import load_spec
    from .run import run_setting
    from .tools import InProcessModels, Toolbox

    layout = RunLayout(Path(task["run"]))
    spec = load_spec(task["organism"])
    kind, budget = task["kind"], int(task["budget"])
    g = task.get("grader")
    grader = None
    if g and g.get("factory"):
        grader = _import(g["factory"])
    elif g:
        from ..llm import client_for

        grader = client_for(g["model"], g["base_url"], g["key_env"])
    if task.get("progress", True):
        print(f"[difflens] agents: {spec.name} {kind} i={budget}", file=sys.stderr, flush=True)
    res = run_setting(layout, agent_from_spec(task["agent"]), Toolbox(layout, InProcessModels(layout), kind=kind),
                      kind=kind, budget=budget, runs=int(task["runs"]), grader=grader, organism=spec.name,
                      organism_type=str(spec.type), description=spec.grader_description(),
                      grade_repeats=int(task["grade_repeats"]), rubric=spec.rubric, protocol=task["protocol"],
                      progress=bool(task.get("progress", True)))
    return res.model_dump(mode="json")


def run_agent_grid(runs_dir: Path, out: Path, organisms: Sequence[str], *, provider: Callable[[], Any],
                   grader: Any | None, runs: int = 5, settings: Sequence[tuple[str, int]] = SETTINGS,
                   parallel: int = 1, grade_repeats: int = 3, protocol: str = "auto", progress: bool = True,
                   models_factory: Callable[[RunLayout], Any] | None = None, executor: Executor | None = None,
                   cell_spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every (organism, setting) cell; write and return the grid document.

    With a parallel ``executor`` the cells are :func:`run_grid_cell` tasks: ``cell_spec`` gives the
    agent and grader as plain data (``{"agent": {...}, "grader": {...} | None}``); ``provider``,
    ``grader``, ``parallel`` and ``models_factory`` are then not used.
    """
    from ..organisms.spec import load_spec
    from .run import run_setting, write_summary
    from .stats import compare, summarize_grouped
    from .tools import InProcessModels, Toolbox

    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    models: dict[str, Any] = {}
    for org in organisms:
        layout = RunLayout(runs_dir / org)
        if not layout.manifest.exists():
            raise FileNotFoundError(f"no run for organism {org!r} at {layout.root}: run `difflens experiment adl` "
                                    f"first (same --out)")
        spec = load_spec(org)
        models[org] = LockedModels((models_factory or (lambda lay: InProcessModels(lay)))(layout))
        for kind, budget in settings:
            jobs.append((org, spec, layout, kind, budget))

    def one(job: tuple) -> tuple[str, str, Any]:
        org, spec, layout, kind, budget = job
        if progress:
            print(f"[difflens] agents: {org} {kind} i={budget}", file=sys.stderr, flush=True)
        res = run_setting(layout, provider(), Toolbox(layout, models[org], kind=kind), kind=kind, budget=budget,
                          runs=runs, grader=grader, organism=spec.name, organism_type=str(spec.type),
                          description=spec.grader_description(), grade_repeats=grade_repeats, rubric=spec.rubric,
                          protocol=protocol, progress=progress)  # type: ignore[arg-type]
        write_summary(layout, [res])
        return org, f"{kind}-i{budget}", res

    if executor is not None and executor.parallel:
        results = _fan_out(executor, jobs, cell_spec, runs=runs, grade_repeats=grade_repeats, protocol=protocol,
                           progress=progress)
    else:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            results = list(pool.map(one, jobs))
    grades: dict[str, dict[str, list[float]]] = {}
    cells: dict[str, dict[str, Any]] = {}
    for org, key, res in results:
        g = [e.grade for e in res.episodes if e.grade is not None]
        grades.setdefault(key, {})[org] = g
        cells.setdefault(org, {})[key] = {
            "grades": g, "status": {s: sum(e.status == s for e in res.episodes) for s in ("final", "no_final", "error")},
            "prompt_tokens": sum(e.usage.prompt_tokens for e in res.episodes),
            "completion_tokens": sum(e.usage.completion_tokens for e in res.episodes),
            "requests": sum(e.usage.requests for e in res.episodes)}
    summary = {key: {k: v.model_dump(mode="json") for k, v in summarize_grouped({o: g for o, g in per.items() if g}).items()}
               for key, per in grades.items() if any(per.values())}
    tests = {}
    for a, b in COMPARISONS:
        if a in grades and b in grades:
            try:
                tests[f"{a} > {b}"] = compare({o: g for o, g in grades[a].items() if g},
                                              {o: g for o, g in grades[b].items() if g}).model_dump(mode="json")
            except ValueError as e:
                tests[f"{a} > {b}"] = {"error": str(e)}
    doc = {"organisms": list(organisms), "runs": runs, "settings": [f"{k}-i{b}" for k, b in settings],
           "cells": cells, "summary": summary, "tests": tests}
    write_json(out / "grid.json", doc)
    return doc


def _fan_out(executor: Executor, jobs: list[tuple], cell_spec: dict[str, Any] | None, **common: Any) -> list[tuple]:
    """The grid's cells on ``executor``; each organism's summary is merged here, by one writer. A
    failed cell is reported and left out (its finished episodes stay on disk: a rerun resumes it)."""
    from .records import SettingResult
    from .run import write_summary

    if not cell_spec or not cell_spec.get("agent"):
        raise ConfigError(f"the agent grid on {executor.describe()} needs the agent as plain data (cell_spec).")
    tasks = [{"run": str(layout.root.resolve()), "organism": org, "kind": kind, "budget": budget, **common,
              "agent": cell_spec["agent"], "grader": cell_spec.get("grader")}
             for org, _spec, layout, kind, budget in jobs]
    results = []
    for o in executor.map(run_grid_cell, tasks):
        org, _spec, layout, kind, budget = jobs[o.index]
        if not o.ok:
            print(f"[difflens] agents: {org} {kind}-i{budget} failed: {o.error}", file=sys.stderr, flush=True)
            continue
        res = SettingResult.model_validate(o.value)
        write_summary(layout, [res])
        results.append((o.index, org, f"{kind}-i{budget}", res))
    return [r[1:] for r in sorted(results, key=lambda r: r[0])]
