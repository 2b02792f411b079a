"""The report's sections for the diffing methods beside ADL (issue 20): diff mining, per-token KL and
activation differences, logit-difference amplification — each method's own output beside its
baseline (one model alone) and its control (a pair without a narrow finetune), with the relevance
grader's verdicts where the run was evaluated, and a comparison table of all methods at the top.

Reads what :func:`.gather.gather_methods` collected; every model string is HTML-escaped here.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

from .charts import bar_chart, interval_chart, line_chart
from .gather import METHOD_ORDER, MethodPart, MethodsData
from .text import esc, fmt, hint_html, html_table, show_token, tok_html

__all__ = ["methods_section", "methods_toc", "comparison_table", "verdict_chip"]

ROLE_BADGE = {"method": "", "baseline": " <span class='ctl base'>baseline</span>",
              "control": " <span class='ctl'>control</span>"}
TITLES = {"adl": "Activation Difference Lens", "mining": "Diff mining", "kl": "Per-token KL and activation differences",
          "amplify": "Logit-difference amplification"}
KL_STATS = {"kl": "KL(P_ft ‖ P_base), nats", "norm": "‖h_ft − h_base‖", "cos": "1 − cos(h_ft, h_base)",
            "ent": "H(P_ft), nats"}
SAMPLES_PER_CELL = 3


# ---------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------
def verdict_chip(tok: str, verdict: bool | None) -> str:
    """A token chip: highlighted when the relevance grader judged it relevant, dimmed when not, plain
    when it was not graded."""
    cls, title = {True: ("sel", "relevant"), False: ("dim", "not relevant"), None: ("", "not graded")}[verdict]
    return (f'<span class="chip {cls} inline" title="{esc(title)}: {esc(repr(tok))}">'
            f'<span class="tok">{tok_html(tok)}</span></span>')


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _missing(items: Sequence[str]) -> str:
    if not items:
        return ""
    lis = "".join(f"<li>{hint_html(m)}</li>" for m in items)
    return f'<div class="empty"><b>Not computed</b><ul class="missing">{lis}</ul></div>'


def _skipped(me: Any) -> str:
    if me is None:
        return ""
    # a part the method has nothing for (amplification has no tokens, mining no texts) is not a gap
    return "".join(f'<p class="small"><span class="badge part">not graded</span> {esc(part)}: {esc(why)}</p>'
                   for part, why in sorted(me.skipped.items())
                   if not why.startswith("the method surfaces"))


def _error(msg: str) -> str:
    return f'<div class="error"><b>Could not read this artifact.</b> {esc(msg)}</div>'


def _cos(x: Any) -> str:
    """A cosine similarity at a fixed 3 decimals (0.434 / 0.499 / 0.012, not 0.0124)."""
    return "–" if x is None else f"{float(x):.3f}"


def _rel_cell(n: dict[str, Any]) -> str:
    """The method's relevance, bold, with ▲ where it clears both its baseline and its control."""
    r = n.get("relevance")
    if r is None:
        return "–"
    others = [v for v in (n.get("baseline"), n.get("control")) if v is not None]
    up = ' <span class="up" title="above its baseline and its control">▲</span>' if others and r > max(others) else ""
    return f"<b>{_pct(r)}</b>{up}"


def comparison_cells(n: dict[str, Any]) -> list[str]:
    """relevance (max, mean), baseline, control, similarity (method / baseline / control),
    identification rank, seconds, forward tokens — the columns of :data:`COMPARISON_HEAD`."""
    sim = n.get("similarity") or {}
    rank = n.get("rank")
    ident = "–" if rank is None else f"<b>{esc(rank)}</b> / {esc(n.get('n_candidates', '?'))}"
    ft = n.get("forward_tokens")
    return [_rel_cell(n), _pct(n.get("relevance_mean")), _pct(n.get("baseline")), _pct(n.get("control")),
            f"{_cos(sim.get('method'))} / {_cos(sim.get('baseline'))} / {_cos(sim.get('control'))}", ident,
            "–" if n.get("seconds") is None else fmt(float(n["seconds"]), 3),
            "–" if not ft else f"{float(ft):,.0f}"]


COMPARISON_HEAD = ["relevance % (max)", "mean", "baseline %", "control %", "similarity to D_ft<br>"
                   "<span class='muted small'>method / baseline / control</span>", "identification rank", "seconds",
                   "forward tokens"]


