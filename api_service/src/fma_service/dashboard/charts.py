"""Line charts as plain data for an SVG template: no chart library, no script, works offline.

The server computes every coordinate, so a chart is the same in any browser, readable without
JavaScript, and testable as data. Each chart is also shown as a table for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 40


@dataclass(frozen=True)
class Point:
    round_number: int
    value: float
    x: float
    y: float


@dataclass(frozen=True)
class Tick:
    label: str
    position: float


@dataclass(frozen=True)
class LineChart:
    """One series of values per round, fitted into a ``WIDTH`` × ``HEIGHT`` box."""

    key: str
    title: str
    description: str
    points: tuple[Point, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    top: int = TOP
    bottom_edge: int = HEIGHT - BOTTOM

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


def nice_step(span: float, count: int = 4) -> float:
    """A round step (1, 2 or 5 times a power of ten) that cuts ``span`` into about ``count`` parts."""
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_chart(*, key: str, title: str, description: str, series: Sequence[tuple[int, float]]) -> LineChart:
    """Fit ``(round, value)`` pairs, in round order, into the chart box with round-numbered axes."""
    values = [v for _, v in series]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = nice_step(high - low)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    rounds = [r for r, _ in series]
    first, last = (min(rounds), max(rounds)) if rounds else (1, 1)
    last = max(last, first + 1)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(r: float) -> float:
        return LEFT + (r - first) / (last - first) * inner_w

    def y(v: float) -> float:
        return TOP + (high - v) / (high - low) * inner_h

    x_step = max(1, math.ceil((last - first) / 10))
    y_count = round((high - low) / step)
    return LineChart(
        key=key,
        title=title,
        description=description,
        points=tuple(Point(r, v, x(r), y(v)) for r, v in series),
        x_ticks=tuple(Tick(str(r), x(r)) for r in range(first, last + 1, x_step)),
        y_ticks=tuple(Tick(_label(low + i * step), y(low + i * step)) for i in range(y_count + 1)),
    )
