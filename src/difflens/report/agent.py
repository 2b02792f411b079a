"""The report's Agent section: per setting (the evidence the agent started from × budget) the grades
with their intervals, and every episode as a readable transcript (agent replies, tool calls with
their cost, results folded), not raw JSON; and the page of ``difflens experiment agents``
(:func:`render_agent_grid`): the grid with its method axis."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..agent.records import Episode, parse_setting_key
from ..files import atomic_write_text, read_json
from ..rundir.layout import RunLayout
from .charts import grouped_bar_chart
from .style import CSS
from .text import esc, fmt, html_table

__all__ = ["agent_section", "render_agent_grid", "agent_grid_html"]


def _evidence_label(kind: Any, method: Any) -> str:
    return "none (blackbox)" if kind == "blackbox" else str(method or "adl")


def _setting_info(key: str, entry: dict[str, Any] | None = None) -> tuple[str, str | None, int | None]:
    """(kind, method, budget) of a setting: from its entry where it says, else from its key (summaries
    written before the method was recorded)."""
    entry = entry or {}
    try:
        kind, method, budget = parse_setting_key(key)
    except ValueError:
        kind, method, budget = str(entry.get("kind", "adl")), None, entry.get("budget")
    kind = str(entry.get("kind") or kind)
    method = entry.get("method") or (method if kind != "blackbox" else None)
    return kind, method, entry.get("budget", budget)

_ROLE = {"system": "system prompt", "user": "to the agent", "assistant": "agent", "tool": "tool result"}


def _episode(ep: Episode, title: str) -> str:
    grade = "–" if ep.grade is None else f"{ep.grade:.2f}"
    head = (f"<summary><b>{esc(title)}</b> · {esc(_evidence_label(ep.kind, ep.method))} evidence · "
            f"{esc(ep.status)} · grade {esc(grade)} · {ep.turns_used} turns · "
            f"{ep.interactions_used}/{ep.budget} interactions · {ep.format_errors} format errors · "
            f"{ep.tool_errors} tool errors · {ep.protocol} protocol</summary>")
    parts = []
    if ep.final:
        parts.append(f'<div class="card"><b>Final description</b><p>{esc(ep.final)}</p></div>')
    if ep.error:
        parts.append(f'<div class="card err">{esc(ep.error)}</div>')
    if ep.grade_error:
        parts.append(f'<p class="small">{esc(ep.grade_error)}</p>')
    if ep.tool_uses:
        rows = "".join(f"<tr><td>{u.turn}</td><td><code>{esc(u.tool)}</code></td><td><code>{esc(str(u.args)[:160])}"
                       f"</code></td><td>{u.cost}</td><td>{'ok' if u.ok else esc(u.error or 'error')}</td></tr>"
                       for u in ep.tool_uses)
        parts.append('<table class="compact"><thead><tr><th>turn</th><th>tool</th><th>arguments</th><th>cost</th>'
                     f'<th>outcome</th></tr></thead><tbody>{rows}</tbody></table>')
    msgs = []
    for m in ep.messages:
        body = esc(m.content or "")
        if m.tool_calls:
            body += "".join(f'<div class="small"><code>→ {esc(c["function"]["name"])}({esc(c["function"]["arguments"])})'
                            f'</code></div>' for c in m.tool_calls)
        long = m.role in ("system", "tool") or (m.role == "user" and len(m.content or "") > 600)
        block = f'<div class="msg {m.role}"><div class="who">{esc(_ROLE[m.role])}</div><pre>{body}</pre></div>'
        msgs.append(f"<details><summary class=\"small\">{esc(_ROLE[m.role])} ({len(m.content or '')} chars)"
                    f"</summary>{block}</details>" if long else block)
    parts.append("".join(msgs))
    return f"<details>{head}{''.join(parts)}</details>"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def agent_section(layout: RunLayout) -> str:
    """Settings table and transcripts (errors shown in place, never raised)."""
    out = []
    try:
        doc = read_json(layout.agent())
    except Exception as e:  # noqa: BLE001 - a broken artifact must not break the report
        return f'<div class="card err">Could not read {esc(layout.agent())}: {esc(e)}</div>'
    rows = []
    for key, s in doc.get("settings", {}).items():
        st = s.get("stats") or {}
        ci = st.get("mean_ci") or [None, None]
        kind, method, _ = _setting_info(key, s)
        rows.append(f"<tr><td><code>{esc(key)}</code></td><td>{esc(_evidence_label(kind, method))}</td>"
                    f"<td>{esc(s.get('runs'))}</td>"
                    f"<td>{esc(', '.join(f'{v} {k.replace(chr(95), chr(32))}' for k, v in (s.get('status') or {}).items()))}</td><td><b>{esc(round(st['mean'], 2)) if st else '–'}</b>"
                    f"{f' ({ci[0]:.2f}–{ci[1]:.2f})' if st else ''}</td>"
                    f"<td>{_pct(st.get('share_ge2'))}</td><td>{_pct(st.get('share_ge4'))}</td>"
                    f"<td>{esc(s.get('prompt_tokens', 0) + s.get('completion_tokens', 0))}</td></tr>")
    out.append('<p class="muted small">Grades 1–5 against the true objective with the rubric of the organism type '
               '(mean over repeated gradings); an episode without a final description counts as 1. Intervals: '
               '95% bootstrap over runs. Evidence: the diffing method whose results the agent started from '
               '(all: every method the run has).</p>'
               '<table class="num compact"><thead><tr><th>setting</th><th>evidence</th><th>runs</th><th>status</th>'
               '<th>mean grade '
               '(95% CI)</th><th>≥ 2</th><th>≥ 4</th><th>agent tokens</th></tr></thead>'
               f"<tbody>{''.join(rows)}</tbody></table>")
    root = layout.agent().parent
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        eps = []
        for f in sorted(d.glob("run*.json"), key=lambda p: int(p.stem[3:]) if p.stem[3:].isdigit() else 0):
            try:
                eps.append(_episode(Episode.model_validate(read_json(f)), f"{d.name} run {f.stem[3:]}"))
            except Exception as e:  # noqa: BLE001
                eps.append(f'<div class="card err">{esc(f.name)}: {esc(e)}</div>')
        out.append(f"<h3>{esc(d.name)}</h3>{''.join(eps)}")
    return "".join(out)


# -- the agent grid (difflens experiment agents) ------------------------------------------------------


def _summary_cell(st: dict[str, Any] | None) -> list[str]:
    if not st:
        return ["–", "–", "–", "0"]
    return [f"<b>{st['mean']:.2f}</b> ({st['mean_ci'][0]:.2f}–{st['mean_ci'][1]:.2f})", f"{st['share_ge2']:.0%}",
            f"{st['share_ge4']:.0%}", str(st["n"])]


def agent_grid_html(doc: dict[str, Any]) -> str:
    """The grid page: per setting (evidence × budget) the organism-balanced mean grade with its 95%
    bootstrap interval and the shares ≥ 2 / ≥ 4; a chart of mean grades per budget with one bar per
    evidence; the one-sided tests; the grades per organism. Grids written before the method axis
    (settings ``adl-i5``, no ``settings_info``) render the same way."""
    settings: list[str] = list(doc.get("settings", []))
    info = doc.get("settings_info") or {}
    summary = doc.get("summary", {})
    parsed = {k: _setting_info(k, info.get(k)) for k in settings}
    agents = list(dict.fromkeys(_evidence_label(kind, m) for kind, m, _ in parsed.values()))
    budgets = sorted({b for _, _, b in parsed.values() if b is not None})
    rows = []
    for k in settings:
        kind, method, budget = parsed[k]
        rows.append([f"<code>{esc(k)}</code>", esc(_evidence_label(kind, method)), esc(budget),
                     *_summary_cell((summary.get(k) or {}).get("overall"))])
    series = []
    for a in agents:
        vals = []
        for b in budgets:
            key = next((k for k, (kind, m, bb) in parsed.items() if bb == b and _evidence_label(kind, m) == a), None)
            vals.append(((summary.get(key) or {}).get("overall") or {}).get("mean", 0.0) if key else 0.0)
        series.append((a, vals))
    chart = grouped_bar_chart([f"i = {b}" for b in budgets], series, y_label="mean grade (1–5)", y_max=5,
                              title="agent grid: mean grade per budget and evidence") if budgets else ""
    tests = [[esc(k), fmt(v.get("diff"), 3), fmt(v.get("p_value"), 3), esc(v.get("method", v.get("error", "")))]
             for k, v in doc.get("tests", {}).items()]
    per = [[esc(org), *[esc(", ".join(f"{g:.1f}" for g in (cells.get(k) or {}).get("grades", []))) for k in settings]]
           for org, cells in doc.get("cells", {}).items()]
    methods = doc.get("methods") or sorted({m for _, m, _ in parsed.values() if m})
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>difflens agent grid</title>"
            f"<style>{CSS}</style></head><body><main style=\"padding:24px\"><h1>Agent grid</h1>"
            f"<p class=\"sub\">{len(doc.get('organisms', []))} organisms × {len(settings)} settings × "
            f"{doc.get('runs')} runs; grades 1–5 (paper Fig. 4). Evidence the interpretability agent started "
            f"from: {esc(', '.join(methods) or 'adl')}; the blackbox agent sees none. A missing bar: that "
            f"setting was not run.</p><div class=\"chartrow\">{chart}</div>"
            + html_table(["setting", "evidence", "budget", "mean grade (95% CI)", "≥ 2", "≥ 4", "runs"], rows,
                         "num compact")
            + "<h2>One-sided tests</h2><p class=\"muted small\">Each method's agent against the blackbox agent "
              "(the paper's pairs of budgets), and each other method's agent against the ADL agent at the "
              "same budget; organism-balanced.</p>"
            + html_table(["hypothesis", "difference of means", "p (one-sided)", "method"], tests, "num compact")
            + "<h2>Per organism</h2>" + html_table(["organism", *[esc(k) for k in settings]], per, "num compact")
            + "<footer>Generated by difflens. Self-contained.</footer></main></body></html>\n")


def render_agent_grid(out_dir: str | Path) -> Path:
    """Write ``OUT/agents/report.html`` from ``OUT/agents/grid.json`` (:func:`agent_grid_html`)."""
    out = Path(out_dir)
    path = out / "report.html"
    atomic_write_text(path, agent_grid_html(read_json(out / "grid.json")))
    return path
