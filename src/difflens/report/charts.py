"""SVG charts for the report, hand-written with no dependencies: a bar chart with optional
reference lines and per-bar dots."""
from __future__ import annotations

import math
from typing import Sequence

from .text import esc, fmt


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


def bar_chart(values: Sequence[float], *, labels: Sequence[str], refs: Sequence[tuple[float, str, str]] = (),
              points: Sequence[Sequence[float]] = (), y_label: str = "", x_label: str = "position j",
              width: int = 520, height: int = 230, bar_color: str = "#3b6fb6", title: str = "",
              tick_labels: Sequence[str] | None = None) -> str:
    """Bars (one per label), optional horizontal reference lines (value, text, css class), and
    optional dots per bar (e.g. per-prompt values). ``labels`` name the bars (tooltips; under the axis,
    thinned to about 24); ``tick_labels``, when given, is what is written under each bar instead
    ("" for none: e.g. only the decades of a log-binned histogram)."""
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
        out.append(f'<text class="tick" x="{ml - 6}" y="{yy + 3.5:.1f}" text-anchor="end">{esc(fmt(t, 3))}</text>')
    every = max(1, math.ceil(n / 24))
    for i, v in enumerate(values):
        cx = ml + slot * (i + 0.5)
        yy = y(v)
        out.append(f'<rect x="{cx - bw / 2:.1f}" y="{yy:.1f}" width="{bw:.1f}" height="{mt + ph - yy:.1f}" '
                   f'fill="{bar_color}" rx="2"><title>{esc(labels[i])}: {esc(fmt(v))}</title></rect>')
        if n <= 16 and not points:
            out.append(f'<text class="val" x="{cx:.1f}" y="{yy - 4:.1f}" text-anchor="middle">{esc(fmt(v, 3))}</text>')
        tick = (tick_labels[i] if i < len(tick_labels) else "") if tick_labels is not None else (
            labels[i] if i % every == 0 else "")
        if tick:
            out.append(f'<text class="tick" x="{cx:.1f}" y="{mt + ph + 15}" text-anchor="middle">{esc(tick)}</text>')
        if i < len(points):
            for p in points[i]:
                out.append(f'<circle cx="{cx:.1f}" cy="{y(p):.1f}" r="3" class="dot"><title>{esc(fmt(p))}</title></circle>')
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


# Series colours: δ̄ first (strong), baselines and controls muted.
PALETTE = ("#2f5fa7", "#c2410c", "#0f7b6c", "#7c3aed", "#6b7280", "#b45309", "#be185d")


def _range_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round ticks spanning [lo, hi] (lo may be negative)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks, v = [], start
    while not ticks or ticks[-1] < hi - step * 1e-6:  # the last tick covers hi
        ticks.append(round(v, 10))
        v += step
    return ticks


