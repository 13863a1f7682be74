"""Line charts with axes for the terminal, drawn by plotext and handed to rich as styled text."""

from __future__ import annotations

import math

import plotext
from rich.text import Text

MIN_WIDTH = 24
MIN_HEIGHT = 6
Y_TICKS = 4
X_TICKS = 4


def tick_label(value: float) -> str:
    """Short axis label: 3 significant digits, k/M/G for large values, scientific for tiny ones."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= div:
            return f"{value / div:.3g}{suffix}"
    if magnitude < 1e-2:
        return f"{value:.1e}"
    return f"{value:.3g}"


def _ticks(lo: float, hi: float, n: int) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def line_chart(xs: list[float], ys: list[float], title: str, width: int, height: int, xlabel: str = "step") -> Text:
    """``ys`` over ``xs`` in ``width`` × ``height`` cells; points that are NaN are left out."""
    points = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if not points:
        return Text(f"{title}: no data yet", style="dim")
    px, py = zip(*points)
    plotext.clf()
    plotext.plotsize(max(MIN_WIDTH, width), max(MIN_HEIGHT, height))
    plotext.theme("clear")
    plotext.plot(list(px), list(py), marker="braille")
    plotext.title(title)
    plotext.xlabel(xlabel)
    y_ticks = _ticks(min(py), max(py), Y_TICKS)
    plotext.yticks(y_ticks, [tick_label(v) for v in y_ticks])
    x_ticks = sorted({round(v) for v in _ticks(min(px), max(px), X_TICKS)})
    plotext.xticks(x_ticks, [str(v) for v in x_ticks])
    return Text.from_ansi(plotext.build())


def lines_chart(series: dict[str, tuple[list[float], list[float]]], title: str, width: int, height: int) -> Text:
    """Several named ``(xs, ys)`` lines on shared axes, with a legend; NaN points are left out."""
    series = {
        name: tuple(zip(*[(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)])) or ((), ())
        for name, (xs, ys) in series.items()
    }
    series = {name: pts for name, pts in series.items() if pts[0]}
    if not series:
        return Text(f"{title}: no data", style="dim")
    plotext.clf()
    plotext.plotsize(max(MIN_WIDTH, width), max(MIN_HEIGHT, height))
    plotext.theme("clear")
    for name, (px, py) in series.items():
        plotext.plot(list(px), list(py), marker="braille", label=name)
    plotext.title(title)
    plotext.xlabel("step")
    all_x = [x for px, _ in series.values() for x in px]
    all_y = [y for _, py in series.values() for y in py]
    y_ticks = _ticks(min(all_y), max(all_y), Y_TICKS)
    plotext.yticks(y_ticks, [tick_label(v) for v in y_ticks])
    x_ticks = sorted({round(v) for v in _ticks(min(all_x), max(all_x), X_TICKS)})
    plotext.xticks(x_ticks, [str(v) for v in x_ticks])
    return Text.from_ansi(plotext.build())
