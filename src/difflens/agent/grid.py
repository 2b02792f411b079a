"""``difflens experiment agents``: the paper's agent grid (Fig. 4) — the interpretability agent with
i ∈ {0, 5} model interactions and the blackbox agent with i ∈ {0, 5, 50}, R runs each, over
organisms — with a method axis: the interpretability agent's settings run once per diffing method
whose evidence it starts from (``adl``, ``mining``, ``kl``, ``amplify``, ``all``; default adl, the
paper's grid). Settings are keyed ``<method>-i<budget>`` and ``blackbox-i<budget>``
(:func:`~.records.setting_key`); the blackbox agent sees no method and runs once.

Each organism's run directory comes from the ``adl`` experiment (``OUT/adl/runs/<organism>``) or, for
the other methods, the ``methods`` experiment (``OUT/methods/runs/<organism>``): ``runs_dir`` may
list several directories, and each (organism, method) cell uses the first run there that has the
method's results (the blackbox agent: the first run there is). A cell without its method's results
fails the whole grid before any agent is asked, naming the experiment to run. Every episode is a resumable unit of
:func:`~.run.run_setting` (a finished, graded episode is never repeated); cells are run in parallel
threads (``parallel``), each organism's models behind one lock — or, with a parallel
:mod:`~difflens.executors` executor (a local process pool, a Ray cluster), as :func:`run_grid_cell`
tasks that rebuild the agent and grader from plain data (``cell_spec``) and load their own models;
the driver then merges every cell into the organism's ``agent/summary.json`` (one writer). The grid's table goes to
``OUT/agents/grid.json``: per organism and setting the grades, per setting the organism-balanced
summary (:func:`~.stats.summarize_grouped`), one-sided tests of each method's agent > blackbox
(:func:`~.stats.compare`, the paper's pairs of budgets) and of each other method's agent > the ADL
agent at the same budget; ``settings_info`` says each setting's kind, method and budget.
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

__all__ = ["SETTINGS", "LockedModels", "run_agent_grid", "run_grid_cell", "agent_from_spec", "COMPARISONS",
           "grid_settings", "comparisons"]

SETTINGS: tuple[tuple[str, int], ...] = (("adl", 0), ("adl", 5), ("blackbox", 0), ("blackbox", 5), ("blackbox", 50))
COMPARISONS: tuple[tuple[str, str], ...] = (("adl-i0", "blackbox-i0"), ("adl-i5", "blackbox-i5"),
                                            ("adl-i5", "blackbox-i50"), ("adl-i0", "blackbox-i50"))
"""The paper's tests for the ADL agent; every other method's agent gets the same ones (:func:`comparisons`)."""


def grid_settings(settings: Sequence[tuple[str, int]], methods: Sequence[str]) -> list[tuple[str, str | None, int]]:
    """(kind, method, budget) of every setting: each interpretability-agent setting once per method,
    each blackbox setting once."""
    out: list[tuple[str, str | None, int]] = []
    for kind, budget in settings:
        for m in (methods if kind == "adl" else [None]):
            if (kind, m, budget) not in out:
                out.append((kind, m, int(budget)))
    return out


def comparisons(keys: Sequence[str], methods: Sequence[str]) -> list[tuple[str, str]]:
    """The one-sided tests of a grid: per method the paper's "agent > blackbox" pairs, and per method
    other than adl "method > adl" at every budget both ran (only pairs whose settings both ran)."""
    out: list[tuple[str, str]] = []
    for m in methods:
        for a, b in COMPARISONS:
            pair = (m + a[len("adl"):], b)
            if pair[0] in keys and pair[1] in keys and pair not in out:
                out.append(pair)
    for m in methods:
        if m == "adl":
            continue
        for k in keys:
            name, _, budget = k.rpartition("-i")
            if name == m and f"adl-i{budget}" in keys:
                out.append((k, f"adl-i{budget}"))
    return out


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (the experiment directory) where it lies below it: a grid
    document that does not depend on where the experiment sits."""
    try:
        return Path(path).resolve().relative_to(Path(start).resolve()).as_posix()
    except ValueError:
        return str(path)


