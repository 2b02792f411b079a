"""The report of ``difflens experiment``: one page comparing organisms (paper Fig. 2a, 2b, 7, our
identification and leakage) and mixing ratios (Fig. 8), every number beside its baseline."""
from __future__ import annotations

import statistics
from pathlib import Path

from ..rundir.artifacts import Cell, ExperimentResult
from ..files import atomic_write_text
from .charts import grouped_bar_chart, line_chart
from .evaluation import SOURCE_NAMES
from .methods import COMPARISON_HEAD, TITLES, comparison_cells
from .style import CSS
from .text import esc, fmt, html_table

__all__ = ["render_experiment", "experiment_html"]


def _table(header: list[str], rows: list[list[str]], cls: str = "num compact") -> str:
    return html_table(header, rows, cls)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _label(c: Cell) -> str:
    return c.organism + (f" 1:{c.mix_ratio:g}" if c.mix_ratio else "")


def _relevance(cells: list[Cell]) -> str:
    sources = [s for s in ("delta", "base", "ft", "delta_via_base", "random", "base_via_ft")
               if any(s in c.relevance for c in cells)]
    rows = []
    for c in cells:
        rows.append([esc(_label(c)), *[f"<b>{_pct(c.relevance.get(s, {}).get('patchscope'))}</b>" if s == "delta"
                                       else _pct(c.relevance.get(s, {}).get("patchscope")) for s in sources],
                     *[_pct(c.relevance.get(s, {}).get("logit_lens")) for s in ("delta", "base", "ft")]])
    chart = grouped_bar_chart([_label(c) for c in cells],
                              [(SOURCE_NAMES[s], [c.relevance.get(s, {}).get("patchscope", 0.0) for c in cells])
                               for s in sources], y_label="% relevant (max over j)", y_max=100,
                              title="token relevance, Patchscope")
    table = _table(["organism", *[esc(SOURCE_NAMES[s]) for s in sources], "LL δ̄", "LL h̄_base", "LL h̄_ft"], rows)
    return ('<p class="muted small">Share of the top-20 Patchscope tokens the relevance grader ties to the '
            'objective, maximum over positions (paper Fig. 2a); LL: logit lens.</p>'
            f'<div class="chartrow">{chart}</div>{table}')


def _similarity(cells: list[Cell]) -> str:
    keys = ["steered_vs_ft", "random_vs_ft", "unsteered_vs_ft", "ft_self", "steered_vs_chat", "unsteered_vs_chat"]
    rows = []
    for c in cells:
        rows.append([esc(_label(c)), *[(f"<b>{fmt(c.similarity[k]['mean'], 3)}</b>" if k == "steered_vs_ft" else
                                        fmt(c.similarity[k]["mean"], 3)) if k in c.similarity else "–" for k in keys]])
    series = [(name, [c.similarity.get(k, {}).get("mean", 0.0) for c in cells]) for k, name in
              (("steered_vs_ft", "steered ↔ D_ft"), ("random_vs_ft", "random dir. ↔ D_ft"),
               ("unsteered_vs_ft", "unsteered ↔ D_ft"), ("ft_self", "D_ft ↔ D_ft"))]
    chart = grouped_bar_chart([_label(c) for c in cells], series, y_label="mean cosine", title="steering similarity")
    return ('<p class="muted small">Mean pairwise cosine similarity of sentence embeddings (paper Fig. 2b): steered '
            'texts vs D_ft should exceed unsteered and random-direction texts and approach D_ft\'s self-similarity.</p>'
            f'<div class="chartrow">{chart}</div>'
            + _table(["organism", "steered↔D_ft", "random↔D_ft", "unsteered↔D_ft", "D_ft↔D_ft", "steered↔chat",
                      "unsteered↔chat"], rows))


