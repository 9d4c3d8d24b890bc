"""Line charts as PNG bytes, drawn by matplotlib (Agg backend), for the experiment report.

They look like every other ML plot: real fonts, lower-case labels, tick labels with
matplotlib's formatting, a legend, a title, a light grid. matplotlib is imported inside
the functions only, so importing vasticlaude stays fast and only `report` pays for it.
No pyplot: a Figure on an Agg canvas has no global state and never opens a window.

  line_chart(series, title, x_label, y_label, width=960, height=540, marks=()) -> bytes
  write_chart(path, series, title, x_label, y_label, ...) -> Path
  draw(...) -> matplotlib Figure   (what both render; tests read its texts)

`series` is {name: [(x, y), ...]}; `marks` are labelled vertical lines, [(x, label)]
(the report marks where a run moved to another instance). Empty input gives a chart
saying "no data"; non-finite points are dropped; a single point or constant values get
matplotlib's padded axis, so every input yields a valid PNG.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Iterable

Point = tuple[float, float]
Color = tuple[int, int, int]

# matplotlib's tab10, in order: distinct on white and to colour-blind readers first.
PALETTE: list[Color] = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
LINE_STYLES = ("-", "--", ":", "-.")  # beyond ten series the colours repeat with another dash
MAX_POINTS = 2000  # per series: more than the plot has pixels, and keeps huge logs fast
MARKERS_UP_TO = 40  # a series this short gets a dot per point (a lone point would be invisible)
DPI = 150


def line_chart(series: dict[str, list[Point]], title: str, x_label: str, y_label: str,
               width: int = 960, height: int = 540, marks: Iterable[tuple[float, str]] = ()) -> bytes:
    """A PNG (width × height pixels) line chart of `series`; a "no data" chart when nothing is plottable."""
    figure = draw(series, title, x_label, y_label, width, height, marks)
    buffer = io.BytesIO()
    figure.canvas.print_png(buffer)
    return buffer.getvalue()


def draw(series: dict[str, list[Point]], title: str, x_label: str, y_label: str,
         width: int = 960, height: int = 540, marks: Iterable[tuple[float, str]] = ()):
    """The chart as a matplotlib Figure on an Agg canvas (what line_chart renders)."""
    figure, _canvas = _figure(max(int(width), 240), max(int(height), 160))
    axes = figure.add_subplot()
    clean = clean_series(series)
    clean, x_scale, y_scale = _within_range(clean)
    marks = [(float(x) / x_scale, label) for x, label in marks or () if _finite(x)]
    axes.set_title(_short(title, 80))
    axes.set_xlabel(_short(x_label, 80) + _scaled(x_scale))
    axes.set_ylabel(_short(y_label, 50) + _scaled(y_scale))
    if clean:
        for n, (name, points) in enumerate(clean.items()):
            xs, ys = zip(*points)
            axes.plot(xs, ys, label=_short(name, 30), color=_hex(PALETTE[n % len(PALETTE)]),
                      linestyle=LINE_STYLES[(n // len(PALETTE)) % len(LINE_STYLES)], linewidth=1.6,
                      marker="o" if len(points) <= MARKERS_UP_TO else None, markersize=3)
        _marks(axes, marks, clean)
        axes.grid(True, color="#e4e4e4", linewidth=0.8)
        axes.set_axisbelow(True)
        axes.legend(loc="best", fontsize="small", frameon=True, framealpha=0.85,
                    ncol=2 if len(clean) > 7 else 1)
    else:
        axes.set_xticks([])
        axes.set_yticks([])
        axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center",
                  fontsize="x-large", color="#777777")
    figure.tight_layout(pad=0.6)
    return figure


def write_chart(path: str | Path, series: dict[str, list[Point]], title: str, x_label: str, y_label: str,
                width: int = 960, height: int = 540, marks: Iterable[tuple[float, str]] = ()) -> Path:
    """Render and write a chart; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(line_chart(series, title, x_label, y_label, width, height, marks))
    return path


def clean_series(series: dict[str, list[Point]]) -> dict[str, list[Point]]:
    """Finite points only, sorted by x, thinned to MAX_POINTS; empty series dropped."""
    out: dict[str, list[Point]] = {}
    for name, points in (series or {}).items():
        good = sorted((float(x), float(y)) for x, y in points if _finite(x) and _finite(y))
        if len(good) > MAX_POINTS:
            every = math.ceil(len(good) / MAX_POINTS)
            good = good[::every] + ([good[-1]] if (len(good) - 1) % every else [])
        if good:
            out[str(name)] = good
    return out


# ----- helpers -------------------------------------------------------------------------------
def _figure(width: int, height: int):
    """A Figure of exactly width × height pixels on an Agg canvas (matplotlib loads here, once)."""
    import matplotlib
    matplotlib.use("Agg")  # never a GUI backend, also when a display is set
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    return figure, FigureCanvasAgg(figure)


def _marks(axes, marks: Iterable[tuple[float, str]], clean: dict[str, list[Point]]) -> None:
    """Dashed vertical lines with a small label at the top, only where they fall on the data's x range."""
    lo = min(p[0] for pts in clean.values() for p in pts)
    hi = max(p[0] for pts in clean.values() for p in pts)
    for x, label in marks or ():
        if not lo <= float(x) <= hi:
            continue
        axes.axvline(float(x), color="#555555", linestyle="--", linewidth=0.9, zorder=1)
        right_half = hi > lo and float(x) > (lo + hi) / 2
        axes.annotate(_short(label, 60), xy=(float(x), 1.0), xycoords=("data", "axes fraction"),
                      xytext=(-3 if right_half else 3, -3), textcoords="offset points",
                      ha="right" if right_half else "left", va="top", fontsize="x-small", color="#444444")


def _within_range(clean: dict[str, list[Point]]) -> tuple[dict[str, list[Point]], float, float]:
    """Values near the float limit overflow matplotlib's transforms: divide them by a power of ten."""
    def scale(values: list[float]) -> float:
        big = max((abs(v) for v in values), default=0.0)
        return 10.0 ** math.floor(math.log10(big)) if big > 1e300 else 1.0
    x_scale = scale([p[0] for pts in clean.values() for p in pts])
    y_scale = scale([p[1] for pts in clean.values() for p in pts])
    if x_scale == y_scale == 1.0:
        return clean, 1.0, 1.0
    return {k: [(x / x_scale, y / y_scale) for x, y in pts] for k, pts in clean.items()}, x_scale, y_scale


def _scaled(factor: float) -> str:
    return "" if factor == 1.0 else f" (×1e{round(math.log10(factor))})"


def _hex(color: Color) -> str:
    return "#%02x%02x%02x" % color


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _short(text: object, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"