def _has_method(layout: RunLayout, method: str | None) -> bool:
    if method is None:
        return layout.manifest.exists()
    if not layout.manifest.exists():
        return False
    from ..methods.evidence import available

    have = available(layout)
    return bool(have) if method == "all" else method in have


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
    from .records import setting_key
    from .run import run_setting
    from .tools import InProcessModels, Toolbox

    layout = RunLayout(Path(task["run"]))
    spec = load_spec(task["organism"])
    kind, budget, method = task["kind"], int(task["budget"]), task.get("method")
    g = task.get("grader")
    grader = None
    if g and g.get("factory"):
        grader = _import(g["factory"])
    elif g:
        from ..llm import client_for

        grader = client_for(g["model"], g["base_url"], g["key_env"])
    if task.get("progress", True):
        print(f"[difflens] agents: {spec.name} {setting_key(kind, budget, method)}", file=sys.stderr, flush=True)
    toolbox = Toolbox(layout, InProcessModels(layout), kind=kind, method=method or "adl")
    res = run_setting(layout, agent_from_spec(task["agent"]), toolbox, method=method,
                      kind=kind, budget=budget, runs=int(task["runs"]), grader=grader, organism=spec.name,
                      organism_type=str(spec.type), description=spec.grader_description(),
                      grade_repeats=int(task["grade_repeats"]), rubric=spec.rubric, protocol=task["protocol"],
                      progress=bool(task.get("progress", True)))
    return res.model_dump(mode="json")


def run_agent_grid(runs_dir: Path | Sequence[Path], out: Path, organisms: Sequence[str], *, provider: Callable[[], Any],
                   grader: Any | None, runs: int = 5, settings: Sequence[tuple[str, int]] = SETTINGS,
                   parallel: int = 1, grade_repeats: int = 3, protocol: str = "auto", progress: bool = True,
                   models_factory: Callable[[RunLayout], Any] | None = None, executor: Executor | None = None,
                   cell_spec: dict[str, Any] | None = None, methods: Sequence[str] = ("adl",)) -> dict[str, Any]:
    """Run every (organism, setting × method) cell; write and return the grid document.

    ``runs_dir``: the directory of the organisms' runs, or several, searched in order per cell (see
    the module docstring). ``methods``: the diffing methods the interpretability agent's settings run
    with. With a parallel ``executor`` the cells are :func:`run_grid_cell` tasks: ``cell_spec`` gives
    the agent and grader as plain data (``{"agent": {...}, "grader": {...} | None}``); ``provider``,
    ``grader``, ``parallel`` and ``models_factory`` are then not used.
    """
    from ..organisms.spec import load_spec
    from .prompts import AGENT_METHOD_CHOICES
    from .records import setting_key
    from .run import run_setting, write_summary
    from .stats import compare, summarize_grouped
    from .tools import InProcessModels, Toolbox

    dirs = [Path(runs_dir)] if isinstance(runs_dir, (str, Path)) else [Path(d) for d in runs_dir]
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m not in AGENT_METHOD_CHOICES]
    if bad or not methods:
        raise ConfigError(f"unknown agent method(s) {bad or methods}: choose from {', '.join(AGENT_METHOD_CHOICES)}.")
    cells = grid_settings(settings, methods)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    models: dict[Path, Any] = {}
    lacking: list[str] = []
    for org in organisms:
        spec = load_spec(org)
        if not any(RunLayout(d / org).manifest.exists() for d in dirs):
            raise FileNotFoundError(f"no run for organism {org!r} at {' or '.join(str(d / org) for d in dirs)}: run "
                                    f"`difflens experiment adl` first (same --out)")
        for kind, method, budget in cells:
            layout = next((RunLayout(d / org) for d in dirs if _has_method(RunLayout(d / org), method)), None)
            if layout is None:
                lacking.append(f"{org} ({method})")
                continue
            root = layout.root.resolve()
            if root not in models:
                models[root] = LockedModels((models_factory or (lambda lay: InProcessModels(lay)))(layout))
            jobs.append((org, spec, layout, kind, method, budget))
    if lacking:
        raise FileNotFoundError(f"no results of the agent's method for {', '.join(lacking)} in "
                                f"{' or '.join(str(d) for d in dirs)}: run `difflens experiment methods` for those "
                                f"organisms first (same --out)")
    # every toolbox before any agent runs: a method whose evidence cannot be read fails the grid here
    where = {(org, setting_key(kind, budget, method)): layout.root for org, _s, layout, kind, method, budget in jobs}
    boxes = {(org, kind, method, budget): Toolbox(layout, models[layout.root.resolve()], kind=kind,
                                                 method=method or "adl")
             for org, _spec, layout, kind, method, budget in jobs}

    def one(job: tuple) -> tuple[str, str, Any]:
        org, spec, layout, kind, method, budget = job
        key = setting_key(kind, budget, method)
        if progress:
            print(f"[difflens] agents: {org} {key}", file=sys.stderr, flush=True)
        res = run_setting(layout, provider(), boxes[(org, kind, method, budget)], kind=kind, budget=budget,
                          runs=runs, grader=grader, organism=spec.name, organism_type=str(spec.type),
                          description=spec.grader_description(), grade_repeats=grade_repeats, rubric=spec.rubric,
                          protocol=protocol, progress=progress, method=method)  # type: ignore[arg-type]
        write_summary(layout, [res])
        return org, key, res

    if executor is not None and executor.parallel:
        results = _fan_out(executor, jobs, cell_spec, runs=runs, grade_repeats=grade_repeats, protocol=protocol,
                           progress=progress)
    else:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            results = list(pool.map(one, jobs))
    grades: dict[str, dict[str, list[float]]] = {}
    doc_cells: dict[str, dict[str, Any]] = {}
    for org, key, res in results:
        g = [e.grade for e in res.episodes if e.grade is not None]
        grades.setdefault(key, {})[org] = g
        doc_cells.setdefault(org, {})[key] = {
            "kind": res.kind, "method": res.method, "budget": res.budget,
            "run": _relative(where[(org, key)], out.parent),
            "grades": g, "status": {s: sum(e.status == s for e in res.episodes) for s in ("final", "no_final", "error")},
            "prompt_tokens": sum(e.usage.prompt_tokens for e in res.episodes),
            "completion_tokens": sum(e.usage.completion_tokens for e in res.episodes),
            "requests": sum(e.usage.requests for e in res.episodes)}
    summary = {key: {k: v.model_dump(mode="json") for k, v in summarize_grouped({o: g for o, g in per.items() if g}).items()}
               for key, per in grades.items() if any(per.values())}
    keys = [setting_key(k, b, m) for k, m, b in cells]
    tests = {}
    for a, b in comparisons(keys, methods):
        if a in grades and b in grades:
            try:
                tests[f"{a} > {b}"] = compare({o: g for o, g in grades[a].items() if g},
                                              {o: g for o, g in grades[b].items() if g}).model_dump(mode="json")
            except ValueError as e:
                tests[f"{a} > {b}"] = {"error": str(e)}
    doc = {"organisms": list(organisms), "runs": runs, "methods": methods, "settings": keys,
           "settings_info": {setting_key(k, b, m): {"kind": k, "method": m, "budget": b} for k, m, b in cells},
           "cells": doc_cells, "summary": summary, "tests": tests}
    write_json(out / "grid.json", doc)
    return doc