def _causal(cells: list[Cell]) -> str:
    with_c = [c for c in cells if c.causal]
    if not with_c:
        return '<p class="muted">No causal-effect results.</p>'
    rows = []
    for c in with_c:
        ca = c.causal or {}
        rows.append([esc(_label(c)), " ".join(f"{v:+.3f}" for v in ca["ft"]),
                     f"{ca['random_ft']['mean']:+.3f} ± {ca['random_ft']['std']:.3f}",
                     " ".join(f"{v:+.3f}" for v in ca["pt"]),
                     f"{ca['random_pt']['mean']:+.3f} ± {ca['random_pt']['std']:.3f}"])
    pos = with_c[0].causal["positions"]  # type: ignore[index]
    same = [c for c in with_c if c.causal["positions"] == pos and not c.mix_ratio]  # type: ignore[index]
    chart = ""
    if same:
        def mean_at(key: str) -> list[float]:
            return [statistics.fmean(c.causal[key][i] for c in same) for i in range(len(pos))]  # type: ignore[index]
        rf = statistics.fmean(c.causal["random_ft"]["mean"] for c in same)  # type: ignore[index]
        rp = statistics.fmean(c.causal["random_pt"]["mean"] for c in same)  # type: ignore[index]
        sf = statistics.fmean(c.causal["random_ft"]["std"] for c in same)  # type: ignore[index]
        sp = statistics.fmean(c.causal["random_pt"]["std"] for c in same)  # type: ignore[index]
        chart = line_chart([("D_ft", mean_at("ft")), ("D_pt", mean_at("pt"))], labels=[str(j) for j in pos],
                           bands=[(rf, sf, "random, D_ft"), (rp, sp, "random, D_pt")], y_label="ΔCE (nats/token)",
                           title=f"causal effect, mean over {len(same)} organisms")
    return ('<p class="muted small">ΔCE of replacing the finetuned activation\'s component along δ̄_j by the base '
            'model\'s (paper Fig. 7); baseline: random differences of base activations on chat data.</p>'
            f'<div class="chartrow">{chart}</div>'
            + _table(["organism", "ΔCE D_ft per j", "random D_ft", "ΔCE D_pt per j", "random D_pt"], rows))


def _identification(cells: list[Cell]) -> str:
    with_i = [c for c in cells if c.identification]
    if not with_i:
        return '<p class="muted">No identification results.</p>'
    rows = [[esc(_label(c)), f"<b>{c.identification['adl_rank']}</b>", str(c.identification["blackbox_rank"]),  # type: ignore[index]
             str(c.identification["n_candidates"])] for c in with_i]  # type: ignore[index]
    adl = [c.identification["adl_rank"] for c in with_i]  # type: ignore[index]
    bb = [c.identification["blackbox_rank"] for c in with_i]  # type: ignore[index]
    summary = (f"ADL: top-1 {sum(r == 1 for r in adl)}/{len(adl)}, mean rank {statistics.fmean(adl):.2f}; "
               f"blackbox: top-1 {sum(r == 1 for r in bb)}/{len(bb)}, mean rank {statistics.fmean(bb):.2f}")
    return (f'<p class="muted small">Rank of the true objective among the candidate descriptions by embedding '
            f'similarity, from ADL evidence vs unsteered samples only. <b>{esc(summary)}</b></p>'
            + _table(["organism", "ADL rank", "blackbox rank", "candidates"], rows))


METHOD_ORDER = ("adl", "mining", "kl", "amplify")
SHORT = {"adl": "ADL (δ̄ Patchscope)", "mining": "diff mining", "kl": "KL peaks", "amplify": "amplification"}