def comparison_table(evals: dict[str, Any], anchors: dict[str, str] | None = None) -> str:
    order = [m for m in ("adl", *METHOD_ORDER) if m in evals] + [m for m in evals if m not in ("adl", *METHOD_ORDER)]
    rows = []
    for m in order:
        me = evals[m]
        name = esc(TITLES.get(m, me.title or m))
        if anchors and m in anchors:
            name = f'<a href="#{anchors[m]}">{name}</a>'
        rows.append([f"{name}<br><span class='muted small'>{esc(me.title)} · {esc(me.dataset)}</span>",
                     *comparison_cells(me.numbers())])
    return ('<p class="muted small">Every method graded by the same graders (<code>RUN/eval/summary.json</code>, '
            '<code>methods</code>): the share of its top-20 tokens the relevance grader ties to the objective (the '
            'best list of each role; max over ADL\'s positions, mean beside it), beside its baseline (one model '
            'alone) and its control (a pair without a narrow finetune); the mean cosine similarity of its texts to '
            'D_ft; the rank of the true objective among the candidate descriptions from its own evidence; and what '
            'computing it cost. ▲: above both its baseline and its control.</p>'
            + html_table(["method", *COMPARISON_HEAD], rows, "num compact methods"))


# ---------------------------------------------------------------------------------------------
# ranked token lists beside their baseline and control, with the grader's verdicts
# ---------------------------------------------------------------------------------------------
def _graded(me: Any, name: str, group: str) -> tuple[list[tuple[str, bool | None]], float | None]:
    """The list ``name`` (``group``) as graded: [(token, verdict)] and its relevance %; ([], None)
    when the evaluation did not grade it."""
    if me is None or name not in me.relevance:
        return [], None
    for lr in me.relevance[name].lists:
        if lr.group == group:
            return [(t, bool(v)) for t, v in lr.tokens], lr.relevance
    return [], None


def _columns(part: MethodPart, me: Any) -> list[dict[str, Any]]:
    """One column per token list: {name, role, tokens: [(token, verdict | None)], relevance, graded}."""
    ev = part.evidence.value
    cols = []
    for role in ("method", "baseline", "control"):
        for tl in ev.lists(role):
            graded, rel = _graded(me, tl.name, tl.group)
            toks = graded if graded else [(t, None) for t in tl.tokens]
            cols.append({"name": tl.name, "role": role, "tokens": toks, "relevance": rel, "graded": bool(graded),
                         "stale": bool(graded) and [t for t, _ in graded] != list(tl.tokens)})
    return cols


def _col_head(c: dict[str, Any]) -> str:
    rel = (f'<br><span class="relv">{c["relevance"]:.0f}% relevant</span>' if c["relevance"] is not None
           else '<br><span class="muted small">not graded</span>')
    stale = (' <span class="badge part" title="the artifact changed after the evaluation: these are the tokens '
             'that were graded">graded earlier</span>') if c["stale"] else ""
    return f"{esc(c['name'])}{ROLE_BADGE[c['role']]}{rel}{stale}"


def _ranked_table(cols: list[dict[str, Any]], extra_head: Sequence[str] = (),
                  extra: Any = None) -> str:
    """Rank × list: each list's i-th token (chip with verdict); ``extra(i, token)`` gives cells after
    the method's own column (e.g. diff mining's statistics of that token)."""
    if not cols:
        return '<p class="muted">This method surfaced no tokens.</p>'
    n = max(len(c["tokens"]) for c in cols)
    head = ["#"]
    for k, c in enumerate(cols):
        head.append(_col_head(c))
        if k == 0 and c["role"] == "method":
            head += list(extra_head)
    rows = []
    for i in range(n):
        row = [str(i + 1)]
        for k, c in enumerate(cols):
            if i < len(c["tokens"]):
                tok, v = c["tokens"][i]
                row.append(verdict_chip(tok, v))
            else:
                tok = None
                row.append("")
            if k == 0 and c["role"] == "method" and extra_head:
                row += extra(i, tok) if tok is not None else [""] * len(extra_head)
        rows.append(row)
    return html_table(head, rows, "compact ranked")


def _legend(graded: bool) -> str:
    if graded:
        return (f'<p class="muted small">Verdicts of the run\'s relevance grader: {verdict_chip(" cake", True)} '
                f'relevant to the objective, {verdict_chip(" the", False)} not.</p>')
    return ('<p class="muted small">Not graded yet: run <code>difflens evaluate RUN</code> to see which tokens the '
            'relevance grader ties to the objective.</p>')