def _fan_out(executor: Executor, jobs: list[tuple], cell_spec: dict[str, Any] | None, **common: Any) -> list[tuple]:
    """The grid's cells on ``executor``; each organism's summary is merged here, by one writer. A
    failed cell is reported and left out (its finished episodes stay on disk: a rerun resumes it)."""
    from .records import SettingResult, setting_key
    from .run import write_summary

    if not cell_spec or not cell_spec.get("agent"):
        raise ConfigError(f"the agent grid on {executor.describe()} needs the agent as plain data (cell_spec).")
    tasks = [{"run": str(layout.root.resolve()), "organism": org, "kind": kind, "method": method, "budget": budget,
              **common, "agent": cell_spec["agent"], "grader": cell_spec.get("grader")}
             for org, _spec, layout, kind, method, budget in jobs]
    results = []
    for o in executor.map(run_grid_cell, tasks):
        org, _spec, layout, kind, method, budget = jobs[o.index]
        key = setting_key(kind, budget, method)
        if not o.ok:
            print(f"[difflens] agents: {org} {key} failed: {o.error}", file=sys.stderr, flush=True)
            continue
        res = SettingResult.model_validate(o.value)
        write_summary(layout, [res])
        results.append((o.index, org, key, res))
    return [r[1:] for r in sorted(results, key=lambda r: r[0])]
