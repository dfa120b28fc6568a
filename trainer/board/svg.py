"""Small SVG charts drawn on the server: line charts for curves, bars for label histograms.

Plain SVG text, no plotting library: the page inserts it as it is, a browser draws it, and tests
read the points back (each series is one ``<polyline class="series" data-series=NAME
data-n=COUNT>``). Every piece of text that comes from a file (run names, output names) goes
through XML escaping, so a log cannot inject markup into the page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

__all__ = ["Series", "line_chart", "bar_chart", "nice_ticks", "PALETTE"]

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
_M = {"left": 62, "right": 14, "top": 26, "bottom": 34}


@dataclass
class Series:
    """One line (or set of markers) on a chart; non-finite values are left out of it."""

    name: str
    points: Sequence[tuple[float, float]]
    colour: str = ""
    dashed: bool = False
    markers: bool = False
    line: bool = True
    hollow: Sequence[bool] = field(default_factory=list)   # per point, for markers: drawn open

    def finite(self, ylog: bool = False) -> list[tuple[float, float]]:
        return [(float(x), float(y)) for x, y in self.points
                if math.isfinite(x) and math.isfinite(y) and (y > 0 or not ylog)]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _log_ticks(e0: float, e1: float) -> list[float]:
    """Ticks for a log axis spanning 10**e0..10**e1: powers of ten, and 2 and 5 times them when
    the span is short (an lr stepping by 0.9 stays inside one decade)."""
    mults = (1,) if e1 - e0 > 2 else (1, 2, 5)
    ticks = [m * 10 ** e for e in range(math.floor(e0), math.ceil(e1) + 1) for m in mults]
    inside = [t for t in ticks if e0 <= math.log10(t) <= e1]
    if len(inside) >= 2:
        return inside
    return [t for t in nice_ticks(10 ** e0, 10 ** e1, 3) if t > 0]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:.6g}"


def _range(values: list[float], pad: float = 0.05) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if lo == hi:
        span = abs(lo) * 0.1 or 1.0
        return lo - span, hi + span
    extra = (hi - lo) * pad
    return lo - extra, hi + extra


def _frame(width: int, height: int, title: str, css_class: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class={quoteattr(css_class)} width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="#fff"/>',
            f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="12" font-weight="bold">{escape(title)}</text>']


def line_chart(series: Sequence[Series], *, title: str, xlabel: str = "", ylabel: str = "",
               width: int = 640, height: int = 220, ylog: bool = False,
               y_range: tuple[float, float] | None = None, x_range: tuple[float, float] | None = None,
               css_class: str = "chart", empty_text: str = "no points yet") -> str:
    """An SVG line chart of `series` against a shared x axis (log y axis when `ylog`)."""
    out = _frame(width, height, title, css_class)
    pw, ph = width - _M["left"] - _M["right"], height - _M["top"] - _M["bottom"]
    pts = {id(s): s.finite(ylog) for s in series}
    xs = [x for p in pts.values() for x, _ in p]
    ys = [math.log10(y) if ylog else y for p in pts.values() for _, y in p]
    if not xs:
        out.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" fill="#888">'
                   f'{escape(empty_text)}</text></svg>')
        return "\n".join(out)
    x0, x1 = x_range or _range(xs, 0.02)
    y0, y1 = y_range or _range(ys)
    if ylog and y_range:
        y0, y1 = math.log10(y_range[0]), math.log10(y_range[1])

    def sx(x: float) -> float:
        return _M["left"] + (x - x0) / ((x1 - x0) or 1) * pw

    def sy(y: float) -> float:
        v = math.log10(y) if ylog else y
        return _M["top"] + ph - (v - y0) / ((y1 - y0) or 1) * ph

    out.append(f'<rect x="{_M["left"]}" y="{_M["top"]}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in nice_ticks(x0, x1, 6):
        X = sx(t)
        out.append(f'<line x1="{X:.1f}" y1="{_M["top"]}" x2="{X:.1f}" y2="{_M["top"] + ph}" stroke="#eee"/>')
        out.append(f'<text x="{X:.1f}" y="{_M["top"] + ph + 14}" text-anchor="middle">{_fmt(t)}</text>')
    yticks = _log_ticks(y0, y1) if ylog else nice_ticks(y0, y1, 4)
    for t in yticks:
        Y = sy(t)
        if not (_M["top"] - 0.5 <= Y <= _M["top"] + ph + 0.5):
            continue
        out.append(f'<line x1="{_M["left"]}" y1="{Y:.1f}" x2="{_M["left"] + pw}" y2="{Y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{_M["left"] - 4}" y="{Y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    if xlabel:
        out.append(f'<text x="{_M["left"] + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>')
    if ylabel:
        out.append(f'<text transform="translate(12 {_M["top"] + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
                   f'{escape(ylabel)}</text>')
    legend_y = _M["top"] + 12
    for i, s in enumerate(series):
        colour = s.colour or PALETTE[i % len(PALETTE)]
        p = pts[id(s)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in p)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        stroke = colour if s.line else "none"
        out.append(f'<polyline class="series" data-series={quoteattr(s.name)} data-n="{len(p)}" points="{coords}" '
                   f'fill="none" stroke="{stroke}" stroke-width="1.5"{dash}><title>{escape(s.name)}</title></polyline>')
        if s.markers:
            hollow = list(s.hollow) + [False] * len(s.points)
            kept = [(x, y, h) for (x, y), h in zip(s.points, hollow)
                    if math.isfinite(x) and math.isfinite(y) and (y > 0 or not ylog)]
            for x, y, h in kept:
                fill = "#fff" if h else colour
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{fill}" stroke="{colour}"/>')
        if s.name:
            lx = _M["left"] + pw - 6
            out.append(f'<line x1="{lx - 150}" y1="{legend_y - 4}" x2="{lx - 134}" y2="{legend_y - 4}" '
                       f'stroke="{colour}" stroke-width="2"{dash}/>')
            out.append(f'<text x="{lx - 130}" y="{legend_y}">{escape(s.name[:28])}</text>')
            legend_y += 13
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str, xlabel: str = "", ylabel: str = "",
              width: int = 640, height: int = 200, css_class: str = "chart bars") -> str:
    """An SVG bar chart, one ``<rect class="bar" data-label=L data-value=V>`` per bar."""
    out = _frame(width, height, title, css_class)
    if not bars:
        out.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "\n".join(out)
    pw, ph = width - _M["left"] - _M["right"], height - _M["top"] - _M["bottom"]
    top = max(v for _, v in bars) or 1.0
    step = pw / len(bars)
    label_every = max(1, math.ceil(len(bars) / 40))
    for t in nice_ticks(0, top, 4):
        Y = _M["top"] + ph - t / top * ph
        out.append(f'<line x1="{_M["left"]}" y1="{Y:.1f}" x2="{_M["left"] + pw}" y2="{Y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{_M["left"] - 4}" y="{Y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for i, (label, value) in enumerate(bars):
        h = value / top * ph
        x = _M["left"] + i * step
        out.append(f'<rect class="bar" data-label={quoteattr(label)} data-value="{value:g}" x="{x + step * 0.1:.1f}" '
                   f'y="{_M["top"] + ph - h:.1f}" width="{max(step * 0.8, 0.5):.1f}" height="{h:.1f}" fill="{PALETTE[0]}">'
                   f'<title>{escape(label)}: {value:g}</title></rect>')
        if i % label_every == 0:
            out.append(f'<text x="{x + step / 2:.1f}" y="{_M["top"] + ph + 13}" text-anchor="middle">{escape(label)}</text>')
    if xlabel:
        out.append(f'<text x="{_M["left"] + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>')
    if ylabel:
        out.append(f'<text transform="translate(12 {_M["top"] + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
                   f'{escape(ylabel)}</text>')
    out.append("</svg>")
    return "\n".join(out)