# ---------------------------------------------------------------------------------------------
# diff mining
# ---------------------------------------------------------------------------------------------
def _mining(part: MethodPart, me: Any) -> str:
    res = part.result.value or {}
    ranks = res.get("rankings") or {}
    top = ranks.get("top_k") or []
    cols = _columns(part, me)

    def stats(i: int, tok: str) -> list[str]:
        e = top[i] if i < len(top) and top[i].get("token") == tok else next((x for x in top if x.get("token") == tok),
                                                                            None)
        if e is None:
            return ["", "", ""]
        return [f'<span class="numv">{100 * e["top_k_fraction"]:.2f}%</span>',
                f'<span class="numv">{100 * e["positive_fraction"]:.1f}%</span>',
                f'<span class="numv">{e["mean_diff"]:+.3f}</span>']

    where = "final logits" if res.get("layer") is None else f"logit lens at layer {res['layer']}"
    head = (f'<p class="muted small">At each of N = {esc(res.get("n_samples", "?"))} samples × T = '
            f'{esc(res.get("tokens", "?"))} positions ({esc(where)}), the logit difference ft − base; per '
            f'vocabulary token how often it is in the top K = {esc(res.get("top_k", "?"))} of the difference '
            '(<b>top-K fraction</b>: share of positions), the share of positions where its difference is '
            '<b>positive</b>, and its <b>mean Δ</b> (logits). Ranked by the top-K fraction, beside the finetuned '
            "model's own top-K occurrence (baseline: what the finetuned model says anyway) and the same ranking on "
            'a pair with small random weight noise instead of a finetune (control).</p>')
    table = _ranked_table(cols, ["top-K fraction", "positive", "mean Δ"], stats)
    others = []
    for key, label in (("positive", "by positive fraction"), ("mean_diff", "by mean Δ"),
                       ("bottom_k", "bottom-K (made less likely)"), ("base_top_k", "base alone: top-K occurrence")):
        toks = [e.get("token", "") for e in (ranks.get(key) or [])[:20]]
        if toks:
            others.append(f"<div><b>{esc(label)}</b> " + " ".join(verdict_chip(t, None) for t in toks) + "</div>")
    more = f"<details><summary>other rankings</summary>{''.join(others)}</details>" if others else ""
    return head + _legend(any(c["graded"] for c in cols)) + table + more


# ---------------------------------------------------------------------------------------------
# per-token KL
# ---------------------------------------------------------------------------------------------
_SUP = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _decade(edge: float) -> str:
    lg = math.log10(edge) if edge > 0 else float("nan")
    if not math.isnan(lg) and abs(lg - round(lg)) < 1e-6:
        return "10" + str(int(round(lg))).translate(_SUP)
    return ""


def _hist_bins(h: dict[str, Any]) -> tuple[list[int], list[str], list[str]]:
    """A histogram's counts trimmed to its non-empty range (one empty bin either side), the bin
    names (tooltips) and the axis labels (decades)."""
    edges, counts = list(h.get("edges") or []), list(h.get("counts") or [])
    n = len(edges) - 1
    if n < 1 or len(counts) != n + 2:
        return [], [], []
    names = [f"< {fmt(edges[0], 2)}"] + [f"{fmt(edges[i], 2)} – {fmt(edges[i + 1], 2)}" for i in range(n)]
    names.append(f"≥ {fmt(edges[-1], 2)}")
    ticks = ["<"] + [_decade(edges[i]) for i in range(n)] + ["≥"]
    nz = [i for i, c in enumerate(counts) if c]
    lo, hi = (max(0, nz[0] - 1), min(len(counts) - 1, nz[-1] + 1)) if nz else (0, len(counts) - 1)
    counts, names, ticks = counts[lo:hi + 1], names[lo:hi + 1], ticks[lo:hi + 1]
    if not any(ticks[1:-1]) and ticks:  # within one decade: label the ends
        ticks = [fmt(edges[max(0, lo - 1)], 2)] + [""] * (len(ticks) - 2) + [names[-1].split("–")[-1].strip()]
    return counts, names, ticks


def _figure(title: str, svg: str) -> str:
    """A chart with its title written above it."""
    return f'<figure class="fig"><figcaption>{esc(title)}</figcaption>{svg}</figure>' if svg else ""


