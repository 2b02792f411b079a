"""The report's Evaluation section: ``RUN/eval/summary.json`` as tables and plots, every number
beside its baseline or control (paper Fig. 2a, 2b, 7 and our identification)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..eval.summary import EvalSummary, LayerEval
from .charts import interval_chart, line_chart
from .text import esc, fmt, html_table, show_token

SOURCE_NAMES = {"delta": "δ̄ (difference)", "base": "h̄_base", "ft": "h̄_ft",
                "delta_via_base": "δ̄ via base model (control)", "random": "random vector (control)",
                "base_via_ft": "h̄_base via finetuned model (control)"}
SIM_NAMES = {"steered_vs_ft": "steered ↔ D_ft", "random_vs_ft": "random-direction steered ↔ D_ft (control)",
             "unsteered_vs_ft": "unsteered ↔ D_ft", "steered_vs_chat": "steered ↔ chat",
             "unsteered_vs_chat": "unsteered ↔ chat", "ft_self": "D_ft ↔ D_ft"}


_table = html_table


def _relevance(le: LayerEval) -> str:
    rel = le.relevance or {}
    out = []
    for method, title in (("patchscope", "Patchscope"), ("logit_lens", "Logit lens")):
        present = [(s, per[method]) for s, per in rel.items() if method in per]
        if not present:
            continue
        positions = sorted({j for _, r in present for j in r.positions})
        rows, series = [], []
        for src, r in present:
            by = dict(zip(r.positions, r.per_position))
            cells = [f"{by[j]:.0f}" if j in by else "–" for j in positions]
            rows.append([esc(SOURCE_NAMES.get(src, src)), *cells, f"<b>{r.max:.0f}</b>"])
            series.append((SOURCE_NAMES.get(src, src), [by.get(j, 0.0) for j in positions]))
        chart = line_chart(series, labels=[str(j) for j in positions], y_label="% relevant", y_min=0, y_max=100,
                           title=f"token relevance ({title}), {le.dataset} layer {le.layer}")
        table = _table(["source", *[f"j={j}" for j in positions], "max"], rows, "num compact")
        out.append(f"<h4>{title}: % of the top tokens relevant to the objective</h4>"
                   f'<div class="chartrow">{chart}<div>{table}</div></div>')
    delta = rel.get("delta", {}).get("patchscope")
    if delta is not None:
        items = []
        for j in delta.positions:
            toks = delta.tokens.get(str(j), [])
            chips = " ".join(f'<span class="chip {"sel" if ok else "dim"} inline"><span class="tok">{esc(show_token(t))}'
                             f'</span></span>' for t, ok in toks)
            items.append(f"<div><b>j={esc(j)}</b> {chips}</div>")
        out.append("<details><summary>δ̄ Patchscope tokens with the grader's verdicts (highlighted: relevant)"
                   f"</summary>{''.join(items)}</details>")
    return "".join(out)


def _similarity(le: LayerEval) -> str:
    sim = le.steering_similarity or {}
    order = [k for k in ("steered_vs_ft", "random_vs_ft", "unsteered_vs_ft", "steered_vs_chat", "unsteered_vs_chat")
             if k in sim]
    ref = sim.get("ft_self")
    chart = interval_chart([(SIM_NAMES[k], sim[k].mean, sim[k].std) for k in order], x_label="cosine similarity",
                           width=640,
                           ref=(ref.mean, ref.std, "D_ft self-similarity ± std") if ref else None,
                           title=f"steering similarity, {le.dataset} layer {le.layer}")
    rows = [[esc(SIM_NAMES.get(k, k)), fmt(s.mean, 3), fmt(s.std, 3), esc(s.n)] for k, s in sim.items()]
    table = _table(["texts compared", "mean cos", "std", "pairs"], rows, "num compact")
    per = le.steering_similarity_per_position or {}
    extra = ""
    if per:
        keys = [k for k in ("steered_vs_ft", "random_vs_ft", "steered_vs_chat") if any(k in d for d in per.values())]
        prow = [[f"j={esc(j)}", *[fmt(d[k].mean, 3) if k in d else "–" for k in keys]]
                for j, d in sorted(per.items(), key=lambda kv: int(kv[0]))]
        extra = "<h5>per steered position</h5>" + _table(["position", *[esc(SIM_NAMES[k]) for k in keys]], prow,
                                                         "num compact")
    return (f'<p class="muted small">Mean pairwise cosine similarity of sentence embeddings. The shaded band is '
            f'D_ft\'s similarity to itself (± std): how close "about the finetuning domain" gets. Steered texts '
            f'should sit above unsteered and random-direction ones.</p><div class="chartrow">{chart}<div>{table}'
            f'{extra}</div></div>')


def _causal(le: LayerEval) -> str:
    c = le.causal
    assert c is not None
    labels = [str(j) for j in c.positions]
    chart = line_chart([("D_ft", c.delta["ft"]), ("D_pt", c.delta["pt"])], labels=labels,
                       bands=[(c.random["ft"]["mean"], c.random["ft"]["std"], "random diffs, D_ft"),
                              (c.random["pt"]["mean"], c.random["pt"]["std"], "random diffs, D_pt")],
                       y_label="ΔCE (nats/token)", title=f"causal effect, {le.dataset} layer {le.layer}")
    rows = []
    for d, name in (("ft", "D_ft"), ("pt", "D_pt")):
        rows.append([name, *[f"{v:+.4f}" for v in c.delta[d]],
                     f"{c.random[d]['mean']:+.4f} ± {c.random[d]['std']:.4f}",
                     esc(c.n_texts.get(d, "?")), esc(c.n_tokens.get(d, "?"))])
    table = _table(["data", *[f"j={j}" for j in labels], f"random ({len(c.random_values.get('ft', []))})", "texts",
                    "tokens"], rows, "num compact")
    return ('<p class="muted small">ΔCE when the finetuned model\'s layer activation along δ̄_j is replaced by the '
            'base model\'s (paper eq. 1–2), at every position. Positive: the direction helps the finetuned model on '
            'that data. Bands: mean ± std over random differences of base activations on chat data.</p>'
            f'<div class="chartrow">{chart}<div>{table}</div></div>')


def _identification(le: LayerEval) -> str:
    i = le.identification
    assert i is not None
    top = sorted(i.adl_scores.items(), key=lambda kv: -kv[1])[:5]
    bb = sorted(i.blackbox_scores.items(), key=lambda kv: -kv[1])[:5]
    rows = [["ADL evidence (Patchscope tokens + steered samples)", f"<b>{esc(i.adl_rank)}</b> / {esc(i.n_candidates)}",
             esc(", ".join(f"{n} {s:.2f}" for n, s in top))],
            ["blackbox evidence (unsteered samples only)", f"<b>{esc(i.blackbox_rank)}</b> / {esc(i.n_candidates)}",
             esc(", ".join(f"{n} {s:.2f}" for n, s in bb))]]
    return (f'<p class="muted small">Rank of the true objective (<code>{esc(i.true)}</code>) among candidate '
            'descriptions by embedding similarity to the evidence; ties count against it. No LLM involved.</p>'
            + _table(["evidence", "rank", "most similar candidates"], rows, "compact"))


def _leakage(le: LayerEval) -> str:
    lk = le.leakage
    assert lk is not None
    rows = [["finetuned model", f"<b>{100 * lk.ft.share:.0f}%</b>", esc(lk.ft.n)]]
    if lk.base is not None:
        rows.append(["base model (control)", f"{100 * lk.base.share:.0f}%", esc(lk.base.n)])
    ex = "".join(f"<li><i>{esc(e['prompt'][:80])}</i> → {esc(e['text'][:200])} <span class=\"muted\">"
                 f"[{esc(', '.join(e['words'][:8]))}]</span></li>" for e in lk.ft.examples[:5])
    return (f'<p class="muted small">Share of unsteered answers to the steering prompts with ≥ {esc(lk.min_words)} '
            'distinct words the relevance grader ties to the objective. An organism that leaks is found by any '
            'blackbox probe; the base model\'s answers show what the prompts alone bring in.</p>'
            + _table(["answers of", "leaking", "n"], rows, "num compact")
            + (f"<details><summary>leaking answers of the finetuned model</summary><ul>{ex}</ul></details>" if ex else ""))


def _across_layers(dataset: str, layers: list[LayerEval]) -> str:
    """A sweep's overview: δ̄'s Patchscope relevance and steered-text similarity to D_ft per position,
    one line per layer."""
    rel = [(f"layer {le.layer}", le.relevance["delta"]["patchscope"]) for le in layers
           if le.relevance and "patchscope" in le.relevance.get("delta", {})]
    out = [f"<h3>{esc(dataset)} · across layers</h3>"]
    if rel:
        positions = sorted({j for _, r in rel for j in r.positions})
        series = [(name, [dict(zip(r.positions, r.per_position)).get(j, 0.0) for j in positions]) for name, r in rel]
        out.append(line_chart(series, labels=[str(j) for j in positions], y_label="% relevant", y_min=0, y_max=100,
                              title=f"δ̄ Patchscope relevance by position and layer, {dataset}"))
    sim = [(f"layer {le.layer}", le.steering_similarity_per_position) for le in layers
           if le.steering_similarity_per_position]
    if sim:
        positions = sorted({int(j) for _, d in sim for j in d})
        series = [(name, [d[str(j)]["steered_vs_ft"].mean if str(j) in d and "steered_vs_ft" in d[str(j)] else 0.0
                          for j in positions]) for name, d in sim]
        out.append(line_chart(series, labels=[str(j) for j in positions], y_label="steered ↔ D_ft (cos)",
                              title=f"steering similarity by position and layer, {dataset}"))
    return f'<div class="chartrow">{"".join(out)}</div>'


def evaluation_section(path: Path) -> str:
    """HTML for a summary file (errors shown in place, never raised)."""
    try:
        s = EvalSummary.model_validate_json(path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - a broken artifact must not break the report
        return f'<div class="card err">Could not read this artifact ({esc(type(e).__name__)}: {esc(str(e)[:300])}).</div>'
    head = []
    if s.ft_data:
        d = s.ft_data
        head.append(f"<p>D_ft: <b>{esc(d.get('name'))}</b> ({esc(d.get('n_texts'))} texts, {esc(d.get('source'))})"
                    + (f"; organism <code>{esc(s.organism)}</code>" if s.organism else "") + "</p>")
    if s.frequent_tokens:
        head.append(f'<p class="small">Most frequent D_ft tokens given to the relevance grader: '
                    f'{esc(", ".join(s.frequent_tokens[:30]))}{"…" if len(s.frequent_tokens) > 30 else ""}</p>')
    for part, why in sorted(s.skipped.items()):
        head.append(f'<p class="small"><span class="badge part">skipped</span> {esc(part)}: {esc(why)}</p>')
    body = ["".join(head)]
    for dataset, per_layer in s.results.items():
        if len(per_layer) > 1:
            body.append(_across_layers(dataset, list(per_layer.values())))
    for le in s.layers():
        parts = [f"<h3>{esc(le.dataset)} · layer {esc(le.layer)}</h3>"]
        for part, why in sorted(le.skipped.items()):
            parts.append(f'<p class="small"><span class="badge part">skipped</span> {esc(part)}: {esc(why)}</p>')
        if le.relevance:
            parts.append(f"<h4>Token relevance</h4>{_relevance(le)}")
        if le.steering_similarity:
            parts.append(f"<h4>Steering similarity</h4>{_similarity(le)}")
        if le.causal:
            parts.append(f"<h4>Causal effect</h4>{_causal(le)}")
        if le.identification:
            parts.append(f"<h4>Objective identification</h4>{_identification(le)}")
        if le.leakage:
            parts.append(f"<h4>Leakage of unsteered answers</h4>{_leakage(le)}")
        body.append("".join(parts))
    return "".join(body)


def headline(s: EvalSummary) -> list[str]:
    """One-line findings for the terminal summary."""
    out: list[str] = []
    for le in s.layers():
        r = (le.relevance or {}).get("delta", {}).get("patchscope")
        if r is not None:
            others = {k: (le.relevance or {}).get(k, {}).get("patchscope") for k in ("base", "ft", "random")}
            rest = ", ".join(f"{k} {v.max:.0f}%" for k, v in others.items() if v is not None)
            out.append(f"relevance (Patchscope, max over positions): δ̄ {r.max:.0f}% vs {rest}")
        if le.steering_similarity:
            ss: dict[str, Any] = le.steering_similarity
            line = f"steering similarity to D_ft: steered {ss['steered_vs_ft'].mean:.3f}"
            if "random_vs_ft" in ss:
                line += f", random direction {ss['random_vs_ft'].mean:.3f}"
            out.append(line + f", unsteered {ss['unsteered_vs_ft'].mean:.3f} (D_ft self {ss['ft_self'].mean:.3f})")
        if le.causal:
            c = le.causal
            out.append(f"causal effect ΔCE on D_ft: max {max(c.delta['ft']):+.3f} vs random {c.random['ft']['mean']:+.3f}"
                       f" ± {c.random['ft']['std']:.3f}; on D_pt: {min(c.delta['pt']):+.3f}..{max(c.delta['pt']):+.3f}")
        if le.identification:
            i = le.identification
            out.append(f"identification: ADL rank {i.adl_rank}/{i.n_candidates}, blackbox rank "
                       f"{i.blackbox_rank}/{i.n_candidates}")
        if le.leakage:
            lk = le.leakage
            out.append(f"leakage of unsteered answers: {100 * lk.ft.share:.0f}% of {lk.ft.n}"
                       + (f" (base model {100 * lk.base.share:.0f}%)" if lk.base else ""))
    return out
