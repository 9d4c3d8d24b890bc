"""Line charts as PNG bytes, in pure Python (zlib + struct), for the experiment report.

The report must render on any machine vasticlaude runs on, offline and without a
plotting stack: matplotlib is heavy and Pillow is only here by accident (a `vastai`
dependency), so neither is relied on. What a report needs is small: axes with a few
numeric ticks, one coloured polyline per series, a legend, a title, and text drawn
from a built-in 5x7 bitmap font (upper case; lower case is drawn as upper case).

  line_chart(series, title, x_label, y_label, width=640, height=360) -> bytes
  write_chart(path, series, title, x_label, y_label, ...) -> Path

Empty input gives a chart saying "NO DATA"; non-finite points are dropped; a single
point or constant values get a padded axis, so every input yields a valid PNG.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

Point = tuple[float, float]
Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
INK: Color = (34, 34, 34)
AXIS: Color = (90, 90, 90)
GRID: Color = (228, 228, 228)
# Distinct on white and to colour-blind readers first (tab10 order); cycled beyond ten.
PALETTE: list[Color] = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
                        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
MAX_POINTS = 2000  # per series: more than the plot has pixels, and keeps huge logs fast

# 5x7 glyphs: seven rows, five bits each, the high bit is the left column.
GLYPHS: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), "-": (0, 0, 0, 0x1F, 0, 0, 0), "_": (0, 0, 0, 0, 0, 0, 0x1F),
    ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0), "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    "$": (0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04), "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02), ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0), "=": (0, 0, 0x1F, 0, 0x1F, 0, 0),
    ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08), "'": (0x0C, 0x04, 0x08, 0, 0, 0, 0),
    "[": (0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E), "]": (0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E),
    "<": (0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02), ">": (0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08),
    "#": (0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A), "*": (0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04), "|": (0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
}
GLYPH_H = 7
ADVANCE = 6  # 5 columns of glyph + 1 of spacing


def text_width(text: str, scale: int = 1) -> int:
    return max(0, len(text) * ADVANCE * scale - scale)


@dataclass(frozen=True)
class Box:
    """A pixel rectangle, edges included."""

    left: int
    top: int
    right: int
    bottom: int

    def holds(self, x: int, y: int) -> bool:
        return self.left <= x <= self.right and self.top <= y <= self.bottom


class Canvas:
    """An RGB pixel buffer with the few drawing operations a line chart needs."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def fill(self, box: Box, color: Color) -> None:
        left, right = max(0, box.left), min(self.width - 1, box.right)
        if left > right:
            return
        run = bytes(color) * (right - left + 1)
        for y in range(max(0, box.top), min(self.height - 1, box.bottom) + 1):
            start = (y * self.width + left) * 3
            self.pixels[start:start + len(run)] = run

    def line(self, a: tuple[int, int], b: tuple[int, int], color: Color, clip: Box, thick: int = 1) -> None:
        """Bresenham's line with a square brush, drawn only inside `clip`."""
        (x0, y0), (x1, y1) = a, b
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.brush(x0, y0, color, clip, thick)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def brush(self, x: int, y: int, color: Color, clip: Box, size: int) -> None:
        """A size×size square around (x, y), so a line on the plot's edge still shows inside it."""
        first = -(size // 2)
        for yy in range(y + first, y + first + size):
            for xx in range(x + first, x + first + size):
                if clip.holds(xx, yy) and 0 <= xx < self.width and 0 <= yy < self.height:
                    i = (yy * self.width + xx) * 3
                    self.pixels[i:i + 3] = bytes(color)

    def text(self, x: int, y: int, text: str, color: Color, scale: int = 1) -> None:
        """Draw `text` with its top-left corner at (x, y); unknown characters as '?'."""
        for n, char in enumerate(text.upper()):
            rows = GLYPHS.get(char, GLYPHS["?"])
            left = x + n * ADVANCE * scale
            for r, bits in enumerate(rows):
                for c in range(5):
                    if bits & (0x10 >> c):
                        top, col = y + r * scale, left + c * scale
                        self.fill(Box(col, top, col + scale - 1, top + scale - 1), color)

    def png(self) -> bytes:
        return encode_png(self.width, self.height, bytes(self.pixels))


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """A truecolour 8-bit PNG: every row with filter 0, one zlib IDAT chunk."""
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


# ----- axes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    lo: float
    hi: float
    ticks: tuple[float, ...]
    step: float

    def frac(self, value: float) -> float:
        """Where `value` sits between lo (0) and hi (1); halved so huge spans cannot overflow."""
        return (value / 2 - self.lo / 2) / (self.hi / 2 - self.lo / 2)


def nice_axis(lo: float, hi: float, most: int = 8) -> Axis:
    """An axis covering [lo, hi] with at most `most` ticks at 1, 2 or 5 × 10^k, as fine as fits."""
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    if not math.isfinite(span) or span < abs(hi) * 1e-12:  # beyond float range or precision
        ticks = tuple(lo * (1 - i / 4) + hi * (i / 4) for i in range(5))
        return Axis(lo, hi, ticks, abs(hi / 4 - lo / 4))
    step = _nice_step(span / (most - 1))
    while math.ceil(hi / step) - math.floor(lo / step) + 1 > most:
        step = _nice_step(step * 1.01)
    start, end = math.floor(lo / step) * step, math.ceil(hi / step) * step
    n = int(round((end - start) / step))
    return Axis(start, end, tuple(start + i * step for i in range(n + 1)), step)


def _nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at least `raw`."""
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5):
        if raw <= factor * power * (1 + 1e-9):
            return factor * power
    return 10 * power


def tick_label(value: float, step: float) -> str:
    """A short label: as many decimals as the step needs, scientific when that is shorter."""
    if value == 0 or (step > 0 and abs(value) < step * 1e-6):
        return "0"
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 3
    text = f"{value:.{decimals}f}" if abs(value) < 1e7 and decimals <= 6 else f"{value:.3g}"
    return text if len(text) <= 9 else f"{value:.3g}"


# ----- the chart ------------------------------------------------------------------------------
def line_chart(series: dict[str, list[Point]], title: str, x_label: str, y_label: str,
               width: int = 640, height: int = 360) -> bytes:
    """A PNG line chart of `series` (name → [(x, y)]); a "NO DATA" chart when nothing is plottable."""
    canvas = Canvas(max(int(width), 160), max(int(height), 120))
    clean = clean_series(series)
    _title(canvas, title)
    if not clean:
        _no_data(canvas)
        return canvas.png()
    xs = nice_axis(min(x for pts in clean.values() for x, _ in pts), max(x for pts in clean.values() for x, _ in pts))
    ys = nice_axis(min(y for pts in clean.values() for _, y in pts), max(y for pts in clean.values() for _, y in pts))
    names = [_short(name, 22) for name in clean]
    plot = _plot_box(canvas, ys, names)
    _grid(canvas, plot, xs, ys)
    for n, points in enumerate(clean.values()):
        _polyline(canvas, plot, xs, ys, points, PALETTE[n % len(PALETTE)])
    _legend(canvas, plot, names)
    canvas.text(plot.left, plot.top - GLYPH_H - 5, _short(y_label, 40), INK)
    label = _short(x_label, 60)
    canvas.text((plot.left + plot.right - text_width(label)) // 2, canvas.height - GLYPH_H - 6, label, INK)
    return canvas.png()


def write_chart(path: str | Path, series: dict[str, list[Point]], title: str, x_label: str, y_label: str,
                width: int = 640, height: int = 360) -> Path:
    """Render and write a chart; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(line_chart(series, title, x_label, y_label, width, height))
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


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _short(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 2] + ".."


def _title(canvas: Canvas, title: str) -> None:
    scale = 2 if text_width(title, 2) <= canvas.width - 16 else 1
    text = _short(title, (canvas.width - 16) // (ADVANCE * scale))
    canvas.text((canvas.width - text_width(text, scale)) // 2, 8, text, INK, scale)


def _no_data(canvas: Canvas) -> None:
    box = Box(40, 40, canvas.width - 40, canvas.height - 30)
    _frame(canvas, box)
    message = "NO DATA"
    canvas.text((box.left + box.right - text_width(message, 2)) // 2, (box.top + box.bottom - 14) // 2, message, AXIS, 2)


def _frame(canvas: Canvas, box: Box) -> None:
    for edge in (Box(box.left, box.top, box.right, box.top), Box(box.left, box.bottom, box.right, box.bottom),
                 Box(box.left, box.top, box.left, box.bottom), Box(box.right, box.top, box.right, box.bottom)):
        canvas.fill(edge, AXIS)


def _plot_box(canvas: Canvas, ys: Axis, names: list[str]) -> Box:
    """The plot area: room left for the y tick labels, right for the legend, below for x labels."""
    label_w = max(text_width(tick_label(t, ys.step)) for t in ys.ticks)
    legend_w = max(text_width(n) for n in names) + 30
    legend_w = min(legend_w, canvas.width // 3)
    return Box(10 + label_w + 6, 8 + 14 + 8 + GLYPH_H + 6, canvas.width - legend_w - 10, canvas.height - 38)


def _px(plot: Box, xs: Axis, ys: Axis, point: Point) -> tuple[int, int]:
    x = plot.left + round(xs.frac(point[0]) * (plot.right - plot.left))
    y = plot.bottom - round(ys.frac(point[1]) * (plot.bottom - plot.top))
    return x, y


def _grid(canvas: Canvas, plot: Box, xs: Axis, ys: Axis) -> None:
    """Grid lines and tick labels at each tick, then the two axes on top."""
    for tick in ys.ticks:
        y = plot.bottom - round(ys.frac(tick) * (plot.bottom - plot.top))
        canvas.fill(Box(plot.left, y, plot.right, y), GRID)
        canvas.fill(Box(plot.left - 4, y, plot.left - 1, y), AXIS)
        label = tick_label(tick, ys.step)
        canvas.text(plot.left - 7 - text_width(label), y - GLYPH_H // 2, label, INK)
    last_end = -10
    for tick in xs.ticks:
        x = plot.left + round(xs.frac(tick) * (plot.right - plot.left))
        canvas.fill(Box(x, plot.top, x, plot.bottom), GRID)
        canvas.fill(Box(x, plot.bottom + 1, x, plot.bottom + 4), AXIS)
        label = tick_label(tick, xs.step)
        left = min(max(0, x - text_width(label) // 2), canvas.width - text_width(label) - 1)
        if left > last_end + 4:  # skip a label that would overlap its neighbour
            canvas.text(left, plot.bottom + 8, label, INK)
            last_end = left + text_width(label)
    canvas.fill(Box(plot.left, plot.top, plot.left, plot.bottom), AXIS)
    canvas.fill(Box(plot.left, plot.bottom, plot.right, plot.bottom), AXIS)


def _polyline(canvas: Canvas, plot: Box, xs: Axis, ys: Axis, points: list[Point], color: Color) -> None:
    pixels = [_px(plot, xs, ys, p) for p in points]
    inside = Box(plot.left + 1, plot.top, plot.right, plot.bottom - 1)
    if len(pixels) == 1:
        x, y = pixels[0]
        canvas.brush(x, y, color, inside, 5)  # a lone point as a visible dot
        return
    for a, b in zip(pixels, pixels[1:]):
        canvas.line(a, b, color, inside, thick=2)


def _legend(canvas: Canvas, plot: Box, names: list[str]) -> None:
    x, y = plot.right + 12, plot.top
    room = (canvas.width - x - 18) // ADVANCE
    for n, name in enumerate(names):
        if y + GLYPH_H > plot.bottom:
            break
        canvas.fill(Box(x, y + 2, x + 11, y + 4), PALETTE[n % len(PALETTE)])
        canvas.text(x + 16, y, _short(name, max(3, room)), INK)
        y += GLYPH_H + 7
