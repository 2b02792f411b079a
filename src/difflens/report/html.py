"""The report page: HTML for the header, stage overview, norms charts, per dataset × layer
Patchscope / logit-lens / steering sections, evaluation and agent results, and the whole document."""
from __future__ import annotations

import datetime as _dt
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import DifflensError
from ..rundir.artifacts import (
    CONTROLS,
    SOURCES,
    Generation,
    LogitLensResult,
    PatchscopeEntry,
    PatchscopeResult,
    SearchStep,
    SteeringResult,
    TokenProb,
)
from ..rundir.layout import RunLayout, atomic_write_text, read_json
from .charts import bar_chart
from .agent import agent_section
from .evaluation import evaluation_section
from .gather import METHOD_ORDER, STAGE_COMMANDS, MethodsData, Norms, Slice, gather, gather_methods
from .methods import methods_section, methods_toc
from .style import CSS
from .text import esc, fmt, fmt_scale, html_table, show_token, tok_html

SOURCE_LABEL = {"delta": "δ̄", "base": "h̄<sub>base</sub>", "ft": "h̄<sub>ft</sub>",
                "delta_via_base": "δ̄ through the base model <span class='ctl'>control</span>",
                "random": "random vector, ‖δ̄‖ <span class='ctl'>control</span>",
                "base_via_ft": "h̄<sub>base</sub> through the finetuned model <span class='ctl'>control</span>"}
#: Column order: δ̄, then its controls beside it, then the baselines (h̄_base read by the base model, the
#: authors' convention, beside its control through the finetuned model).
COLUMN_ORDER = ("delta", "delta_via_base", "random", "base", "base_via_ft", "ft")
PATCHSCOPE_TOP = 20
LENS_TOP = 10


_tok_html = tok_html


# ---------------------------------------------------------------------------------------------
# small HTML helpers
# ---------------------------------------------------------------------------------------------
def _empty(stage: str, what: str = "") -> str:
    """The empty state of a section whose stage (a key of :data:`STAGE_COMMANDS`) has not run."""
    cmd = STAGE_COMMANDS[stage]
    what = f" {esc(what)}" if what else ""
    return (f'<div class="empty"><b>Stage not run</b>{what}: run <code>{esc(cmd)}</code> '
            f"to produce it.</div>")


def _error(msg: str) -> str:
    return f'<div class="error"><b>Could not read this artifact.</b> {esc(msg)}</div>'


def _chip(t: TokenProb, *, pmax: float, cls: str = "") -> str:
    w = 0 if pmax <= 0 else max(2.0, min(100.0, 100.0 * t.prob / pmax))
    title = f"{t.token!r}  id {t.token_id}  p={t.prob:.4g}"
    return (f'<span class="chip {cls}" title="{esc(title)}"><span class="tok">{_tok_html(t.token)}</span>'
            f'<span class="pbar"><span style="width:{w:.0f}%"></span></span></span>')


def _chips(tokens: Sequence[TokenProb], selected: Iterable[str] | None = None, neg: bool = False) -> str:
    if not tokens:
        return '<span class="muted">no tokens</span>'
    pmax = max(t.prob for t in tokens)
    sel = set(selected) if selected is not None else None
    parts = []
    for t in tokens:
        if sel is None:
            cls = "neg" if neg else ""
        else:
            cls = "sel" if t.token in sel else "dim"
        parts.append(_chip(t, pmax=pmax, cls=cls))
    return '<div class="chips">' + "".join(parts) + "</div>"


_table = html_table