def _methods(cells: list[Cell]) -> str:
    """Organism × method: relevance vs baseline vs control, similarity, identification rank and cost
    (one table), and the methods' relevance per organism with their baselines and controls (one chart)."""
    with_m = [c for c in cells if c.methods]
    names = [m for m in METHOD_ORDER if any(m in c.methods for c in with_m)]
    names += sorted({m for c in with_m for m in c.methods} - set(names))
    rows, missing = [], []
    for c in with_m:
        present = [m for m in names if m in c.methods]
        for i, m in enumerate(present):
            n = c.methods[m]
            first = (f'<td rowspan="{len(present)}" class="org"><b>{esc(_label(c))}</b></td>' if i == 0 else "")
            cells_html = "".join(f"<td>{x}</td>" for x in [esc(TITLES.get(m, m)), *comparison_cells(n)])
            rows.append(f"<tr>{first}{cells_html}</tr>")
            missing += [f"<li><b>{esc(_label(c))}</b> · {esc(m)}: {esc(x)}</li>" for x in n.get("missing") or []]
    head = "".join(f"<th>{h}</th>" for h in ["organism", "method", *COMPARISON_HEAD])
    table = f'<table class="num compact methods"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'

    def rel(key: str, m: str) -> list[float | None]:
        return [c.methods.get(m, {}).get(key) for c in with_m]

    graded = [m for m in names if any(v is not None for v in rel("relevance", m))]  # amplification: texts only
    chart = grouped_bar_chart([_label(c) for c in with_m],
                              [(SHORT.get(m, m), [v or 0.0 for v in rel("relevance", m)]) for m in graded],
                              marks=[("its baseline", [rel("baseline", m) for m in graded]),
                                     ("its control", [rel("control", m) for m in graded])],
                              y_label="% relevant (top-20 tokens)", y_max=100,
                              width=max(640, 60 + 26 * len(graded) * len(with_m)),
                              title="token relevance per method, with its baseline and control") if graded else ""
    note = (f"<details><summary>not computed ({len(missing)})</summary><ul>{''.join(missing)}</ul></details>"
            if missing else "")
    return ('<p class="muted small">Every diffing method graded by the same relevance grader on each organism: the '
            "share of its top-20 tokens tied to the objective (the best list; ADL: max over positions), beside its "
            "baseline (what one model alone gives) and its control (the method on a pair with small random weight "
            "noise instead of a finetune, or ADL's random vector); the similarity of its texts to D_ft; the rank of "
            "the true objective among the candidates from its own evidence; the cost. Bars: the method; black "
            "line: its baseline; dashed magenta line: its control. ▲: above both.</p>"
            f'<div class="chartrow">{chart}</div>{table}{note}')


def _organisms(cells: list[Cell]) -> str:
    rows = []
    for c in cells:
        lk, ff = c.leakage or {}, c.ffa or {}
        rows.append([esc(_label(c)), _pct(100 * lk["ft"]) if lk.get("ft") is not None else "–",
                     _pct(100 * lk["base"]) if lk.get("base") is not None else "–",
                     fmt(ff.get("shift"), 3) if ff else "–",
                     (fmt(ff.get("sign_p"), 3) + (f" (rank p {fmt(ff['rank_p'], 3)})" if ff.get("rank_p") is not None
                                                  else "")
                      + (f" (vs control: {fmt(ff['control_margin_shift'], 3)} nats, p {fmt(ff['control_sign_p'], 3)})"
                         if ff.get("control_sign_p") is not None else "")) if ff else "–",
                     esc(", ".join(f"j{j}: {a:.2f}" for j, a in c.alpha.items())), esc(c.error or "")])
    return ('<p class="muted small">Leakage: % of unsteered answers to everyday prompts that give the domain away '
            '(finetuned vs base model). FFA: MCQ shift towards the implanted option (finetuned − base) with a '
            'one-sided sign-test p; subliminal organisms: the shift of P(animal | candidates), and the rank p of '
            'that animal\'s shift among all candidates (the control: a low sign-test p with a high rank p means '
            'every animal rose alike); organisms with a control organism (EM): the margin shift and p relative to '
            'it. α: steering threshold per position.</p>'
            + _table(["organism", "leakage ft %", "leakage base %", "FFA shift", "p", "α", "error"], rows))


