"""The run report: one self-contained HTML file summarising a run directory.

``render_report(run_dir)`` reads every artifact that exists (through :mod:`difflens.layout`,
:mod:`difflens.artifacts` and :func:`difflens.collect.load_collected`) and writes ``report.html``:
a header with models, data and layers; a chart of ‖δ̄_j‖ per position against the activation norm
η; per dataset × layer the Patchscope and logit-lens tokens of δ̄_j next to the baselines h̄_base_j
and h̄_ft_j; steering thresholds and steered-vs-unsteered samples; and the evaluation and agent
results. A stage that has not run shows how to run it. The file needs no network: inline CSS,
inline SVG charts, no scripts, no external fonts or images. All model text is HTML-escaped and
tokens show their whitespace (``␣`` space, ``↵`` newline, ``⇥`` tab).

``summary_lines(run_dir)`` gives the same headline in a few plain-text lines for the terminal.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..run.artifacts import (
    SOURCES,
    Generation,
    LogitLensResult,
    PatchscopeEntry,
    PatchscopeResult,
    SteeringResult,
    TokenProb,
    load,
    load_jsonl,
)
from ..errors import DifflensError, RunDirError
from ..run.layout import RunLayout, atomic_write_text, read_json

__all__ = ["render_report", "build_html", "summary_lines", "show_token", "STAGE_COMMANDS"]

#: How to produce each stage's artifacts; shown in the report's empty states.
STAGE_COMMANDS: dict[str, str] = {
    "collect": "difflens collect --base BASE --finetuned FT --out RUN",
    "lens": "difflens run CONFIG --stages lens",
    "steer": "difflens run CONFIG --stages steer",
    "evaluate": "difflens run CONFIG --stages evaluate",
    "agent": "difflens run CONFIG --stages agent",
}

SOURCE_LABEL = {"delta": "δ̄", "base": "h̄<sub>base</sub>", "ft": "h̄<sub>ft</sub>"}
SOURCE_TEXT = {"delta": "δ̄", "base": "h̄_base", "ft": "h̄_ft"}
PATCHSCOPE_TOP = 20
LENS_TOP = 10

_WS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def show_token(tok: str) -> str:
    """A token with visible whitespace (␣ ↵ ⇥ ␍), control characters as \\xNN; '∅' for empty."""
    if tok == "":
        return "∅"
    out = []
    for ch in tok:
        if ch in _WS:
            out.append(_WS[ch])
        elif ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


_WS_MARKS = frozenset(_WS.values())


def _tok_html(tok: str) -> str:
    """HTML of a token: escaped, whitespace markers in a lighter colour."""
    return "".join(f'<span class="ws">{c}</span>' if c in _WS_MARKS else esc(c) for c in show_token(tok))


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return "—" if x is None else str(x).lower()
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


def _scale(x: float) -> str:
    return f"{x:g}"


def _anchor(*parts: Any) -> str:
    raw = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in raw)


# ---------------------------------------------------------------------------------------------
# data gathering
# ---------------------------------------------------------------------------------------------
@dataclass
class _Loaded:
    """One artifact: the value, or why it is not there."""

    value: Any = None
    missing: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


def _try(path: Path, loader: Callable[[Path], Any]) -> _Loaded:
    if not path.exists():
        return _Loaded(missing=True)
    try:
        return _Loaded(value=loader(path))
    except DifflensError as e:
        return _Loaded(error=str(e))
    except Exception as e:  # noqa: BLE001 - a report should render around one broken artifact
        return _Loaded(error=f"{path}: {type(e).__name__}: {e}")


@dataclass
class _Norms:
    delta: list[float]
    base: list[float]
    ft: list[float]
    eta_base: float
    eta_ft: float
    n: int


@dataclass
class _Slice:
    """Everything known about one dataset × layer."""

    dataset: str
    layer: int
    relative: float | None
    norms: _Loaded = field(default_factory=_Loaded)
    lens: _Loaded = field(default_factory=_Loaded)
    patch: _Loaded = field(default_factory=_Loaded)
    steer: _Loaded = field(default_factory=_Loaded)
    gens: _Loaded = field(default_factory=_Loaded)

    @property
    def anchor(self) -> str:
        return _anchor("ds", self.dataset, "L", self.layer)

    @property
    def title(self) -> str:
        rel = f" ({self.relative:.0%} depth)" if self.relative is not None else ""
        return f"{self.dataset} · layer {self.layer}{rel}"


def _load_norms(layout: RunLayout, dataset: str, layer: int) -> _Norms:
    from ..adl.collect import load_collected  # torch import only when needed

    c = load_collected(layout, dataset, layer)
    return _Norms(c.delta.double().norm(dim=-1).tolist(), c.base_mean.double().norm(dim=-1).tolist(),
                  c.ft_mean.double().norm(dim=-1).tolist(), float(c.eta_base), float(c.eta_ft), int(c.n))


def _gather(layout: RunLayout) -> tuple[dict[str, Any], list[_Slice]]:
    if not layout.manifest.exists():
        raise RunDirError(f"{layout.root} has no manifest.json; it is not a difflens run directory "
                          f"(run `difflens collect ... --out {layout.root}` first).")
    manifest = read_json(layout.manifest)
    layers = manifest.get("layers", [])
    slices = []
    for dataset in layout.collected_datasets():
        for entry in layers:
            li = int(entry["absolute"])
            s = _Slice(dataset, li, entry.get("relative"))
            s.norms = _try(layout.collect_file(dataset, li), lambda p, d=dataset, l=li: _load_norms(layout, d, l))
            s.lens = _try(layout.logit_lens(dataset, li), lambda p: load(LogitLensResult, p))
            s.patch = _try(layout.patchscope(dataset, li), lambda p: load(PatchscopeResult, p))
            s.steer = _try(layout.steering(dataset, li), lambda p: load(SteeringResult, p))
            s.gens = _try(layout.steering_generations(dataset, li), lambda p: load_jsonl(Generation, p))
            slices.append(s)
    return manifest, slices


# ---------------------------------------------------------------------------------------------
# small HTML helpers
# ---------------------------------------------------------------------------------------------
def _empty(stage: str, what: str = "") -> str:
    cmd = STAGE_COMMANDS.get(stage, f"difflens run CONFIG --stages {stage}")
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


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv(rows: Iterable[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------------
# SVG charts (hand-written, no dependencies)
# ---------------------------------------------------------------------------------------------
def _nice_ticks(vmax: float, n: int = 4) -> list[float]:
    if vmax <= 0:
        return [0.0]
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks, v = [], 0.0
    while v <= vmax * 1.0001:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _bar_chart(values: Sequence[float], *, labels: Sequence[str], refs: Sequence[tuple[float, str, str]] = (),
               points: Sequence[Sequence[float]] = (), y_label: str = "", x_label: str = "position j",
               width: int = 520, height: int = 230, bar_color: str = "#3b6fb6", title: str = "") -> str:
    """Bars (one per label), optional horizontal reference lines (value, text, css class), and
    optional dots per bar (e.g. per-prompt values)."""
    ml, mr, mt, mb = 52, 16, 14, 40
    pw, ph = width - ml - mr, height - mt - mb
    all_pts = [p for ps in points for p in ps]
    vmax = max([*values, *(r[0] for r in refs), *all_pts, 1e-12])
    ticks = _nice_ticks(vmax * 1.08)
    top = max(ticks[-1], vmax * 1.08)

    def y(v: float) -> float:
        return mt + ph - ph * (v / top)

    n = max(1, len(values))
    slot = pw / n
    bw = max(1.5, min(46.0, slot * 0.68))
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{esc(title or y_label)}">']
    if title:
        out.append(f"<title>{esc(title)}</title>")
    for t in ticks:
        yy = y(t)
        out.append(f'<line class="grid" x1="{ml}" x2="{ml + pw}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(f'<text class="tick" x="{ml - 6}" y="{yy + 3.5:.1f}" text-anchor="end">{esc(_fmt(t, 3))}</text>')
    every = max(1, math.ceil(n / 24))
    for i, v in enumerate(values):
        cx = ml + slot * (i + 0.5)
        yy = y(v)
        out.append(f'<rect x="{cx - bw / 2:.1f}" y="{yy:.1f}" width="{bw:.1f}" height="{mt + ph - yy:.1f}" '
                   f'fill="{bar_color}" rx="2"><title>{esc(labels[i])}: {esc(_fmt(v))}</title></rect>')
        if n <= 16 and not points:
            out.append(f'<text class="val" x="{cx:.1f}" y="{yy - 4:.1f}" text-anchor="middle">{esc(_fmt(v, 3))}</text>')
        if i % every == 0:
            out.append(f'<text class="tick" x="{cx:.1f}" y="{mt + ph + 15}" text-anchor="middle">{esc(labels[i])}</text>')
        if i < len(points):
            for p in points[i]:
                out.append(f'<circle cx="{cx:.1f}" cy="{y(p):.1f}" r="3" class="dot"><title>{esc(_fmt(p))}</title></circle>')
    placed: list[float] = []
    for v, text, cls in refs:
        yy = y(v)
        ty = yy - 5
        if any(abs(ty - p) < 13 for p in placed):  # labels of close lines: put this one below its line
            ty = yy + 13
        placed.append(ty)
        out.append(f'<line class="ref {cls}" x1="{ml}" x2="{ml + pw}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(f'<text class="reflabel {cls}" x="{ml + pw - 4}" y="{ty:.1f}" text-anchor="end">{esc(text)}</text>')
    out.append(f'<line class="axis" x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}"/>')
    out.append(f'<line class="axis" x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}"/>')
    out.append(f'<text class="axlabel" x="{ml + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{esc(x_label)}</text>')
    if y_label:
        out.append(f'<text class="axlabel" x="12" y="{mt + ph / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {mt + ph / 2:.1f})">{esc(y_label)}</text>')
    out.append("</svg>")
    return "".join(out)


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


def _header(layout: RunLayout, manifest: dict[str, Any]) -> str:
    models = manifest.get("models", {})
    rows = _model_rows(models)
    ds_rows = []
    for d in manifest.get("datasets", []):
        ds_rows.append([f"<b>{esc(d.get('name', '?'))}</b>", esc(_fmt(d.get("n_used"))),
                        esc(_fmt(d.get("n_skipped_short"))), esc(_fmt(d.get("n_requested"))),
                        esc(_fmt(d.get("n_available"))),
                        f'<code>{esc(d.get("content_hash", ""))}</code>' if d.get("content_hash") else ""])
    rows.append(("Datasets", _table(["dataset", "N used", "skipped (too short)", "requested", "available",
                                     "content hash"], ds_rows, "inner") if ds_rows else "none"))
    layer_txt = ", ".join(
        f"<b>{esc(e.get('absolute'))}</b>"
        + (f" <span class='muted'>(rel. {esc(_fmt(e.get('relative'), 3))})</span>" if e.get("relative") is not None else "")
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


def _stage_overview(layout: RunLayout, slices: list[_Slice]) -> str:
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
    ev = layout.evaluation().exists()
    ag = layout.agent().exists()
    rows = [
        ("collect", "mean activation differences δ̄_j, baselines, norms η", status(bool(col) and all(col), any(col))),
        ("lens", "Patchscope and logit lens", status(bool(lens) and all(lens), any(lens_any))),
        ("steer", "steering thresholds and steered generations", status(bool(steer) and all(steer), any(steer_any))),
        ("evaluate", "token relevance, steering similarity, causal effect, …", status(ev, False)),
        ("agent", "interpretability agent and hypothesis grades", status(ag, False)),
    ]
    return _table(["stage", "what", "status"], [[f"<code>{esc(a)}</code>", esc(b), c] for a, b, c in rows], "stages")


def _norms_section(slices: list[_Slice]) -> str:
    cards = []
    for s in slices:
        head = f"<h3>{esc(s.title)}</h3>"
        if s.norms.error:
            cards.append(f'<div class="card">{head}{_error(s.norms.error)}</div>')
            continue
        if not s.norms.ok:
            cards.append(f'<div class="card">{head}{_empty("collect", "for this layer")}</div>')
            continue
        nm: _Norms = s.norms.value
        labels = [str(j) for j in range(len(nm.delta))]
        chart = _bar_chart(nm.delta, labels=labels, y_label="‖δ̄_j‖",
                           refs=[(nm.eta_ft, f"η_ft = {_fmt(nm.eta_ft, 3)}", "eta-ft"),
                                 (nm.eta_base, f"η_base = {_fmt(nm.eta_base, 3)}", "eta-base")],
                           title=f"‖δ̄_j‖ per position, {s.title}")
        rows = [[esc(j), esc(_fmt(nm.delta[j])), esc(_fmt(nm.delta[j] / nm.eta_ft if nm.eta_ft else float("nan"), 3)),
                 esc(_fmt(nm.base[j])), esc(_fmt(nm.ft[j]))] for j in range(len(nm.delta))]
        table = _table(["j", "‖δ̄_j‖", "‖δ̄_j‖ / η_ft", "‖h̄_base_j‖", "‖h̄_ft_j‖"], rows, "num compact")
        cards.append(f'<div class="card">{head}<p class="muted small">N = {esc(nm.n)} samples · η (mean norm over '
                     f'positions ≥ 3): base {esc(_fmt(nm.eta_base, 4))}, finetuned {esc(_fmt(nm.eta_ft, 4))}</p>'
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
    head = (f'<div class="cellhead"><span class="badge scale">λ = {esc(_scale(e.chosen_scale))}</span>'
            f'<span class="muted small">{n_sel} of {len(toks)} selected · grader {esc(e.grader)}</span></div>')
    body = _chips(toks, selected=sel)
    extra = ""
    if e.rationale:
        extra += f'<div class="rationale">{esc(e.rationale)}</div>'
    if e.scales:
        rows = []
        for sc in e.scales:
            cls = ' class="chosen"' if abs(sc.scale - e.chosen_scale) < 1e-9 else ""
            toks8 = " ".join(f'<span class="mini" title="p={t.prob:.3g}">{_tok_html(t.token)}</span>'
                             for t in sc.tokens[:8])
            rows.append(f"<tr{cls}><td class='num'>{esc(_scale(sc.scale))}</td><td>{toks8}</td></tr>")
        extra += (f'<details class="scales"><summary>all {len(e.scales)} scales</summary>'
                  f'<table class="compact"><thead><tr><th>λ</th><th>top tokens</th></tr></thead>'
                  f'<tbody>{"".join(rows)}</tbody></table></details>')
    return head + body + extra


def _source_grid(res: Any, cell: Callable[[Any], str]) -> str:
    """A positions × (δ̄, h̄_base, h̄_ft) table of one lens result, each cell rendered by ``cell``."""
    rows = []
    for j in sorted({e.position for e in res.entries}):
        cells = [f'<td class="pos">j = {j}</td>']
        for src in SOURCES:
            try:
                cells.append(f"<td>{cell(res.get(src, j))}</td>")
            except KeyError:
                cells.append('<td><span class="muted">—</span></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{SOURCE_LABEL[src]}</th>" for src in SOURCES)
    return f'<table class="grid3"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _patchscope_block(s: _Slice) -> str:
    if s.patch.error:
        return _error(s.patch.error)
    if not s.patch.ok:
        return _empty("lens", "(Patchscope)")
    res: PatchscopeResult = s.patch.value
    prompts = "".join(f"<li><code>{esc(show_token(p))}</code></li>" for p in res.prompts)
    return (f'<p class="muted small">Top-{PATCHSCOPE_TOP} tokens at the chosen scale λ (the layer-{res.layer} output '
            f'at the last token of the identity prompts is replaced by λ · η_ft · v/‖v‖, η_ft = '
            f'{esc(_fmt(res.eta_ft, 4))}). <span class="chip sel inline"><span class="tok">highlighted</span></span> '
            f'tokens were selected as semantically coherent by the grader; '
            f'<span class="chip dim inline"><span class="tok">dimmed</span></span> ones were not. Bars: probability '
            f'relative to the top token; hover for exact values.</p>'
            f'<details class="prompts"><summary>identity prompts ({len(res.prompts)})</summary><ul>{prompts}</ul></details>'
            + _source_grid(res, _patch_cell))


def _lens_cell(pos: Sequence[TokenProb], neg: Sequence[TokenProb]) -> str:
    out = ['<div class="lensrow"><span class="sign">+</span>', _chips(pos[:LENS_TOP]), "</div>"]
    if neg:
        out += ['<div class="lensrow negrow"><span class="sign">−</span>', _chips(neg[:LENS_TOP], neg=True), "</div>"]
    return "".join(out)


def _lens_block(s: _Slice) -> str:
    if s.lens.error:
        return _error(s.lens.error)
    if not s.lens.ok:
        return _empty("lens", "(logit lens)")
    res: LogitLensResult = s.lens.value
    return (f'<p class="muted small">Top-{LENS_TOP} tokens of softmax(W_U · final_norm(+v)) and, in red, of −v.</p>'
            + _source_grid(res, lambda e: _lens_cell(e.top_positive, e.top_negative)))


def _steer_threshold_block(s: _Slice) -> str:
    if s.steer.error:
        return _error(s.steer.error)
    if not s.steer.ok:
        return _empty("steer", "(steering thresholds)")
    res: SteeringResult = s.steer.value
    th = sorted(res.thresholds, key=lambda t: t.position)
    chart = _bar_chart([t.alpha for t in th], labels=[str(t.position) for t in th],
                       points=[t.per_prompt for t in th], y_label="α", width=420, height=200, bar_color="#c0762c",
                       title=f"steering threshold α per position, {s.title}")
    rows = []
    for t in th:
        rows.append([esc(t.position), f"<b>{esc(_fmt(t.alpha, 3))}</b>",
                     esc(", ".join(_fmt(a, 3) for a in t.per_prompt)), esc(len(t.steps)),
                     esc(t.generations_used), esc(t.grader_calls)])
    table = _table(["j", "α", "per prompt", "search steps", "generations", "grader calls"], rows, "num compact")
    steps = []
    for t in th:
        srows = [[esc(show_token(st.prompt)[:80]), esc(_fmt(st.alpha, 4)), f"{esc(st.n_coherent)}/{esc(st.n_samples)}",
                  '<span class="badge ok">coherent</span>' if st.coherent else '<span class="badge no">incoherent</span>']
                 for st in t.steps]
        steps.append(f"<h5>position {esc(t.position)}</h5>" + _table(["prompt", "α", "coherent samples", "verdict"],
                                                                     srows, "compact"))
    return (f'<p class="muted small">Largest coherent α per position (bars: mean over search prompts; dots: each '
            f'prompt). Steering adds α · η_ft · δ̂_j (η_ft = {esc(_fmt(res.eta_ft, 4))}) at every position of layer '
            f'{esc(res.layer)}. Coherence grader: {esc(res.grader)}; final samples: {esc(res.samples_per_prompt)} per '
            f'prompt at T = {esc(_fmt(res.temperature, 3))}.</p>'
            f'<div class="chartrow">{chart}{table}</div>'
            f'<details><summary>binary-search steps</summary>{"".join(steps)}</details>')


def _steer_gen_block(s: _Slice) -> str:
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
    for g in gens:
        if g.prompt not in prompts:
            prompts.append(g.prompt)
        if g.position is None:
            unsteered[g.prompt].append(g)
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
        alphas = sorted({g.alpha for p in by_prompt.values() for g in p})
        alpha_txt = ", ".join(_fmt(a, 3) for a in alphas) or "—"
        label = f"Steering with δ̄ of position j = {j} · α = {alpha_txt}" if j is not None else "Unsteered samples"
        cards = []
        for p in prompts:
            un = sorted(unsteered.get(p, []), key=lambda g: g.sample)
            st = sorted(by_prompt.get(p, []), key=lambda g: g.sample)
            n = max(len(un), len(st))
            rows = []
            for i in range(n):
                u = f'<div class="gen">{esc(un[i].text)}</div>' if i < len(un) else '<span class="muted">—</span>'
                v = f'<div class="gen steered">{esc(st[i].text)}</div>' if i < len(st) else '<span class="muted">—</span>'
                rows.append(f"<tr><td>{u}</td><td>{v}</td></tr>")
            cards.append(f'<div class="prompt"><div class="ptext"><span class="plabel">prompt</span> {esc(p)}</div>'
                         f'<table class="sbs"><thead><tr><th>unsteered</th><th>steered (j = {esc(j)})</th></tr></thead>'
                         f'<tbody>{"".join(rows)}</tbody></table></div>')
        opened = " open" if k == 0 else ""
        out.append(f'<details class="steerpos"{opened}><summary>{esc(label)} '
                   f'<span class="muted small">({len(prompts)} prompts)</span></summary>{"".join(cards)}</details>')
    return (f'<p class="muted small">Finetuned model with and without steering, samples side by side. '
            f'One block per steered position; click to expand.</p>' + "".join(out))


def _slice_section(s: _Slice) -> str:
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
        return f'<span class="numv">{esc(_fmt(v))}</span>'
    return f'<span class="muted">{esc(_fmt(v))}</span>'


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
                return esc(", ".join(_fmt(x) for x in v))
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


def _json_stage(path: Path, stage: str) -> str:
    if not path.exists():
        return _empty(stage)
    try:
        data = read_json(path)
    except DifflensError as e:
        return _error(str(e))
    return f'<p class="muted small">from <code>{esc(path)}</code></p>{_generic(data)}'


# ---------------------------------------------------------------------------------------------
# page
# ---------------------------------------------------------------------------------------------
CSS = """
:root{--fg:#1d2330;--muted:#6b7280;--line:#e3e6ec;--bg:#f6f7f9;--card:#fff;--accent:#2f5fa7;
--sel:#0f7b6c;--selbg:#d9f2ec;--warn:#9a5b00;--warnbg:#fff6e5;--err:#a12a2a;--errbg:#fdecec;
--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace}
*{box-sizing:border-box}
html{scroll-behavior:smooth}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
.layout{display:grid;grid-template-columns:230px minmax(0,1fr);max-width:1500px;margin:0 auto}
nav.toc{position:sticky;top:0;align-self:start;height:100vh;overflow:auto;padding:22px 14px 22px 20px;
border-right:1px solid var(--line);font-size:13px}
nav.toc .brand{font-weight:700;font-size:16px;margin-bottom:12px;letter-spacing:.2px}
nav.toc ul{list-style:none;margin:0;padding:0}
nav.toc li{margin:3px 0}
nav.toc ul ul{padding-left:12px;border-left:2px solid var(--line);margin:3px 0 8px 2px}
nav.toc a{color:var(--fg);text-decoration:none}
nav.toc a:hover{color:var(--accent)}
main{padding:24px 32px 60px;min-width:0}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:36px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:15px;margin:22px 0 8px;color:#2b3445}
h4{font-size:14px;margin:18px 0 6px;color:#2b3445}
h5{font-size:13px;margin:12px 0 4px}
.sub{color:var(--muted);margin:0 0 18px}
.muted{color:var(--muted)}
.small{font-size:12.5px}
code{font-family:var(--mono);font-size:12.5px;background:#eef0f4;padding:1px 5px;border-radius:4px}
table{border-collapse:collapse;background:var(--card)}
th,td{border:1px solid var(--line);padding:6px 9px;vertical-align:top;text-align:left}
th{background:#f0f2f6;font-weight:600}
table.kv.header{width:100%}
table.kv>tbody>tr>th{width:170px;white-space:nowrap}
table.inner th,table.inner td{padding:3px 8px;font-size:13px}
table.compact th,table.compact td{padding:3px 8px;font-size:12.5px}
table.num td{font-variant-numeric:tabular-nums;text-align:right}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.stages td:first-child{white-space:nowrap}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:12px 0}
.card h3{margin-top:2px}
.chartrow{display:flex;gap:22px;align-items:flex-start;flex-wrap:wrap}
svg.chart{background:#fff;flex:none}
svg.chart .grid{stroke:#eceef2}
svg.chart .axis{stroke:#9aa1ad}
svg.chart text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;fill:#4b5563}
svg.chart .val{font-size:10px;fill:#1d2330}
svg.chart .axlabel{font-size:11.5px;fill:#374151}
svg.chart .ref{stroke-width:1.6;stroke-dasharray:6 4}
svg.chart .ref.eta-ft{stroke:#c2410c}
svg.chart .ref.eta-base{stroke:#6b7280;stroke-dasharray:2 3}
svg.chart .reflabel.eta-ft{fill:#c2410c;font-weight:600}
svg.chart .reflabel.eta-base{fill:#6b7280}
svg.chart .dot{fill:#fff;stroke:#7c3f0b;stroke-width:1.4}
.badge{display:inline-block;font-size:11.5px;font-weight:600;padding:1px 8px;border-radius:10px;white-space:nowrap}
.badge.ok{background:#dcf3e4;color:#17663a}
.badge.part{background:var(--warnbg);color:var(--warn)}
.badge.no{background:#eceef2;color:#555e6c}
.badge.scale{background:#e5edf9;color:#234c8c;font-family:var(--mono);margin-right:8px}
.empty{background:var(--warnbg);border:1px dashed #e3b66a;color:#5d3b00;border-radius:6px;padding:9px 12px;margin:8px 0}
.error{background:var(--errbg);border:1px solid #e7a3a3;color:var(--err);border-radius:6px;padding:9px 12px;margin:8px 0}
table.grid3{width:100%;table-layout:fixed}
table.grid3 th:first-child,table.grid3 td.pos{width:64px}
td.pos{font-weight:600;white-space:nowrap;color:#374151;background:#fafbfc}
.cellhead{margin-bottom:5px}
.chips{display:flex;flex-wrap:wrap;gap:4px}
.chip{display:inline-flex;flex-direction:column;border:1px solid #d5d9e0;border-radius:5px;padding:1px 6px 2px;
background:#fff;min-width:22px}
.chip .tok{font-family:var(--mono);font-size:12.5px;white-space:pre;line-height:1.35}
.chip .pbar{display:block;height:3px;background:#eef0f4;border-radius:2px;margin-top:1px}
.chip .pbar span{display:block;height:3px;background:#7d8aa0;border-radius:2px}
.chip.sel{background:var(--selbg);border-color:#7cc9b7;color:#0b4f45;font-weight:600}
.chip.sel .pbar span{background:var(--sel)}
.chip.dim{opacity:.5}
.ws{color:#9aa3b2;font-weight:400}
.chip.sel .ws{color:#5fae9c}
.chip.neg{border-color:#efc7c7;color:#8a2b2b;background:#fff8f8}
.chip.neg .pbar span{background:#d48a8a}
.chip.inline{display:inline-flex;vertical-align:middle;padding:0 5px}
.chip.inline .tok{font-size:11.5px}
.lensrow{display:flex;gap:6px;align-items:flex-start;margin:2px 0}
.lensrow .sign{font-weight:700;width:12px;color:#374151;padding-top:1px}
.negrow{margin-top:5px}
.mini{display:inline-block;font-family:var(--mono);font-size:12px;background:#f1f3f6;border-radius:4px;padding:0 5px;
margin:1px 2px;white-space:pre}
details{margin:6px 0}
details>summary{cursor:pointer;color:var(--accent);font-size:13px}
details.scales table tr.chosen td{background:var(--selbg)}
.rationale{font-size:12.5px;color:#4b5563;margin-top:5px;font-style:italic}
details.steerpos{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 14px;margin:10px 0}
details.steerpos>summary{font-size:14px;font-weight:600;color:#2b3445}
.prompt{margin:12px 0 16px}
.ptext{font-weight:600;margin-bottom:5px}
.plabel{display:inline-block;font-size:11px;font-weight:600;text-transform:uppercase;letter-spacing:.5px;
background:#e5edf9;color:#234c8c;border-radius:4px;padding:0 6px;margin-right:4px}
table.sbs{width:100%;table-layout:fixed}
table.sbs th{font-size:12.5px}
.gen{white-space:pre-wrap;word-wrap:break-word;font-size:13px;line-height:1.45}
.gen.steered{color:#5a2a00}
.longtext{white-space:pre-wrap;word-wrap:break-word;max-height:320px;overflow:auto;font-size:13px}
pre.json{font-family:var(--mono);font-size:12px;white-space:pre-wrap;margin:0}
.numv{font-variant-numeric:tabular-nums}
table.generic th,table.generic td{font-size:13px;padding:4px 8px}
ol{margin:2px 0;padding-left:22px}
footer{margin-top:40px;color:var(--muted);font-size:12px}
@media (max-width:900px){.layout{grid-template-columns:1fr}nav.toc{position:static;height:auto;border:0}}
@media print{nav.toc{display:none}.layout{display:block}details{display:block}}
"""


def _toc(slices: list[_Slice]) -> str:
    items = ['<li><a href="#overview">Run overview</a></li>', '<li><a href="#stages">Stages</a></li>',
             '<li><a href="#norms">Difference norms ‖δ̄_j‖</a></li>']
    for s in slices:
        items.append(f'<li><a href="#{s.anchor}">{esc(s.title)}</a><ul>'
                     f'<li><a href="#{s.anchor}-patchscope">Patchscope</a></li>'
                     f'<li><a href="#{s.anchor}-lens">Logit lens</a></li>'
                     f'<li><a href="#{s.anchor}-steer">Steering</a></li></ul></li>')
    items += ['<li><a href="#evaluation">Evaluation</a></li>', '<li><a href="#agent">Agent</a></li>']
    return f'<nav class="toc"><div class="brand">difflens report</div><ul>{"".join(items)}</ul></nav>'


def build_html(run_dir: str | Path) -> str:
    """The report as an HTML string (see :func:`render_report`)."""
    layout = RunLayout(run_dir)
    manifest, slices = _gather(layout)
    models = manifest.get("models", {})
    base = (models.get("base") or {}).get("spec", "?")
    ft = (models.get("finetuned") or {}).get("spec", "?")
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [
        f'<h1>Activation Difference Lens</h1><p class="sub"><b>{esc(ft)}</b> vs base <b>{esc(base)}</b> · run '
        f'<code>{esc(layout.root.resolve())}</code> · generated {esc(now)}</p>',
        f'<section id="overview"><h2>Run overview</h2>{_header(layout, manifest)}</section>',
        f'<section id="stages"><h2>Stages</h2>{_stage_overview(layout, slices)}</section>',
        f'<section id="norms"><h2>Difference norms ‖δ̄<sub>j</sub>‖</h2><p class="muted small">Norm of the mean '
        f'activation difference per position, with the finetuned model\'s mean activation norm η_ft (dashed) and '
        f'η_base (dotted) for reference.</p>{_norms_section(slices)}</section>',
    ]
    if not slices:
        body.append(f"<section><h2>Results</h2>{_empty('collect')}</section>")
    body += [_slice_section(s) for s in slices]
    body.append(f'<section id="evaluation"><h2>Evaluation</h2>{_json_stage(layout.evaluation(), "evaluate")}</section>')
    body.append(f'<section id="agent"><h2>Agent</h2>{_json_stage(layout.agent(), "agent")}</section>')
    if layout.llm_usage().exists():
        body.append(f'<section id="llm-usage"><h2>LLM usage</h2>{_json_stage(layout.llm_usage(), "evaluate")}</section>')
    body.append('<footer>Generated by difflens. Self-contained: no scripts, no network resources.</footer>')
    title = f"difflens · {ft} vs {base}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f'<div class="layout">{_toc(slices)}<main>{"".join(body)}</main></div></body></html>\n')


def render_report(run_dir: str | Path, out: Path | None = None) -> Path:
    """Write the self-contained HTML report of ``run_dir`` (default ``RUN/report.html``); return its path.

    Works on a run where only collection has finished: every later section shows how to run it.
    Raises :class:`~difflens.errors.RunDirError` if ``run_dir`` is not a run directory.
    """
    layout = RunLayout(run_dir)
    text = build_html(run_dir)
    path = Path(out) if out is not None else layout.report()
    atomic_write_text(path, text)
    return path


# ---------------------------------------------------------------------------------------------
# terminal summary
# ---------------------------------------------------------------------------------------------
def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def summary_lines(run_dir: str | Path, *, max_chars: int = 200) -> list[str]:
    """A short plain-text summary (no markup): per dataset × layer the grader-selected Patchscope
    tokens of δ̄_j per position, and one steered sample next to an unsteered one.

    Print with markup disabled (model text may contain brackets).
    """
    layout = RunLayout(run_dir)
    manifest, slices = _gather(layout)
    models = manifest.get("models", {})
    lines = [f"run {layout.root}: {(models.get('finetuned') or {}).get('spec', '?')} vs base "
             f"{(models.get('base') or {}).get('spec', '?')}"]
    for s in slices:
        lines.append(f"{s.title}:")
        if s.norms.ok:
            nm: _Norms = s.norms.value
            lines.append("  ‖δ̄_j‖: " + ", ".join(_fmt(x, 3) for x in nm.delta) + f"  (η_ft {_fmt(nm.eta_ft, 3)})")
        if s.patch.ok:
            res: PatchscopeResult = s.patch.value
            for e in sorted((e for e in res.entries if e.source == "delta"), key=lambda e: e.position):
                toks = e.selected_tokens or e.top_tokens(8)
                tag = "" if e.selected_tokens else " (none selected; top tokens)"
                lines.append(f"  Patchscope δ̄ j={e.position} λ={_scale(e.chosen_scale)}: "
                             + ", ".join(show_token(t) for t in toks[:12]) + tag)
        else:
            lines.append(f"  Patchscope: not run ({STAGE_COMMANDS['lens']})")
        if s.gens.ok and s.gens.value:
            gens: list[Generation] = s.gens.value
            st = [g for g in gens if g.position is not None]
            if s.steer.ok and st:
                # the position with the largest coherent α that has samples
                al = {t.position: t.alpha for t in s.steer.value.thresholds}
                best = max({g.position for g in st}, key=lambda j: (al.get(j, 0.0), -j))
                st = [g for g in st if g.position == best]
            if st:
                g = st[0]
                lines.append(f"  prompt: {_clip(g.prompt, max_chars)}")
                lines.append(f"  steered (j={g.position}, α={_fmt(g.alpha, 3)}): {_clip(g.text, max_chars)}")
                un = [u for u in gens if u.position is None and u.prompt == g.prompt]
                if un:
                    lines.append(f"  unsteered: {_clip(un[0].text, max_chars)}")
        else:
            lines.append(f"  steering: not run ({STAGE_COMMANDS['steer']})")
    return lines