def _kv(rows: Iterable[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
def _model_rows(models: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, label in (("base", "Base model"), ("finetuned", "Finetuned model")):
        m = models.get(key) or {}
        spec = esc(m.get("spec", "?"))
        src = m.get("source")
        fp = m.get("fingerprint")
        extra = []
        if src and src != m.get("spec"):
            extra.append(f'<span class="muted">{esc(src)}</span>')
        if fp:
            extra.append(f'fingerprint <code>{esc(fp)}</code>')
        rows.append((label, f"<b>{spec}</b><br>" + " · ".join(extra)))
    arch = models.get("architecture")
    if arch:
        dims = []
        if models.get("num_layers") is not None:
            dims.append(f"{models['num_layers']} layers")
        if models.get("hidden_size") is not None:
            dims.append(f"d = {models['hidden_size']}")
        if models.get("shared_adapter"):
            dims.append("finetuned is an adapter sharing the base weights")
        rows.append(("Architecture", f"<code>{esc(arch)}</code> " + esc(", ".join(dims))))
    return rows


def _precision_row(models: dict[str, Any], slices: Sequence[Slice]) -> tuple[str, str] | None:
    """What the pair computed in: collection's (the manifest), and each lens / steer result that ran in
    another precision (a stage rerun with ``--dtype``); None when nothing records one."""
    collected = models.get("precision")
    other = [f"{what} of {s.dataset} layer {s.layer}: <b>{esc(r.value.precision)}</b>"
             for s in slices for what, r in (("lens", s.patch), ("steer", s.steer))
             if r.ok and getattr(r.value, "precision", None) not in (None, collected or "float32")]
    if not collected and not other:
        return None
    head = f"<b>{esc(collected)}</b> (collection)" if collected else "collection: not recorded"
    return ("Precision", head + ("<br>" + "<br>".join(other) if other else ""))


def _header(layout: RunLayout, manifest: dict[str, Any], slices: Sequence[Slice] = ()) -> str:
    models = manifest.get("models", {})
    rows = _model_rows(models)
    prec = _precision_row(models, slices)
    if prec is not None:
        rows.append(prec)
    ds_rows = []
    for d in manifest.get("datasets", []):
        ds_rows.append([f"<b>{esc(d.get('name', '?'))}</b>", esc(fmt(d.get("n_used"))),
                        esc(fmt(d.get("n_skipped_short"))), esc(fmt(d.get("n_requested"))),
                        esc(fmt(d.get("n_available"))),
                        f'<code>{esc(d.get("content_hash", ""))}</code>' if d.get("content_hash") else ""])
    rows.append(("Datasets", _table(["dataset", "N used", "skipped (too short)", "requested", "available",
                                     "content hash"], ds_rows, "inner") if ds_rows else "none"))
    layer_txt = ", ".join(
        f"<b>{esc(e.get('absolute'))}</b>"
        + (f" <span class='muted'>(rel. {esc(fmt(e.get('relative'), 3))})</span>" if e.get("relative") is not None else "")
        for e in manifest.get("layers", []))
    rows.append(("Layers", layer_txt or "—"))
    if manifest.get("positions") is not None:
        rows.append(("Positions k", f"{esc(manifest['positions'])} <span class='muted'>(j = 0 … "
                                    f"{esc(int(manifest['positions']) - 1)})</span>"))
    if manifest.get("seed") is not None:
        rows.append(("Seed", esc(manifest["seed"])))
    vers = manifest.get("versions") or {}
    if vers:
        rows.append(("Versions", " · ".join(f"{esc(k)} <code>{esc(v)}</code>" for k, v in vers.items())))
    cfg = manifest.get("config")
    if cfg:
        rows.append(("Collection config", '<details><summary>show</summary>' + _generic(cfg) + "</details>"))
    return _kv(rows, "kv header")


def _stage_overview(layout: RunLayout, slices: list[Slice], methods: MethodsData | None = None) -> str:
    def status(pred_done: bool, pred_any: bool) -> str:
        if pred_done:
            return '<span class="badge ok">done</span>'
        if pred_any:
            return '<span class="badge part">partial</span>'
        return '<span class="badge no">not run</span>'

    col = [s.norms.ok for s in slices]
    lens = [s.lens.ok and s.patch.ok for s in slices]
    lens_any = [s.lens.ok or s.patch.ok for s in slices]
    steer = [s.steer.ok and s.gens.ok for s in slices]
    steer_any = [s.steer.ok or s.gens.ok for s in slices]
    rows = [
        ("collect", "mean activation differences δ̄_j, baselines, norms η", status(bool(col) and all(col), any(col))),
        ("lens", "Patchscope and logit lens", status(bool(lens) and all(lens), any(lens_any))),
        ("steer", "steering thresholds and steered generations", status(bool(steer) and all(steer), any(steer_any))),
    ]
    if methods is not None:
        n = len(methods.parts)
        rows.append(("diff", "diff mining, per-token KL and activation differences, logit-difference amplification",
                     status(n == len(METHOD_ORDER), n > 0)))
    rows.append(("evaluate", "token relevance, steering similarity, causal effect, identification",
                 status(layout.evaluation().exists(), False)))
    # the agent has no command in this version; its results are listed when a run has them
    if layout.agent().exists():
        rows.append(("agent", "interpretability agent and hypothesis grades", status(True, False)))
    return _table(["stage", "what", "status"], [[f"<code>{esc(a)}</code>", esc(b), c] for a, b, c in rows], "stages")


def _norms_section(slices: list[Slice]) -> str:
    cards = []
    for s in slices:
        head = f"<h3>{esc(s.title)}</h3>"
        if s.norms.error:
            cards.append(f'<div class="card">{head}{_error(s.norms.error)}</div>')
            continue
        if not s.norms.ok:
            cards.append(f'<div class="card">{head}{_empty("collect", "for this layer")}</div>')
            continue
        nm: Norms = s.norms.value
        labels = [str(j) for j in range(len(nm.delta))]
        chart = bar_chart(nm.delta, labels=labels, y_label="‖δ̄_j‖",
                          refs=[(nm.eta_ft, f"η_ft = {fmt(nm.eta_ft, 3)}", "eta-ft"),
                                (nm.eta_base, f"η_base = {fmt(nm.eta_base, 3)}", "eta-base")],
                          title=f"‖δ̄_j‖ per position, {s.title}")
        rows = [[esc(j), esc(fmt(nm.delta[j])), esc(fmt(nm.delta[j] / nm.eta_ft if nm.eta_ft else float("nan"), 3)),
                 esc(fmt(nm.base[j])), esc(fmt(nm.ft[j]))] for j in range(len(nm.delta))]
        table = _table(["j", "‖δ̄_j‖", "‖δ̄_j‖ / η_ft", "‖h̄_base_j‖", "‖h̄_ft_j‖"], rows, "num compact")
        cards.append(f'<div class="card">{head}<p class="muted small">N = {esc(nm.n)} samples · η (mean norm over '
                     f'positions ≥ 3): base {esc(fmt(nm.eta_base, 4))}, finetuned {esc(fmt(nm.eta_ft, 4))}</p>'
                     f'<div class="chartrow">{chart}{table}</div></div>')
    if not cards:
        return _empty("collect")
    return "".join(cards)


def _patch_cell(e: PatchscopeEntry) -> str:
    try:
        chosen = e.at(e.chosen_scale)
        toks = chosen.tokens[:PATCHSCOPE_TOP]
    except KeyError:
        toks = []
    sel = set(e.selected_tokens)
    n_sel = sum(1 for t in toks if t.token in sel)
    head = (f'<div class="cellhead"><span class="badge scale">λ = {esc(fmt_scale(e.chosen_scale))}</span>'
            f'<span class="muted small">{n_sel} of {len(toks)} selected · grader {esc(e.grader)}</span></div>')
    body = _chips(toks, selected=sel)
    extra = ""
    flag = e.more_specific()
    if flag is not None:
        other, score, mine = flag
        try:
            otoks = e.at(other).tokens[:PATCHSCOPE_TOP]
        except KeyError:
            otoks = []
        extra += (f'<div class="flag">⚠ λ = {esc(fmt_scale(other))} is far more specific than the chosen scale '
                  f'(specificity {esc(fmt(score, 3))} vs {esc(fmt(mine, 3))}): {_chips(otoks)}</div>')
    if e.rationale:
        extra += f'<div class="rationale">{esc(e.rationale)}</div>'
    if e.scales:
        spec = e.specificity if e.specificity and len(e.specificity) == len(e.scales) else None
        rows = []
        for i, sc in enumerate(e.scales):
            cls = ' class="chosen"' if abs(sc.scale - e.chosen_scale) < 1e-9 else ""
            toks8 = " ".join(f'<span class="mini" title="p={t.prob:.3g}">{_tok_html(t.token)}</span>'
                             for t in sc.tokens[:PATCHSCOPE_TOP])
            sp = f"<td class='num'>{esc(fmt(spec[i], 3))}</td>" if spec else ""
            rows.append(f"<tr{cls}><td class='num'>{esc(fmt_scale(sc.scale))}</td>{sp}<td>{toks8}</td></tr>")
        sp_head = ("<th title='specificity of the top-20: rare words, absent from the controls, recurring at "
                   "other positions, in a coherent group'>specificity</th>") if spec else ""
        extra += (f'<details class="scales"><summary>all {len(e.scales)} scales (top-{PATCHSCOPE_TOP})</summary>'
                  f'<table class="compact"><thead><tr><th>λ</th>{sp_head}<th>top tokens</th></tr></thead>'
                  f'<tbody>{"".join(rows)}</tbody></table></details>')
    return head + body + extra


def _source_grid(res: Any, cell: Callable[[Any], str]) -> str:
    """A positions × sources table of one lens result (δ̄, its controls where computed, h̄_base, h̄_ft),
    each cell rendered by ``cell``."""
    present = {e.source for e in res.entries}
    columns = [src for src in COLUMN_ORDER if src in SOURCES or src in present]
    rows = []
    for j in sorted({e.position for e in res.entries}):
        cells = [f'<td class="pos">j = {j}</td>']
        for src in columns:
            try:
                cells.append(f"<td>{cell(res.get(src, j))}</td>")
            except KeyError:
                cells.append('<td><span class="muted">—</span></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{SOURCE_LABEL[src]}</th>" for src in columns)
    return (f'<table class="grid3 cols{len(columns)}"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _patchscope_block(s: Slice) -> str:
    if s.patch.error:
        return _error(s.patch.error)
    if not s.patch.ok:
        return _empty("lens", "(Patchscope)")
    res: PatchscopeResult = s.patch.value
    prompts = "".join(f"<li><code>{esc(show_token(p))}</code></li>" for p in res.prompts)
    return (f'<p class="muted small">Top-{PATCHSCOPE_TOP} tokens at the chosen scale λ (the layer-{res.layer} output '
            f'at the last token of the identity prompts is replaced by λ · η_ft · v/‖v‖, η_ft = '
            f'{esc(fmt(res.eta_ft, 4))}). <span class="chip sel inline"><span class="tok">highlighted</span></span> '
            f'tokens were selected as semantically coherent by the grader; '
            f'<span class="chip dim inline"><span class="tok">dimmed</span></span> ones were not. Bars: probability '
            f'relative to the top token; hover for exact values.</p>'
            f'<details class="prompts"><summary>identity prompts ({len(res.prompts)})</summary><ul>{prompts}</ul></details>'
            + _controls_note(res) + _source_grid(res, _patch_cell))


def _controls_note(res: PatchscopeResult) -> str:
    """What the controls are, and the unpatched prompt's own tokens (the floor every column sits on)."""
    if not res.unpatched and not any(e.source in CONTROLS for e in res.entries):
        return ""
    unpatched = (f'<div class="lensrow"><span class="plabel">unpatched</span>{_chips(res.unpatched[:PATCHSCOPE_TOP])}'
                 f'</div>' if res.unpatched else "")
    return ('<div class="controls"><p class="muted small"><b>Controls.</b> Tokens that also appear for a random '
            'vector, for δ̄ read through the base model, or with nothing patched are not evidence about the '
            'finetuning: the finetuned model produces them anyway. Only what δ̄ shows beyond its controls is '
            'specific to the difference. δ̄ and h̄<sub>ft</sub> are read by the finetuned model, the baseline '
            'h̄<sub>base</sub> by the base model (the authors\' convention), all at η_ft; h̄<sub>base</sub> '
            'through the finetuned model is shown as a control: an overfit finetune answers even it in its '
            'own domain.</p>' + unpatched + '</div>')


def _lens_cell(pos: Sequence[TokenProb], neg: Sequence[TokenProb]) -> str:
    out = ['<div class="lensrow"><span class="sign">+</span>', _chips(pos[:LENS_TOP]), "</div>"]
    if neg:
        out += ['<div class="lensrow negrow"><span class="sign">−</span>', _chips(neg[:LENS_TOP], neg=True), "</div>"]
    return "".join(out)


def _lens_block(s: Slice) -> str:
    if s.lens.error:
        return _error(s.lens.error)
    if not s.lens.ok:
        return _empty("lens", "(logit lens)")
    res: LogitLensResult = s.lens.value
    return (f'<p class="muted small">Top-{LENS_TOP} tokens of softmax(W_U · final_norm(+v)) and, in red, of −v.</p>'
            + _source_grid(res, lambda e: _lens_cell(e.top_positive, e.top_negative)))


def _coherence_bar(res: SteeringResult) -> str:
    """How a tested α was judged coherent: the bar and the unsteered pass rate it is relative to."""
    if res.min_coherent is None:
        return ""
    n = res.thresholds[0].steps[0].n_samples if res.thresholds and res.thresholds[0].steps else None
    per, rates = res.min_coherent_per_prompt, res.unsteered_pass_rates
    if per and rates and len(per) == len(rates):
        return (" Each threshold prompt was held to its own unsteered pass rate: a tested α counted as coherent "
                "with ≥ " + ", ".join(f"{esc(k)}" + (f"/{esc(n)}" if n else "") for k in per)
                + " coherent samples for the three prompts, whose unsteered samples pass "
                + ", ".join(f"{esc(fmt(100 * r, 3))}%" for r in rates) + " of the time at the search temperature.")
    bar = f" A tested α counted as coherent with ≥ {esc(res.min_coherent)}" + (f"/{esc(n)}" if n else "")
    bar += " coherent samples"
    if res.unsteered_pass_rate is not None:
        bar += (f"; the unsteered model's own samples pass {esc(fmt(100 * res.unsteered_pass_rate, 3))}% of the "
                f"time at the search temperature")
    return bar + "."


def _step_samples(st: SearchStep) -> str:
    """"3/10", or "0 of 7 judged (10 drawn)" where the grader stopped once the verdict was certain."""
    if st.n_graded is None:
        return f"{esc(st.n_coherent)}/{esc(st.n_samples)}"
    return f"{esc(st.n_coherent)} of {esc(st.n_graded)} judged ({esc(st.n_samples)} drawn)"


def _step_verdict(st: SearchStep) -> str:
    return '<span class="badge ok">coherent</span>' if st.coherent else '<span class="badge no">incoherent</span>'


def _steer_threshold_block(s: Slice) -> str:
    if s.steer.error:
        return _error(s.steer.error)
    if not s.steer.ok:
        return _empty("steer", "(steering thresholds)")
    res: SteeringResult = s.steer.value
    th = sorted(res.thresholds, key=lambda t: t.position)
    chart = bar_chart([t.alpha for t in th], labels=[str(t.position) for t in th],
                      points=[t.per_prompt for t in th], y_label="α", width=420, height=200, bar_color="#c0762c",
                      title=f"steering threshold α per position, {s.title}")
    rows = []
    for t in th:
        rows.append([esc(t.position), f"<b>{esc(fmt(t.alpha, 3))}</b>",
                     esc(", ".join(fmt(a, 3) for a in t.per_prompt)), esc(len(t.steps)),
                     esc(t.generations_used), esc(t.grader_calls)])
    table = _table(["j", "α", "per prompt", "search steps", "generations", "grader calls"], rows, "num compact")
    steps = []
    for t in th:
        srows = [[esc(show_token(st.prompt)[:80]), esc(fmt(st.alpha, 4)), _step_samples(st), _step_verdict(st)]
                 for st in t.steps]
        steps.append(f"<h5>position {esc(t.position)}</h5>" + _table(["prompt", "α", "coherent samples", "verdict"],
                                                                     srows, "compact"))
    return (f'<p class="muted small">Largest coherent α per position (bars: mean over search prompts; dots: each '
            f'prompt). Steering adds α · η_ft · δ̂_j (η_ft = {esc(fmt(res.eta_ft, 4))}) at every position of layer '
            f'{esc(res.layer)}. Coherence grader: {esc(res.grader)}; final samples: {esc(res.samples_per_prompt)} per '
            f'prompt at T = {esc(fmt(res.temperature, 3))}.{_coherence_bar(res)}</p>'
            f'<div class="chartrow">{chart}{table}</div>'
            f'<details><summary>binary-search steps</summary>{"".join(steps)}</details>')


def _steer_gen_block(s: Slice) -> str:
    if s.gens.error:
        return _error(s.gens.error)
    if not s.gens.ok:
        return _empty("steer", "(steered generations)")
    gens: list[Generation] = s.gens.value
    if not gens:
        return '<div class="empty">The generations file is empty.</div>'
    prompts: list[str] = []
    unsteered: dict[str, list[Generation]] = defaultdict(list)
    steered: dict[int, dict[str, list[Generation]]] = defaultdict(lambda: defaultdict(list))
    control: dict[int, dict[str, list[Generation]]] = defaultdict(lambda: defaultdict(list))
    for g in gens:
        if g.prompt not in prompts:
            prompts.append(g.prompt)
        if g.position is None:
            unsteered[g.prompt].append(g)
        elif g.control:
            control[g.position][g.prompt].append(g)
        else:
            steered[g.position][g.prompt].append(g)
    out = []
    positions = sorted(steered)
    if not positions:
        positions_iter: list[int | None] = [None]
    else:
        positions_iter = list(positions)
    for k, j in enumerate(positions_iter):
        by_prompt = steered[j] if j is not None else {}
        by_prompt_ctl = control[j] if j is not None and j in control else {}
        alphas = sorted({g.alpha for p in by_prompt.values() for g in p})
        alpha_txt = ", ".join(fmt(a, 3) for a in alphas) or "—"
        label = f"Steering with δ̄ of position j = {j} · α = {alpha_txt}" if j is not None else "Unsteered samples"
        cards = []
        for p in prompts:
            un = sorted(unsteered.get(p, []), key=lambda g: g.sample)
            st = sorted(by_prompt.get(p, []), key=lambda g: g.sample)
            ct = sorted(by_prompt_ctl.get(p, []), key=lambda g: g.sample)
            n = max(len(un), len(st), len(ct))
            rows = []
            for i in range(n):
                u = f'<div class="gen">{esc(un[i].text)}</div>' if i < len(un) else '<span class="muted">—</span>'
                v = f'<div class="gen steered">{esc(st[i].text)}</div>' if i < len(st) else '<span class="muted">—</span>'
                c = ((f'<td><div class="gen control">{esc(ct[i].text)}</div></td>' if i < len(ct)
                      else '<td><span class="muted">—</span></td>') if by_prompt_ctl else "")
                rows.append(f"<tr><td>{u}</td><td>{v}</td>{c}</tr>")
            ctl_head = "<th>random direction, same α·η <span class='ctl'>control</span></th>" if by_prompt_ctl else ""
            cards.append(f'<div class="prompt"><div class="ptext"><span class="plabel">prompt</span> {esc(p)}</div>'
                         f'<table class="sbs"><thead><tr><th>unsteered</th><th>steered (j = {esc(j)})</th>{ctl_head}'
                         f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
        opened = " open" if k == 0 else ""
        out.append(f'<details class="steerpos"{opened}><summary>{esc(label)} '
                   f'<span class="muted small">({len(prompts)} prompts)</span></summary>{"".join(cards)}</details>')
    return ('<p class="muted small">Finetuned model with and without steering, samples side by side; where '
            'computed, the control steers along a random direction with the same strength α·η — what any '
            'push of that size does, without δ̄. One block per steered position; click to expand.</p>'
            + "".join(out))


def _slice_section(s: Slice) -> str:
    return (f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>'
            f'<h3 id="{s.anchor}-patchscope">Patchscope</h3>{_patchscope_block(s)}'
            f'<h3 id="{s.anchor}-lens">Logit lens</h3>{_lens_block(s)}'
            f'<h3 id="{s.anchor}-steer">Steering</h3>{_steer_threshold_block(s)}'
            f'<h4>Steered vs unsteered samples</h4>{_steer_gen_block(s)}</section>')


# ---------------------------------------------------------------------------------------------
# generic JSON rendering (evaluation / agent results, whose schemas are not fixed here)
# ---------------------------------------------------------------------------------------------
def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        if len(v) > 400 or "\n" in v:
            return f'<div class="longtext">{esc(v)}</div>'
        return esc(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f'<span class="numv">{esc(fmt(v))}</span>'
    return f'<span class="muted">{esc(fmt(v))}</span>'


def _generic(v: Any, depth: int = 0) -> str:
    if depth > 6:
        return f'<pre class="json">{esc(json.dumps(v, indent=1, default=str))}</pre>'
    if _is_scalar(v):
        return _scalar(v)
    if isinstance(v, dict):
        if not v:
            return '<span class="muted">(empty)</span>'
        return _kv(((esc(k), _generic(x, depth + 1)) for k, x in v.items()), "kv generic")
    if isinstance(v, (list, tuple)):
        if not v:
            return '<span class="muted">(empty list)</span>'
        if all(_is_scalar(x) for x in v):
            if all(isinstance(x, str) and len(x) < 60 for x in v):
                return " ".join(f'<span class="mini">{esc(x)}</span>' for x in v)
            if len(v) <= 12 and all(not isinstance(x, str) for x in v):
                return esc(", ".join(fmt(x) for x in v))
            return "<ol>" + "".join(f"<li>{_scalar(x)}</li>" for x in v) + "</ol>"
        if all(isinstance(x, dict) for x in v):
            keys: list[str] = []
            for x in v:
                for k in x:
                    if k not in keys:
                        keys.append(k)
            if len(keys) <= 14:
                rows = [[_generic(x.get(k), depth + 1) if k in x else "" for k in keys] for x in v]
                return _table([esc(k) for k in keys], rows, "generic")
        return "<ol>" + "".join(f"<li>{_generic(x, depth + 1)}</li>" for x in v) + "</ol>"
    return esc(repr(v))


def _json_stage(path: Path) -> str:
    """A JSON artifact that exists (evaluation, agent, LLM usage), rendered generically."""
    try:
        data = read_json(path)
    except DifflensError as e:
        return _error(str(e))
    return f'<p class="muted small">from <code>{esc(path)}</code></p>{_generic(data)}'


# ---------------------------------------------------------------------------------------------
# page
# ---------------------------------------------------------------------------------------------
def _toc(slices: list[Slice], extra: Sequence[tuple[str, str]] = (), methods: MethodsData | None = None) -> str:
    """The side navigation; ``extra`` holds (anchor, title) of the optional sections after the slices
    (and after the diffing methods' section, when the run has one)."""
    items = ['<li><a href="#overview">Run overview</a></li>', '<li><a href="#stages">Stages</a></li>',
             '<li><a href="#norms">Difference norms ‖δ̄_j‖</a></li>']
    for s in slices:
        items.append(f'<li><a href="#{s.anchor}">{esc(s.title)}</a><ul>'
                     f'<li><a href="#{s.anchor}-patchscope">Patchscope</a></li>'
                     f'<li><a href="#{s.anchor}-lens">Logit lens</a></li>'
                     f'<li><a href="#{s.anchor}-steer">Steering</a></li></ul></li>')
    if methods is not None and methods.shown:
        items.append(f'<li><a href="#methods">Diffing methods</a>{methods_toc(methods)}</li>')
    items += [f'<li><a href="#{a}">{t}</a></li>' for a, t in extra]
    return f'<nav class="toc"><div class="brand">difflens report</div><ul>{"".join(items)}</ul></nav>'


def build_html(run_dir: str | Path) -> str:
    """The report as an HTML string (see :func:`render_report`)."""
    layout = RunLayout(run_dir)
    manifest, slices = gather(layout)
    methods = gather_methods(layout)
    models = manifest.get("models", {})
    base = (models.get("base") or {}).get("spec", "?")
    ft = (models.get("finetuned") or {}).get("spec", "?")
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [
        f'<h1>Activation Difference Lens</h1><p class="sub"><b>{esc(ft)}</b> vs base <b>{esc(base)}</b> · run '
        f'<code>{esc(layout.root.resolve())}</code> · generated {esc(now)}</p>',
        f'<section id="overview"><h2>Run overview</h2>{_header(layout, manifest, slices)}</section>',
        f'<section id="stages"><h2>Stages</h2>{_stage_overview(layout, slices, methods)}</section>',
        f'<section id="norms"><h2>Difference norms ‖δ̄<sub>j</sub>‖</h2><p class="muted small">Norm of the mean '
        f'activation difference per position, with the finetuned model\'s mean activation norm η_ft (dashed) and '
        f'η_base (dotted) for reference.</p>{_norms_section(slices)}</section>',
    ]
    if not slices:
        body.append(f"<section><h2>Results</h2>{_empty('collect')}</section>")
    body += [_slice_section(s) for s in slices]
    if methods.shown:
        adl_anchor = next((f"{s.anchor}-patchscope" for s in slices if s.patch.ok), None)
        body.append('<section id="methods"><h2>Diffing methods beside ADL</h2><p class="muted small">What each '
                    "method surfaces, beside its baseline (what one model alone gives) and its control (the same "
                    "method on a pair without a narrow finetune). ADL's own results are in the sections above.</p>"
                    f"{methods_section(methods, adl_anchor)}</section>")
    # results of stages this version has no command for: shown when present, left out otherwise
    optional = [(a, t, p) for a, t, p in (("evaluation", "Evaluation", layout.evaluation()),
                                          ("agent", "Agent", layout.agent())) if p.exists()]
    for anchor, heading, path in optional:
        inner = evaluation_section(path) if anchor == "evaluation" else agent_section(layout)
        body.append(f'<section id="{anchor}"><h2>{heading}</h2>{inner}</section>')
    if layout.llm_usage().exists():
        body.append(f'<section id="llm-usage"><h2>LLM usage</h2>{_json_stage(layout.llm_usage())}</section>')
    body.append('<footer>Generated by difflens. Self-contained: no scripts, no network resources.</footer>')
    title = f"difflens · {ft} vs {base}"
    toc = _toc(slices, [(a, t) for a, t, _ in optional], methods)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f'<div class="layout">{toc}<main>{"".join(body)}</main></div></body></html>\n')


def render_report(run_dir: str | Path, out: Path | None = None) -> Path:
    """Write the self-contained HTML report of ``run_dir`` (default ``RUN/report.html``); return its path.

    Works on a run where only collection has finished: the lens and steering sections show the
    command that produces them.
    Raises :class:`~difflens.errors.RunDirError` if ``run_dir`` is not a run directory.
    """
    layout = RunLayout(run_dir)
    text = build_html(run_dir)
    path = Path(out) if out is not None else layout.report()
    atomic_write_text(path, text)
    return path