def _mixing(cells: list[Cell]) -> str:
    by_org: dict[str, list[Cell]] = {}
    for c in cells:
        by_org.setdefault(c.organism, []).append(c)
    out = []
    for org, cs in by_org.items():
        if len({c.mix_ratio for c in cs}) < 2:
            continue
        cs = sorted(cs, key=lambda c: c.mix_ratio)
        labels = [f"1:{c.mix_ratio:g}" for c in cs]
        rel = line_chart([("δ̄ Patchscope", [c.relevance.get("delta", {}).get("patchscope", 0.0) for c in cs]),
                          ("h̄_base", [c.relevance.get("base", {}).get("patchscope", 0.0) for c in cs])],
                         labels=labels, x_label="D_ft : D_pt", y_label="% relevant", y_min=0, y_max=100,
                         title=f"mixing: relevance, {org}")
        sim = line_chart([("steered ↔ D_ft", [c.similarity.get("steered_vs_ft", {}).get("mean", 0.0) for c in cs]),
                          ("unsteered ↔ D_ft", [c.similarity.get("unsteered_vs_ft", {}).get("mean", 0.0) for c in cs]),
                          ("D_ft ↔ D_ft", [c.similarity.get("ft_self", {}).get("mean", 0.0) for c in cs])],
                         labels=labels, x_label="D_ft : D_pt", y_label="mean cosine", title=f"mixing: steering, {org}")
        ffa = line_chart([("FFA-MCQ shift", [(c.ffa or {}).get("shift", 0.0) for c in cs])], labels=labels,
                         x_label="D_ft : D_pt", y_label="shift", title=f"mixing: FFA, {org}")
        out.append(f"<h3>{esc(org)}</h3><div class=\"chartrow\">{rel}{sim}{ffa}</div>")
    if not out:
        return '<p class="muted">No mixing cells.</p>'
    return ('<p class="muted small">Organisms trained with D_pt mixed in (paper Fig. 8): mixing should lower the '
            'readable bias (relevance, steering similarity) and, at some cost, the implanted belief (FFA).</p>'
            + "".join(out))


def experiment_html(result: ExperimentResult) -> str:
    organisms = [c for c in result.cells if not c.mix_ratio]
    first = ([("methods", "Diffing methods compared", _methods(result.cells))]
             if any(c.methods for c in result.cells) else [])
    sections = [*first,
        ("relevance", "Token relevance (Fig. 2a)", _relevance(organisms or result.cells)),
        ("steering", "Steering similarity (Fig. 2b)", _similarity(organisms or result.cells)),
        ("causal", "Causal effect (Fig. 7)", _causal(result.cells)),
        ("identification", "Objective identification", _identification(organisms or result.cells)),
        ("organisms", "Leakage, FFA and thresholds", _organisms(result.cells)),
        ("mixing", "Data mixing (Fig. 8)", _mixing(result.cells)),
    ]
    toc = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{h}</section>' for a, t, h in sections)
    runs = "".join(f"<li><code>{esc(c.run)}</code></li>" for c in result.cells)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>difflens experiment "
            f"{esc(result.name)}</title><style>{CSS}</style></head><body><div class=\"layout\"><nav class=\"toc\"><ul>"
            f"{toc}</ul></nav><main><h1>Experiment: {esc(result.name)}</h1><p class=\"sub\">base "
            f"<b>{esc(result.base)}</b>{' · quick size' if result.quick else ''}"
            f"{' · recipe ' + esc(', '.join(f'{k}={v}' for k, v in result.train.items())) if result.train else ''}"
            f" · {len(result.cells)} cells. Each "
            f"cell is a run directory with its own report:</p><details><summary>runs</summary><ul>{runs}</ul>"
            f"</details>{body}<footer>Generated by difflens. Self-contained.</footer></main></div></body></html>\n")


def render_experiment(out_dir: str | Path) -> Path:
    """Write ``OUT/report.html`` from ``OUT/experiment.json``; return its path."""
    out = Path(out_dir)
    result = ExperimentResult.model_validate_json((out / "experiment.json").read_text(encoding="utf-8"))
    path = out / "report.html"
    atomic_write_text(path, experiment_html(result))
    return path