def _hist_chart(h: dict[str, Any], *, title: str, x_label: str, y_label: str, color: str) -> str:
    counts, names, ticks = _hist_bins(h)
    if not counts:
        return ""
    return _figure(title, bar_chart([float(c) for c in counts], labels=names, tick_labels=ticks, x_label=x_label,
                                    y_label=y_label, width=420, height=200, bar_color=color, title=title))


def _shares(h: dict[str, Any]) -> list[float]:
    c = list(h.get("counts") or [])
    tot = sum(c) or 1
    return [100.0 * x / tot for x in c]


def _kl_stats(res: dict[str, Any], ctl: dict[str, Any] | None, skip: int) -> str:
    stats = res.get("stats") or {}
    cstats = (ctl or {}).get("stats") or {}
    rows = []
    for s, label in KL_STATS.items():
        if s not in stats:
            continue
        v = stats[s]
        role = ROLE_BADGE["baseline"] if s in (res.get("baselines") or ["ent"]) else ""
        cells = [f"{esc(label)}{role}", f"<b>{esc(fmt(v.get('mean'), 4))}</b>", esc(fmt(v.get("std"), 4)),
                 esc(fmt(v.get("max"), 4))]
        if ctl is not None:
            c = cstats.get(s) or {}
            ratio = (v["mean"] / c["mean"]) if c.get("mean") else None
            cells += [esc(fmt(c.get("mean"), 4)), esc(fmt(c.get("max"), 4)),
                      "–" if ratio is None else f"{ratio:,.1f}×"]
        rows.append(cells)
    head = ["statistic (per token)", "mean", "std", "max"]
    if ctl is not None:
        head += ["noise control: mean", "max", "mean ÷ control"]
    return (html_table(head, rows, "num compact lead") +
            f'<p class="muted small">Over the {esc(fmt(res.get("n_positions")))} positions at index ≥ {esc(skip)} '
            f'of {esc(res.get("n_samples", "?"))} samples × {esc(res.get("tokens", "?"))} tokens (the first '
            f'{esc(skip)} left out: the attention sink). H(P_ft) is the baseline from the finetuned model alone: '
            'where it is merely uncertain. The noise control is the same pass on the base model against itself '
            'plus small random weight noise: KL a change of that size gives without a narrow finetune.</p>')


def _snippet(ex: Any, chars: int = 90) -> str:
    """One context, the marked token in a <mark> (visible whitespace), everything escaped."""
    i = ex.index
    before, tok, after = "".join(ex.tokens[:i]), ex.tokens[i], "".join(ex.tokens[i + 1:])
    before = ("…" + before[-chars:]) if len(before) > chars else before
    after = (after[:chars] + "…") if len(after) > chars else after
    flat = lambda s: esc(s).replace("\n", "<span class=\"ws\">↵</span> ")  # noqa: E731
    return f'<span class="ctx">{flat(before)}<mark class="tok">{tok_html(tok)}</mark>{flat(after)}</span>'


def _marked_text(marked: str) -> str:
    """A context given as text with its token between [[ and ]] (the evidence's form), as HTML."""
    before, sep, rest = marked.partition("[[")
    tok, sep2, after = rest.partition("]]") if sep else ("", "", "")  # a token is short: its first ]] ends it
    if not sep or not sep2:
        return f'<span class="ctx">{esc(marked)}</span>'
    return f'<span class="ctx">{esc(before)}<mark class="tok">{tok_html(tok)}</mark>{esc(after)}</span>'


def _contexts_table(examples: Sequence[Any], stat: str) -> str:
    base = stat.rsplit("_", 1)[0]
    rows = []
    for ex in examples:
        val = ex.values.get(base, [])
        here = val[ex.position] if 0 <= ex.position < len(val) else ex.value
        rows.append([str(ex.rank + 1), f'<span class="numv">{esc(fmt(ex.value, 3))}</span>', esc(ex.sample),
                     f'{_snippet(ex)} <span class="muted small">(@{esc(ex.position)}: {esc(fmt(here, 3))})</span>'])
    return html_table(["#", stat.replace("_", " "), "sample", "context (marked: the token where it peaks)"], rows,
                      "compact contexts")


