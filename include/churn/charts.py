"""Inline SVG line charts for the Churn page and the run report: no script, every label escaped.

A chart is a list of series over shared x labels (dates, score bins); each point may carry a 95 % interval,
drawn as a shaded band. The SVG is built here as text from numbers and escaped labels only, so nothing
from the data becomes active content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from markupsafe import Markup, escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


@dataclass
class Series:
    """One line: ``points`` maps an x label to ``(y, low, high)`` (``low``/``high`` None: no interval)."""

    name: str
    points: dict[str, tuple[float | None, float | None, float | None]] = field(default_factory=dict)


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at least ``raw``: tick values a reader takes in at a glance."""
    if not (math.isfinite(raw) and raw > 0):
        raw = 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw - 1e-12)


def line_chart(series: list[Series], x_labels: list[str], *, title: str, y_label: str = "",
               y_range: tuple[float, float] | None = None, width: int = 560, height: int = 220) -> Markup:
    """An SVG line chart (with interval bands) of ``series`` over ``x_labels``; a note when nothing is finite."""
    values = [v for s in series for p in s.points.values() for v in p if _finite(v)]
    if not values or not x_labels:
        return Markup('<p class="note">{}: no data yet.</p>').format(title)
    low, high = sorted(y_range) if y_range and all(map(_finite, y_range)) else (min(values), max(values))
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    step = _nice_step((high - low) / 4)
    low, high = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    ticks = [low + k * step for k in range(int(round((high - low) / step)) + 1)]
    left, right, top, bottom = 52, 12, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / len(x_labels))

    def y(v: float) -> float:
        return top + plot_h * (1 - (min(max(v, low), high) - low) / (high - low))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>']
    for v in ticks:
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.4g}</text>')
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + plot_w}" y2="{y(v):.1f}" stroke="#eee"/>')
    step = max(1, math.ceil(len(x_labels) / 8))
    for i, label in enumerate(x_labels):
        if i % step == 0:
            parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">'
                         f'{escape(label)}</text>')
    if y_label:
        parts.append(f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="10" transform="rotate(-90 12 '
                     f'{top + plot_h / 2:.1f})" text-anchor="middle">{escape(y_label)}</text>')
    for n, s in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        idx = [(i, s.points[label]) for i, label in enumerate(x_labels) if label in s.points]
        band = [(i, p) for i, p in idx if _finite(p[1]) and _finite(p[2])]
        if len(band) > 1:
            outline = [f"{x(i):.1f},{y(p[2]):.1f}" for i, p in band] + [
                f"{x(i):.1f},{y(p[1]):.1f}" for i, p in reversed(band)]
            parts.append(f'<polygon points="{" ".join(outline)}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
        for i, p in band:  # an interval as a whisker too (a single point has no band)
            parts.append(f'<line x1="{x(i):.1f}" y1="{y(p[1]):.1f}" x2="{x(i):.1f}" y2="{y(p[2]):.1f}" '
                         f'stroke="{color}" stroke-opacity="0.6"/>')
        line = [f"{x(i):.1f},{y(p[0]):.1f}" for i, p in idx if _finite(p[0])]
        if len(line) > 1:
            parts.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="{color}" stroke-width="2"/>')
        for point in line:
            cx, cy = point.split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
        parts.append(f'<rect x="{left + 8 + 130 * (n % 4)}" y="{height - 14 - 12 * (n // 4)}" width="10" height="3" '
                     f'fill="{color}"/><text x="{left + 22 + 130 * (n % 4)}" y="{height - 10 - 12 * (n // 4)}" '
                     f'font-size="10">{escape(s.name[:24])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
