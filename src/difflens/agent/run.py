"""R agent runs of one setting (the interpretability agent with one diffing method's evidence, or
the blackbox agent × interaction budget) on a run directory, each graded against the true
objective; resumable (a finished, graded episode is never repeated).

Files (through :class:`~difflens.rundir.layout.RunLayout`): ``RUN/agent/<setting>/run<k>.json`` (one
:class:`~.records.Episode` each; ``<setting>`` is :func:`~.records.setting_key`: ``adl-i5``,
``mining-i0``, ``all-i5``, ``blackbox-i50``) and ``RUN/agent/summary.json`` (per setting: the method,
grades and their statistics, tokens and cost). An episode that ended in an endpoint error is run
again next time.
"""
from __future__ import annotations

import statistics
import sys
from typing import Any, Literal

from ..errors import LLMError
from ..files import read_json, write_json
from ..rundir.layout import RunLayout
from .loop import MAX_TURNS, run_episode
from .records import Episode, SettingResult, setting_key, setting_name

__all__ = ["grade_episode", "run_setting", "write_summary", "UNGRADED_FINAL"]

UNGRADED_FINAL = 1.0  # an episode without a final description gets the lowest grade


def grade_episode(ep: Episode, grader: Any, organism_type: str, description: str, *, repeats: int = 3,
                  rubric: str | None = None) -> Episode:
    """Grade the final description 1..5 with the rubric of ``organism_type`` against the true
    ``description``, ``repeats`` times (distinct samples), and average. No final: grade 1."""
    from ..graders.hypothesis import GRADE_FORMAT, hypothesis_grade_messages, parse_grade

    if ep.status != "final" or not ep.final:
        ep.grades, ep.grade = [], UNGRADED_FINAL
        return ep
    msgs = hypothesis_grade_messages(organism_type, description, ep.final, rubric=rubric)
    grades = []
    try:
        for r in range(repeats):
            grades.append(int(grader.ask(msgs, parse=parse_grade, temperature=0.7 if repeats > 1 else 0.0,
                                         cache_salt=f"grade-{r}", format_hint=GRADE_FORMAT)))
    except LLMError as e:
        ep.grade_error = f"grader failed: {e}"
    ep.grades = grades
    ep.grade = statistics.fmean(grades) if grades else None
    return ep


def run_setting(layout: RunLayout, provider: Any, toolbox: Any, *, kind: Literal["adl", "blackbox"], budget: int,
                runs: int, grader: Any | None, organism: str | None, organism_type: str | None,
                description: str | None, grade_repeats: int = 3, max_turns: int = MAX_TURNS, rubric: str | None = None,
                protocol: Literal["auto", "native", "text"] = "auto", progress: bool = True,
                method: str | None = None) -> SettingResult:
    """``runs`` episodes of one setting, each saved (and graded when a grader and the truth are given).
    ``method``: the diffing method the agent's overview comes from (default: the toolbox's; adl)."""
    tb_method = getattr(toolbox, "method", None)
    if kind == "blackbox":
        method = None
    else:
        method = method or tb_method or "adl"
        if tb_method is not None and tb_method != method:
            raise ValueError(f"the toolbox shows {tb_method!r} evidence, not {method!r}")
    res = SettingResult(kind=kind, budget=budget, organism=organism, organism_type=organism_type, method=method)
    label = f"{setting_name(kind, method)} i={budget}"
    for k in range(runs):
        path = layout.agent_episode(setting_name(kind, method), budget, k)
        ep = None
        if path.exists():
            try:
                ep = Episode.model_validate(read_json(path))
            except ValueError:
                ep = None
            if ep is not None and ep.status == "error":
                ep = None  # an endpoint outage: try again
        if ep is None:
            if progress:
                print(f"[difflens] agent: {label} run {k + 1}/{runs}", file=sys.stderr, flush=True)
            ep = run_episode(provider, toolbox, kind=kind, budget=budget, max_turns=max_turns, protocol=protocol,
                             run_index=k, progress=progress, method=method)
            write_json(path, ep.model_dump(mode="json"))
        if ep.grade is None and grader is not None and description and organism_type and ep.status != "error":
            ep = grade_episode(ep, grader, organism_type, description, repeats=grade_repeats, rubric=rubric)
            write_json(path, ep.model_dump(mode="json"))
        res.episodes.append(ep)
    return res


def write_summary(layout: RunLayout, settings: list[SettingResult]) -> dict[str, Any]:
    """Merge ``settings`` into ``RUN/agent/summary.json`` (other settings already there are kept):
    per setting (keyed ``<method>-i<budget>`` / ``blackbox-i<budget>``) the method, the grades, mean /
    share ≥ 2 / share ≥ 4 with bootstrap intervals, statuses, usage."""
    from .stats import summarize

    path = layout.agent()
    doc: dict[str, Any] = read_json(path) if path.exists() else {}
    doc.setdefault("settings", {})
    for s in settings:
        grades = [e.grade for e in s.episodes if e.grade is not None]
        entry: dict[str, Any] = {
            "kind": s.kind, "method": s.method, "budget": s.budget, "organism": s.organism,
            "organism_type": s.organism_type,
            "runs": len(s.episodes), "grades": grades,
            "status": {st: sum(e.status == st for e in s.episodes) for st in ("final", "no_final", "error")},
            "interactions_used": [e.interactions_used for e in s.episodes],
            "turns_used": [e.turns_used for e in s.episodes],
            "prompt_tokens": sum(e.usage.prompt_tokens for e in s.episodes),
            "completion_tokens": sum(e.usage.completion_tokens for e in s.episodes),
            "finals": [e.final for e in s.episodes],
        }
        if grades:
            entry["stats"] = summarize(grades).model_dump(mode="json")
        entry["evidence"] = next((e.evidence for e in s.episodes if e.evidence), {})
        doc["settings"][setting_key(s.kind, s.budget, s.method)] = entry
    write_json(path, doc)
    return doc