def heatmap(ex: Any, stat: str = "kl", lead: int = 24) -> str:
    """One context, each token of the window coloured by its ``stat`` value (darker: larger; scale up to
    the sample's maximum), the peak token marked; the context before the window in grey."""
    vals = ex.values.get(stat) or []
    vmax = max([ex.value if ex.stat.startswith(stat + "_") else 0.0, *(v for v in vals[1:] if v == v), 1e-12])
    first = max(0, ex.start - lead)
    out = ['<div class="heat">']
    if first > 0:
        out.append('<span class="muted">…</span>')
    for i in range(first, len(ex.tokens)):
        tok = ex.tokens[i]
        body = "".join('<span class="ws">↵</span>\n' if ch == "\n" else esc(ch) for ch in tok) or "∅"
        p = i - ex.start
        if p < 0 or p >= len(vals):
            out.append(f'<span class="pre">{body}</span>')
            continue
        v = float(vals[p])
        a = 0.0 if not v > 0 else min(1.0, v / vmax) ** 0.5 * 0.85
        style = f"background:rgba(194,65,12,{a:.2f})" + (";color:#fff" if a > 0.6 else "")
        title = f"{show_token(tok)} · {stat} = {fmt(v, 4)}"
        tag = "mark" if i == ex.index else "span"
        cls = ' class="peak"' if i == ex.index else ""
        out.append(f'<{tag}{cls} style="{style}" title="{esc(title)}">{body}</{tag}>')
    out.append("</div>")
    legend = (f'<div class="heatlegend"><span>0</span><span class="ramp"></span><span>{esc(fmt(vmax, 3))} '
              f'{esc("nats" if stat in ("kl", "ent") else "")}</span><span class="muted small">sample '
              f'{esc(ex.sample)} · grey: context before the window</span></div>')
    return "".join(out) + legend


def _kl(part: MethodPart, me: Any) -> str:
    res = part.result.value or {}
    ctl = part.control.value if part.control.ok else None
    skip = int(res.get("skip_positions", 1) or 0)
    stats = res.get("stats") or {}
    out = [f'<p class="muted small">At every position: KL(P_ft ‖ P_base) of the two models\' next-token '
           f'distributions over the full vocabulary, and at layer {esc(res.get("layer", "?"))} the activation '
           'difference\'s norm and cosine distance; the tokens where KL peaks beside those where the finetuned '
           "model's own entropy peaks (baseline) and where KL peaks on the noise pair (control).</p>",
           _kl_stats(res, ctl, skip)]
    kl = stats.get("kl")
    charts = []
    if kl:
        charts.append(_hist_chart(kl.get("tokens") or {}, title="per-token KL histogram", x_label="KL (nats), log bins",
                                  y_label="tokens", color="#c2410c"))
        charts.append(_hist_chart(kl.get("sample_maxes") or {}, title="per-sample max KL histogram",
                                  x_label="max KL of a sample (nats)", y_label="samples", color="#9a3412"))
        ckl = ((ctl or {}).get("stats") or {}).get("kl")
        if ckl and (ckl.get("tokens") or {}).get("edges") == (kl.get("tokens") or {}).get("edges"):
            a, b = _shares(kl["tokens"]), _shares(ckl["tokens"])
            nz = [i for i, (x, y) in enumerate(zip(a, b)) if x or y]
            lo, hi = (max(0, nz[0] - 1), min(len(a) - 1, nz[-1] + 1)) if nz else (0, len(a) - 1)
            # the bins' names and decade labels, untrimmed (every bin counted once)
            _, names, ticks = _hist_bins({"edges": kl["tokens"]["edges"], "counts": [1] * len(a)})
            title = "per-token KL, this pair vs the noise control"
            charts.append(_figure(title, line_chart(
                [("this pair", a[lo:hi + 1]), ("noise control", b[lo:hi + 1])], labels=names[lo:hi + 1],
                tick_labels=ticks[lo:hi + 1], x_label="KL (nats), log bins", y_label="% of tokens", width=420,
                height=200, title=title)))
        pos = kl.get("by_position") or []
        if pos:
            series = [("KL, this pair", pos)]
            cpos = (ckl or {}).get("by_position") or []
            if cpos and len(cpos) == len(pos):
                series.append(("KL, noise control", cpos))
            labels = [str(j) for j in range(len(pos))]
            ticks = [str(j) if j % 8 == 0 else "" for j in range(len(pos))]
            charts.append(_figure("mean KL per position", line_chart(
                series, labels=labels, tick_labels=ticks, x_label="position j in the window", y_label="mean KL (nats)",
                width=420, height=200, title="mean KL per position")))
    out.append(f'<div class="chartrow">{"".join(c for c in charts if c)}</div>')
    cols = _columns(part, me)
    out.append("<h4>Tokens where KL peaks</h4>" + _legend(any(c["graded"] for c in cols)) + _ranked_table(cols))
    out.append("<h4>Top contexts</h4>")
    if part.contexts.ok:
        ctx = part.contexts.value
        top = ctx.get("kl_max") or []
        if top:
            out.append('<p class="muted small">The sample with the largest per-token KL, each token coloured by its '
                       'KL (hover for the value); the peak is outlined.</p>' + heatmap(top[0], "kl"))
            out.append('<p class="muted small">Samples ranked by their largest per-token KL; the token where it peaks '
                       'is highlighted, and the KL there. Paged from the examples store '
                       f'(<code>{esc(res.get("store", "kl.sqlite"))}</code>), which holds every sample.</p>'
                       + _contexts_table(top, "kl_max"))
        extra = []
        for stat, label in (("norm_max", "by the largest ‖h_ft − h_base‖"),
                            ("ent_max", "by the finetuned model's largest entropy (baseline)")):
            if ctx.get(stat):
                extra.append(f"<h5>{esc(label)}</h5>" + _contexts_table(ctx[stat], stat))
        if part.control_contexts.ok and part.control_contexts.value.get("kl_max"):
            extra.append("<h5>noise control: by the largest KL</h5>"
                         + _contexts_table(part.control_contexts.value["kl_max"], "kl_max"))
        elif part.control_contexts.error:
            extra.append(_error(part.control_contexts.error))
        if extra:
            out.append(f"<details><summary>more contexts: activation differences, the entropy baseline, the "
                       f"noise control</summary>{''.join(extra)}</details>")
    else:
        if part.contexts.error:
            out.append(_error(part.contexts.error))
        ev = part.evidence.value
        if ev.contexts:
            rows = [[str(i + 1), esc(fmt(c.get("value"), 3)), esc(c.get("sample", "")), _marked_text(c.get("marked", ""))]
                    for i, c in enumerate(ev.contexts)]
            out.append(html_table(["#", esc(ev.contexts[0].get("stat", "")), "sample", "context"], rows,
                                  "compact contexts"))
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# logit-difference amplification
# ---------------------------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _chosen_beta(res: dict[str, Any]) -> float | None:
    return _num(res.get("chosen_beta", res.get("beta")))