def _frame(width: int, height: int, title: str, ticks: list[float], y, ml: int, mt: int, pw: float, ph: float,
           x_label: str, y_label: str) -> list[str]:
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{esc(title or y_label)}">']
    if title:
        out.append(f"<title>{esc(title)}</title>")
    for t in ticks:
        yy = y(t)
        out.append(f'<line class="{"axis" if abs(t) < 1e-12 and ticks[0] < 0 else "grid"}" x1="{ml}" '
                   f'x2="{ml + pw}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(f'<text class="tick" x="{ml - 6}" y="{yy + 3.5:.1f}" text-anchor="end">{esc(fmt(t, 3))}</text>')
    out.append(f'<line class="axis" x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}"/>')
    if x_label:
        out.append(f'<text class="axlabel" x="{ml + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                   f'{esc(x_label)}</text>')
    if y_label:
        out.append(f'<text class="axlabel" x="12" y="{mt + ph / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {mt + ph / 2:.1f})">{esc(y_label)}</text>')
    return out


def line_chart(series: Sequence[tuple[str, Sequence[float]]], *, labels: Sequence[str],
               bands: Sequence[tuple[float, float, str]] = (), y_label: str = "", x_label: str = "position j",
               width: int = 520, height: int = 240, title: str = "", y_min: float | None = None,
               y_max: float | None = None, tick_labels: Sequence[str] | None = None) -> str:
    """One line per (name, values) over ``labels`` (values may be negative), a legend, and optional
    horizontal bands (mean, std, label): a dotted line at the mean and a shaded ±std area —
    the baseline a series must clear. Under the axis: ``tick_labels`` when given ("" for none), else
    ``labels`` thinned to about 24."""
    ml, mr, mt, mb = 52, 16, 14, 40
    cols = 2 if any(len(name) > 16 for name, _ in series) else 3
    legend_h = 16 * ((len(series) + cols - 1) // cols)
    height += legend_h
    pw, ph = width - ml - mr, height - mt - mb - legend_h
    vals = [v for _, vs in series for v in vs] + [m + s for m, s, _ in bands] + [m - s for m, s, _ in bands]
    lo = min([*vals, 0.0]) if y_min is None else y_min
    hi = max([*vals, 1e-9]) if y_max is None else y_max
    pad = (hi - lo) * 0.06 or 1.0
    ticks = _range_ticks(lo - (pad if y_min is None and lo < 0 else 0), hi + (pad if y_max is None else 0))
    bottom, top = ticks[0], ticks[-1]

    def y(v: float) -> float:
        return mt + ph - ph * ((v - bottom) / (top - bottom))

    out = _frame(width, height, title, ticks, y, ml, mt, pw, ph, x_label, y_label)
    n = max(1, len(labels))
    slot = pw / n

    def x(i: int) -> float:
        return ml + slot * (i + 0.5)

    every = max(1, math.ceil(n / 24))
    for i, lab in enumerate(labels):
        tick = (tick_labels[i] if i < len(tick_labels) else "") if tick_labels is not None else (
            lab if i % every == 0 else "")
        if tick:
            out.append(f'<text class="tick" x="{x(i):.1f}" y="{mt + ph + 15}" text-anchor="middle">{esc(tick)}</text>')
    placed: list[float] = []
    for m, s, text in bands:
        out.append(f'<rect x="{ml}" y="{y(m + s):.1f}" width="{pw}" height="{max(y(m - s) - y(m + s), 0.5):.1f}" '
                   f'fill="#9aa1ad" opacity="0.18"><title>{esc(text)}: {esc(fmt(m))} ± {esc(fmt(s))}</title></rect>')
        out.append(f'<line class="ref" stroke="#6b7280" x1="{ml}" x2="{ml + pw}" y1="{y(m):.1f}" y2="{y(m):.1f}" '
                   f'stroke-dasharray="2 3"/>')
        ty = y(m) - 4
        while any(abs(ty - q) < 12 for q in placed):  # keep labels of close bands apart
            ty += 12
        placed.append(ty)
        out.append(f'<text class="tick" x="{ml + pw - 4}" y="{ty:.1f}" text-anchor="end">{esc(text)}</text>')
    for k, (name, vs) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vs))
        if len(vs) > 1:
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{2.4 if k == 0 else 1.6}"/>')
        for i, v in enumerate(vs):
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="{3.5 if k == 0 else 2.6}" fill="{color}">'
                       f'<title>{esc(name)} @ {esc(labels[i] if i < len(labels) else i)}: {esc(fmt(v))}</title></circle>')
    ly = height - legend_h - 2
    for k, (name, _) in enumerate(series):
        lx, row = ml + (k % cols) * (pw / cols), k // cols
        yy = ly + 16 * row
        out.append(f'<rect x="{lx:.1f}" y="{yy - 8:.1f}" width="12" height="4" fill="{PALETTE[k % len(PALETTE)]}"/>')
        out.append(f'<text class="tick" x="{lx + 16:.1f}" y="{yy - 3:.1f}">{esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def interval_chart(rows: Sequence[tuple[str, float, float]], *, x_label: str = "", width: int = 520,
                   title: str = "", ref: tuple[float, float, str] | None = None) -> str:
    """Horizontal mean ± std intervals, one row per (label, mean, std); ``ref`` (mean, std, label)
    is drawn as a shaded band across all rows (e.g. D_ft self-similarity)."""
    ml, mr, mt = 10 + 6 * max([len(r[0]) for r in rows] + [10]), 20, 10
    row_h = 22
    height = mt + row_h * len(rows) + 36
    pw = width - ml - mr
    vals = [m - s for _, m, s in rows] + [m + s for _, m, s in rows]
    if ref:
        vals += [ref[0] - ref[1], ref[0] + ref[1]]
    ticks = _range_ticks(min([*vals, 0.0]), max([*vals, 1e-9]))
    lo, hi = ticks[0], ticks[-1]

    def x(v: float) -> float:
        return ml + pw * (v - lo) / (hi - lo)

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{esc(title or x_label)}">']
    if title:
        out.append(f"<title>{esc(title)}</title>")
    base_y = mt + row_h * len(rows)
    for t in ticks:
        out.append(f'<line class="{"axis" if abs(t) < 1e-12 else "grid"}" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{mt}" '
                   f'y2="{base_y}"/>')
        out.append(f'<text class="tick" x="{x(t):.1f}" y="{base_y + 14}" text-anchor="middle">{esc(fmt(t, 3))}</text>')
    if ref:
        m, s, text = ref
        out.append(f'<rect x="{x(m - s):.1f}" y="{mt}" width="{max(x(m + s) - x(m - s), 0.5):.1f}" '
                   f'height="{base_y - mt}" fill="#9aa1ad" opacity="0.18"><title>{esc(text)}</title></rect>')
        out.append(f'<line stroke="#6b7280" stroke-dasharray="2 3" x1="{x(m):.1f}" x2="{x(m):.1f}" y1="{mt}" '
                   f'y2="{base_y}"/>')
    for i, (label, m, s) in enumerate(rows):
        yy = mt + row_h * i + row_h / 2
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<text class="tick" x="{ml - 8}" y="{yy + 4:.1f}" text-anchor="end">{esc(label)}</text>')
        out.append(f'<line stroke="{color}" stroke-width="2" x1="{x(m - s):.1f}" x2="{x(m + s):.1f}" y1="{yy:.1f}" '
                   f'y2="{yy:.1f}"/>')
        out.append(f'<circle cx="{x(m):.1f}" cy="{yy:.1f}" r="4" fill="{color}"><title>{esc(label)}: '
                   f'{esc(fmt(m))} ± {esc(fmt(s))}</title></circle>')
    if x_label:
        out.append(f'<text class="axlabel" x="{ml + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">'
                   f'{esc(x_label)}</text>')
    out.append("</svg>")
    return "".join(out)


