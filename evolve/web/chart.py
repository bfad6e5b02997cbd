"""The fitness-per-generation chart of a run page, drawn on the server as inline SVG.

Inline SVG needs no script and no asset from a CDN (the machines that serve it may have no
internet), prints and screenshots as it looks, and is easy to test: the series are
<polyline> elements with ids, every point a <circle> with a <title> tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 300  # wide enough for ~100 generations of points, short enough to scan
_MARGIN = {"left": 64, "right": 110, "top": 16, "bottom": 40}  # right: room for the legend
SERIES = (  # (column of `generations`, label, colour); colours tell apart in greyscale too
    ("best", "best", "#1b6f3a"),
    ("mean", "mean", "#3465a4"),
    ("worst", "min", "#b0b0b0"),
)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def fitness_svg(
    stats: Sequence[Mapping[str, Any]], title: str = "Fitness per generation"
) -> Markup:
    """best/mean/min fitness of each generation (rows of `generations`) as an SVG line chart."""
    # A crafted file may hold text where numbers belong: such a row is left out, not drawn.
    points = [
        {k: v for k, v in s.items() if k == "generation" or _number(v)}
        for s in stats
        if _number(s.get("best")) and isinstance(s.get("generation"), int)
    ]
    if not points:
        return Markup('<p class="empty">No generation written yet.</p>')
    gens = [int(s["generation"]) for s in points]
    values = [float(s[col]) for s in points for col, _, _ in SERIES if s.get(col) is not None]
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad
    g_low, g_high = min(gens), max(gens)
    plot_w = WIDTH - _MARGIN["left"] - _MARGIN["right"]
    plot_h = HEIGHT - _MARGIN["top"] - _MARGIN["bottom"]

    def x(gen: float) -> float:
        span = g_high - g_low
        frac = 0.5 if span == 0 else (gen - g_low) / span
        return _MARGIN["left"] + frac * plot_w

    def y(value: float) -> float:
        return _MARGIN["top"] + (high - value) / (high - low) * plot_h

    parts = [
        f'<svg id="fitness-chart" class="fitness-chart" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-labelledby="fitness-chart-title">',
        f'<title id="fitness-chart-title">{escape(title)}</title>',
        f'<rect x="{_MARGIN["left"]}" y="{_MARGIN["top"]}" width="{plot_w}" height="{plot_h}" '
        'fill="#fafafa" stroke="#ccc"/>',
    ]
    for tick in _ticks(low, high):
        ty = y(tick)
        parts.append(
            f'<line x1="{_MARGIN["left"]}" x2="{_MARGIN["left"] + plot_w}" y1="{ty:.1f}" '
            f'y2="{ty:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{_MARGIN["left"] - 6}" y="{ty + 4:.1f}" text-anchor="end" '
            f'font-size="11">{_label(tick)}</text>'
        )
    step = max(1, math.ceil((g_high - g_low + 1) / 10))  # at most ~10 generation labels
    for gen in range(g_low, g_high + 1, step):
        parts.append(
            f'<text x="{x(gen):.1f}" y="{HEIGHT - _MARGIN["bottom"] + 16}" '
            f'text-anchor="middle" font-size="11">{gen}</text>'
        )
    parts.append(
        f'<text x="{_MARGIN["left"] + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle" '
        'font-size="12">generation</text>'
        f'<text x="14" y="{_MARGIN["top"] + plot_h / 2:.1f}" text-anchor="middle" '
        f'font-size="12" transform="rotate(-90 14 {_MARGIN["top"] + plot_h / 2:.1f})">'
        "fitness</text>"
    )
    for i, (col, label, colour) in enumerate(SERIES):
        series = [(s["generation"], float(s[col])) for s in points if s.get(col) is not None]
        if not series:
            continue
        coords = " ".join(f"{x(g):.1f},{y(v):.1f}" for g, v in series)
        parts.append(
            f'<polyline id="series-{col}" class="series" points="{coords}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        for g, v in series:
            parts.append(
                f'<circle cx="{x(g):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}">'
                f"<title>generation {g}: {label} {v:.4f}</title></circle>"
            )
        ly = _MARGIN["top"] + 14 + i * 18
        lx = WIDTH - _MARGIN["right"] + 12
        parts.append(
            f'<line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
            f'stroke-width="2"/><text x="{lx + 24}" y="{ly}" font-size="12">{label}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
