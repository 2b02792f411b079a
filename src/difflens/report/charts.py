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
        out.append(f'<text class="tick" x="{ml - 6}" y="{yy + 3.5:.1f}" text-anchor="end">{esc(fmt(t, 3))}</text>')
    every = max(1, math.ceil(n / 24))
    for i, v in enumerate(values):
        cx = ml + slot * (i + 0.5)
        yy = y(v)
        out.append(f'<rect x="{cx - bw / 2:.1f}" y="{yy:.1f}" width="{bw:.1f}" height="{mt + ph - yy:.1f}" '
                   f'fill="{bar_color}" rx="2"><title>{esc(labels[i])}: {esc(fmt(v))}</title></rect>')
        if n <= 16 and not points:
            out.append(f'<text class="val" x="{cx:.1f}" y="{yy - 4:.1f}" text-anchor="middle">{esc(fmt(v, 3))}</text>')
        if i % every == 0:
            out.append(f'<text class="tick" x="{cx:.1f}" y="{mt + ph + 15}" text-anchor="middle">{esc(labels[i])}</text>')
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