def _grid(res: dict[str, Any]) -> str:
    """The β grid (``AmplifyResult.grid``: BetaVerdict per β) with each β's coherence verdict."""
    grid = res.get("grid")
    chosen = _chosen_beta(res)
    if not isinstance(grid, list) or not grid:
        return '<p class="muted small">No β grid recorded.</p>'
    prompts = res.get("threshold_prompts") or []
    rows = []
    for g in grid:
        g = g if isinstance(g, dict) else {"beta": g}
        b = _num(g.get("beta"))
        beta = esc(fmt(b) if b is not None else g.get("beta"))
        if chosen is not None and b is not None and abs(b - chosen) < 1e-9:
            beta = f"<b>{beta}</b> <span class='badge scale'>chosen</span>"
        nc, need, ns = g.get("n_coherent"), g.get("need"), g.get("n_samples")
        if isinstance(nc, list):
            per = ", ".join(f"{esc(c)}/{esc(ns)}" + (f" (≥ {esc(need[i])})" if isinstance(need, list) and i < len(need)
                                                     else "") for i, c in enumerate(nc))
        else:
            per = esc("" if nc is None else nc)
        ok = g.get("coherent")
        verdict = ('<span class="badge ok">coherent</span>' if ok else '<span class="badge no">incoherent</span>'
                   ) if isinstance(ok, bool) else esc("" if ok is None else ok)
        rows.append([beta, per, verdict])
    rates = res.get("unamplified_pass_rates") or []
    bar = ""
    if prompts:
        bar = (f'<p class="muted small">Coherent samples per threshold prompt ({esc(len(prompts))} prompts'
               + (", whose unamplified samples pass " + ", ".join(f"{100 * float(r):.0f}%" for r in rates) if rates
                  else "") + f'; grader {esc(res.get("grader", "?"))}, T = {esc(fmt(res.get("search_temperature")))})'
               "; a β is coherent when most prompts reach their bar.</p>")
    warn = ("" if res.get("any_coherent", True) else
            '<div class="flag">⚠ No β of the grid was coherent: β = 0 was chosen, the "amplified" samples are the '
            "finetuned model's own.</div>")
    return bar + html_table(["β", "coherent samples per threshold prompt (bar)", "verdict"], rows, "compact grid") + warn