#: Colours of the marks a grouped bar chart draws across its bars (baseline, control, ...).
MARK_COLORS = ("#111827", "#a21caf", "#b45309")


def grouped_bar_chart(groups: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, y_label: str = "",
                      width: int = 640, height: int = 250, title: str = "", y_max: float | None = None,
                      marks: Sequence[tuple[str, Sequence[Sequence[float | None]]]] = ()) -> str:
    """One cluster of bars per group (e.g. organism), one bar per series (e.g. source); values ≥ 0.
    ``marks``: (name, values[series][group]) drawn as a short horizontal line across each bar (e.g.
    the baseline and the control a method's bar must clear; None: no mark on that bar)."""
    ml, mr, mt, mb = 52, 16, 14, 58
    # legend columns: as many (≤ 3) as the longest name fits (tick text ≈ 6.2 px a character)
    longest = max([len(n) for n, _ in series] + [len(n) + 1 for n, _ in marks] + [1])
    cols = max(1, min(3, int((width - ml - mr) // (18 + 6.2 * longest))))
    legend_h = 16 * ((len(series) + len(marks) + cols - 1) // cols)
    height += legend_h
    pw, ph = width - ml - mr, height - mt - mb - legend_h
    mark_vals = [v for _, per in marks for vs in per for v in vs if v is not None]
    vmax = y_max if y_max is not None else max([v for _, vs in series for v in vs] + mark_vals + [1e-9]) * 1.08
    ticks = _nice_ticks(vmax)
    top = max(ticks[-1], vmax)

    def y(v: float) -> float:
        return mt + ph - ph * (max(v, 0.0) / top)

    out = _frame(width, height, title, ticks, y, ml, mt, pw, ph, "", y_label)
    slot = pw / max(1, len(groups))
    bw = max(2.0, min(18.0, slot * 0.8 / max(1, len(series))))
    for g, name in enumerate(groups):
        x0 = ml + slot * g + (slot - bw * len(series)) / 2
        for k, (sname, vs) in enumerate(series):
            if g >= len(vs):
                continue
            v = vs[g]
            out.append(f'<rect x="{x0 + k * bw:.1f}" y="{y(v):.1f}" width="{bw - 1:.1f}" height="{mt + ph - y(v):.1f}" '
                       f'fill="{PALETTE[k % len(PALETTE)]}"><title>{esc(name)} · {esc(sname)}: {esc(fmt(v))}</title></rect>')
            for m, (mname, per) in enumerate(marks):
                mv = per[k][g] if k < len(per) and g < len(per[k]) else None
                if mv is None:
                    continue
                color = MARK_COLORS[m % len(MARK_COLORS)]
                dash = ' stroke-dasharray="3 2"' if m % 2 else ""
                x1, x2, ym = x0 + k * bw - 1.5, x0 + (k + 1) * bw + 0.5, y(mv)
                out.append(f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{ym:.1f}" y2="{ym:.1f}" stroke="#fff" '
                           f'stroke-width="4.5" opacity="0.9"/>')  # a halo: the mark reads on any bar
                out.append(f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{ym:.1f}" y2="{ym:.1f}" stroke="{color}" '
                           f'stroke-width="2.2"{dash}><title>{esc(name)} · {esc(sname)} · {esc(mname)}: '
                           f'{esc(fmt(mv))}</title></line>')
        out.append(f'<text class="tick" x="{ml + slot * (g + 0.5):.1f}" y="{mt + ph + 14}" text-anchor="middle">'
                   f'{esc(name[:18])}</text>')
    out.append(f'<line class="axis" x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}"/>')
    ly = height - legend_h - 2
    for k, (sname, _) in enumerate(series):
        lx, yy = ml + (k % cols) * (pw / cols), ly + 16 * (k // cols)
        out.append(f'<rect x="{lx:.1f}" y="{yy - 9:.1f}" width="10" height="10" fill="{PALETTE[k % len(PALETTE)]}"/>')
        out.append(f'<text class="tick" x="{lx + 14:.1f}" y="{yy:.1f}">{esc(sname)}</text>')
    for m, (mname, _) in enumerate(marks):
        k = len(series) + m
        lx, yy = ml + (k % cols) * (pw / cols), ly + 16 * (k // cols)
        dash = ' stroke-dasharray="3 2"' if m % 2 else ""
        out.append(f'<line x1="{lx:.1f}" x2="{lx + 12:.1f}" y1="{yy - 4:.1f}" y2="{yy - 4:.1f}" '
                   f'stroke="{MARK_COLORS[m % len(MARK_COLORS)]}" stroke-width="2.2"{dash}/>')
        out.append(f'<text class="tick" x="{lx + 16:.1f}" y="{yy:.1f}">{esc(mname)}</text>')
    out.append("</svg>")
    return "".join(out)
