"""The report's Agent section: per setting the grades with their intervals, and every episode as a
readable transcript (agent replies, tool calls with their cost, results folded), not raw JSON."""
from __future__ import annotations

from ..agent.records import Episode
from ..files import read_json
from ..rundir.layout import RunLayout
from .text import esc

__all__ = ["agent_section"]

_ROLE = {"system": "system prompt", "user": "to the agent", "assistant": "agent", "tool": "tool result"}


def _episode(ep: Episode, title: str) -> str:
    grade = "–" if ep.grade is None else f"{ep.grade:.2f}"
    head = (f"<summary><b>{esc(title)}</b> · {esc(ep.status)} · grade {esc(grade)} · {ep.turns_used} turns · "
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
        rows.append(f"<tr><td><code>{esc(key)}</code></td><td>{esc(s.get('runs'))}</td>"
                    f"<td>{esc(', '.join(f'{v} {k.replace(chr(95), chr(32))}' for k, v in (s.get('status') or {}).items()))}</td><td><b>{esc(round(st['mean'], 2)) if st else '–'}</b>"
                    f"{f' ({ci[0]:.2f}–{ci[1]:.2f})' if st else ''}</td>"
                    f"<td>{_pct(st.get('share_ge2'))}</td><td>{_pct(st.get('share_ge4'))}</td>"
                    f"<td>{esc(s.get('prompt_tokens', 0) + s.get('completion_tokens', 0))}</td></tr>")
    out.append('<p class="muted small">Grades 1–5 against the true objective with the rubric of the organism type '
               '(mean over repeated gradings); an episode without a final description counts as 1. Intervals: '
               '95% bootstrap over runs.</p>'
               '<table class="num compact"><thead><tr><th>setting</th><th>runs</th><th>status</th><th>mean grade '
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