def _amp_similarity(data: MethodsData) -> str:
    rows, chart_rows = [], []
    for m in ("amplify", "adl"):
        me = data.evals.get(m)
        if me is None:
            continue
        for name, st in me.similarity.items():
            role = me.similarity_roles.get(name, "")
            rows.append([f"{esc(name)}{ROLE_BADGE.get(role, '')}", esc(TITLES.get(m, m)), f"<b>{esc(fmt(st.mean, 3))}</b>"
                         if role == "method" else esc(fmt(st.mean, 3)), esc(fmt(st.std, 3)), esc(st.n)])
            chart_rows.append((name[:34], st.mean, st.std))
    if not rows:
        return ""
    ref = None
    if data.summary is not None:
        for le in data.summary.layers():
            fs = (le.steering_similarity or {}).get("ft_self")
            if fs is not None:
                ref = (fs.mean, fs.std, "D_ft self-similarity ± std")
                break
    chart = interval_chart(chart_rows, x_label="cosine similarity to D_ft", width=560, ref=ref,
                           title="similarity of each text set to D_ft")
    return ("<h4>Similarity to D_ft</h4><p class=\"muted small\">Mean pairwise cosine similarity of each text set's "
            "embeddings to the finetuning data's (the embedder of steering similarity); the shaded band is D_ft's "
            "similarity to itself.</p>"
            + f'<div class="chartrow">{chart}<div>'
            + html_table(["texts", "from", "mean cos", "std", "pairs"], rows, "num compact lead") + "</div></div>")


