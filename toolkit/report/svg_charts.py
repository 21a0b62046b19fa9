"""Line and bar charts as inline SVG for the HTML report: no JavaScript, no files beside the page.

Colours from the Okabe-Ito palette (readable with colour-blindness).
"""
from __future__ import annotations

import math

from toolkit.report.html_text import esc, note

# Okabe-Ito colours: told apart by colour-blind readers and in greyscale print (with the markers).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


def nice_ticks(lo: float, hi: float, most: int = 6) -> tuple[list[float], int]:
    """Round tick values from ``lo`` to at least ``hi`` (steps of 1, 2, 2.5 or 5 times a power of ten,
    at most ``most`` ticks), and the decimals that write them: 0, 0.5, 1.0 ... never 0.80, 1.61, 2.41."""
    hi = hi if hi > lo else lo + 1.0
    span = hi - lo
    for mag in (10.0 ** k for k in range(math.floor(math.log10(span / most)) - 1, 40)):
        for unit in (1.0, 2.0, 2.5, 5.0):
            step = unit * mag
            first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
            if last - first + 1 <= most:
                digits = next(d for d in range(13) if abs(step * 10 ** d - round(step * 10 ** d)) < 1e-6)
                return [round(i * step, 12) for i in range(first, last + 1)], digits
    return [lo, hi], 2


def line_chart_svg(series: dict[str, list[tuple[float, float | None]]], title: str, y_label: str,
                   y_max: float | None = None, width: int = 720, height: int = 300) -> str:
    """An inline SVG line chart, one polyline (with markers) per series; None values leave gaps."""
    points = [(x, y) for pts in series.values() for x, y in pts if y is not None]
    if not points:
        return note(f"{title}: no values to draw")
    left, right, top, bottom = 56, 150, 28, 40
    pw, ph = width - left - right, height - top - bottom
    xs = [x for x, _ in points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    ys = [y for _, y in points]
    y1 = y_max if y_max is not None and max(ys) <= y_max else max(ys)
    ticks, digits = nice_ticks(min(0.0, min(ys)), y1 if y1 > min(0.0, min(ys)) else min(0.0, min(ys)) + 1)
    y0, y1 = ticks[0], ticks[-1]
    sx = lambda x: left + (x - x0) / (x1 - x0) * pw  # noqa: E731
    sy = lambda y: top + ph - (y - y0) / (y1 - y0) * ph  # noqa: E731
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{esc(title)}" font-size="14" font-family="sans-serif">',
           f'<text x="{left}" y="16" font-weight="bold">{esc(title)}</text>']
    for v in ticks:
        y = sy(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.{digits}f}</text>')
    step = max(1, math.ceil((max(xs) - min(xs)) / 8))  # whole epochs, at most about nine ticks
    x_ticks = list(range(int(math.floor(min(xs))), int(math.ceil(max(xs))) + 1, step))
    for v in x_ticks:
        out.append(f'<text x="{sx(v):.1f}" y="{top + ph + 16}" text-anchor="middle">{v:.0f}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>'
               f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">epoch</text>'
               f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f"{esc(y_label)}</text>")
    for n, (name, pts) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        runs, run = [], []
        for x, y in pts:
            if y is None:
                runs, run = runs + [run] if run else runs, []
            else:
                run.append(f"{sx(x):.1f},{sy(y):.1f}")
        runs += [run] if run else []
        for r in runs:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(r)}"/>')
        if len(pts) <= 40:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.8" fill="{colour}"/>'
                    for x, y in pts if y is not None]
        ly = top + 10 + 18 * n
        out.append(f'<line x1="{left + pw + 12}" x2="{left + pw + 34}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="3"/><text x="{left + pw + 40}" y="{ly + 4}">{esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart_svg(categories: list[str], series: dict[str, list[float | None]], title: str,
                  y_label: str = "AP50", width: int = 820, height: int = 320) -> str:
    """An inline SVG grouped bar chart (one group per category, one bar per series), values 0..1."""
    values = [v for vals in series.values() for v in vals if v is not None]
    if not categories or not values:
        return note(f"{title}: no values to draw")
    left, right, top, bottom = 56, 20, 46, 64
    pw, ph = width - left - right, height - top - bottom
    ticks, digits = nice_ticks(0.0, max(1.0, max(values)))
    y1 = ticks[-1]
    group = pw / len(categories)
    bar = group * 0.8 / max(1, len(series))
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{esc(title)}" font-size="14" font-family="sans-serif">',
           f'<text x="{left}" y="16" font-weight="bold">{esc(title)}</text>']
    for v in ticks:
        y = top + ph - v / y1 * ph
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.{digits}f}</text>')
    for n, (name, vals) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        for c, v in enumerate(vals):
            if v is None:
                continue
            x = left + c * group + group * 0.1 + n * bar
            h = max(0.0, v) / y1 * ph
            out.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                       f'fill="{colour}"><title>{esc(name)} {esc(categories[c])}: {v:.3f}</title></rect>')
        lx = left + n * 190
        out.append(f'<rect x="{lx}" y="24" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{lx + 17}" y="34">{esc(name)}</text>')
    for c, name in enumerate(categories):
        out.append(f'<text x="{left + (c + 0.5) * group:.1f}" y="{top + ph + 16}" text-anchor="middle">'
                   f"{esc(name)}</text>")
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>'
               f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f"{esc(y_label)}</text></svg>")
    return "".join(out)