def _by_prompt(ts: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    prompts = ts.prompts if len(ts.prompts) == len(ts.texts) else [""] * len(ts.texts)
    for p, t in zip(prompts, ts.texts):
        out[p].append(t)
    return out


def _amp_samples(part: MethodPart, data: MethodsData) -> str:
    ev = part.evidence.value
    sets = [(ts.name, ts.role, _by_prompt(ts)) for ts in ev.texts if ts.texts]
    adl = data.adl.value if data.adl.ok else None
    if adl is not None:
        for ts in adl.texts:
            if ts.texts and ts.name != "unsteered finetuned":  # the finetuned model's own samples are β = 0's
                label = "δ̄-steered (ADL)" if ts.role == "method" else f"{ts.name} (ADL)"
                sets.append((label, ts.role, _by_prompt(ts)))
    if not sets:
        return '<p class="muted">No samples.</p>'
    prompts = list(sets[0][2])  # the amplified samples' prompts (the others are shown on the same prompts)
    cards = []
    for k, p in enumerate(prompts):
        cols = [(name, role, by.get(p, [])) for name, role, by in sets]
        cols = [c for c in cols if c[2]]
        head = "".join(f"<th>{esc(name)}{ROLE_BADGE[role] if role != 'method' else ''}</th>" for name, role, _ in cols)
        n = min(SAMPLES_PER_CELL, max(len(t) for _, _, t in cols))
        body = []
        for i in range(n):
            cells = []
            for name, role, texts in cols:
                cls = {"method": "gen steered", "baseline": "gen", "control": "gen control"}[role]
                cells.append(f'<td><div class="{cls}">{esc(texts[i])}</div></td>' if i < len(texts)
                             else '<td><span class="muted">—</span></td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        more = [f"{esc(name)}: {len(t) - n} more" for name, _, t in cols if len(t) > n]
        note = f'<p class="muted small">not shown: {"; ".join(more)}</p>' if more else ""
        card = (f'<div class="prompt"><div class="ptext"><span class="plabel">prompt</span> {esc(p)}</div>'
                f'<table class="sbs"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{note}</div>')
        cards.append(card)
    shown, rest = cards[:2], cards[2:]
    more = (f'<details><summary>{len(rest)} more prompts</summary>{"".join(rest)}</details>' if rest else "")
    return "".join(shown) + more


def _amplify(part: MethodPart, data: MethodsData) -> str:
    res = part.result.value or {}
    beta = _chosen_beta(res)
    out = [f'<p class="muted small">Sampling from logits_ft + β · (logits_ft − logits_base), both models stepping '
           f'together; β chosen on a grid as the largest with coherent samples (the same coherence bar as '
           f'steering): <b>β = {esc(fmt(beta))}</b>; {esc(res.get("samples_per_prompt", "?"))} samples per prompt '
           f'at T = {esc(fmt(res.get("temperature")))}, up to {esc(res.get("max_new_tokens", "?"))} new tokens. '
           'Beside the amplified samples: the finetuned model at β = 0 and the base model on the same prompts and '
           'seeds (baselines), the run\'s δ̄-steered and random-direction samples (ADL), and the noise pair '
           'amplified (control).</p>',
           "<h4>β grid</h4>", _grid(res)]
    sim = _amp_similarity(data)
    if sim:
        out.append(sim)
    out.append("<h4>Samples</h4>" + _amp_samples(part, data))
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# the section
# ---------------------------------------------------------------------------------------------
def _part_section(part: MethodPart, data: MethodsData) -> str:
    title = TITLES.get(part.name, part.name)
    me = data.evals.get(part.name)
    head = f'<h3 id="{part.anchor}">{esc(title)} <span class="muted small">· {esc(part.dataset)}</span></h3>'
    if not part.evidence.ok:
        return head + _error(part.evidence.error or "no evidence")
    ev = part.evidence.value
    res = part.result.value or {}
    facts = [esc(ev.title)]
    if ev.cost.get("seconds") is not None:
        facts.append(f"{esc(fmt(float(ev.cost['seconds']), 3))} s")
    if ev.cost.get("forward_tokens"):
        facts.append(f"{float(ev.cost['forward_tokens']):,.0f} forward tokens")
    if res.get("fingerprint"):
        facts.append(f"fingerprint <code>{esc(res['fingerprint'])}</code>")
    body = {"mining": lambda: _mining(part, me), "kl": lambda: _kl(part, me),
            "amplify": lambda: _amplify(part, data)}.get(part.name)
    try:
        inner = body() if body else ""
    except Exception as e:  # noqa: BLE001 - one malformed artifact must not break the page
        inner = _error(f"{type(e).__name__}: {e}")
    if part.control.error:
        inner += _error(part.control.error)
    inner += _topics(me)
    return (f'<div class="card method">{head}<p class="small">{" · ".join(facts)}</p>{_skipped(me)}{inner}'
            f"{_missing(ev.missing)}</div>")


def _topics(me: Any) -> str:
    """The NMF topic groups of the method's token list (from the evaluation), one line per group."""
    groups = getattr(me, "topics", None) or []
    if not groups:
        return ""
    items = []
    for g in groups:
        chips = " ".join(f'<span class="tok">{esc(t)}</span>' for t in g.tokens)
        items.append(f'<li>{chips} <span class="muted small">({len(g.tokens)} tokens)</span></li>')
    return ('<p class="small"><b>Topic groups</b> of the top tokens (NMF over their embedding similarities; '
            f'punctuation and pieces without letters left out):</p><ul class="small">{"".join(items)}</ul>')


def methods_section(data: MethodsData, adl_anchor: str | None = None) -> str:
    """The diffing methods beside ADL: the comparison table (when the run was evaluated), then one
    card per computed method, then what is not computed and how to compute it. ``adl_anchor``: where
    the table's ADL row links to (ADL keeps its own sections)."""
    out = []
    anchors = {p.name: p.anchor for p in data.parts}
    if adl_anchor:
        anchors["adl"] = adl_anchor
    if data.eval_error:
        out.append(_error(f"eval/summary.json: {data.eval_error}"))
    if data.evals:
        out.append('<h3 id="methods-comparison">Methods compared</h3>' + comparison_table(data.evals, anchors))
    elif data.parts:
        out.append('<p class="muted small">Not evaluated yet: run <code>difflens evaluate RUN</code> for the '
                   "comparison table and the relevance grader's verdicts.</p>")
    out += [_part_section(p, data) for p in data.parts]
    if data.absent:
        lis = "".join(f"<li>{esc(TITLES[m])}: run <code>{esc(cmd)}</code></li>" for m, cmd in data.absent.items())
        out.append(f'<div class="empty"><b>Methods not computed on this run</b><ul class="missing">{lis}</ul></div>')
    return "".join(out)


def methods_toc(data: MethodsData) -> str:
    items = ['<li><a href="#methods-comparison">Methods compared</a></li>'] if data.evals else []
    items += [f'<li><a href="#{p.anchor}">{esc(TITLES.get(p.name, p.name))}</a></li>' for p in data.parts]
    return f"<ul>{''.join(items)}</ul>" if items else ""
