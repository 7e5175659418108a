"""Chart layout for the report: scales, ticks, bands, colours and label placement.

Every position is computed from the data and the room available (the number of
classes, the width of the page's column); nothing here writes markup. Each chart
function returns plain geometry, in SVG user units (CSS pixels), that its
template in `templates/` draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The palette, shared with the page's CSS.
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
FRAME = "#9ca3af"
PRECISION = "#4c78a8"
RECALL = "#f58518"
ACCURACY = "#4c78a8"
GAP = "#e45756"
# ColorBrewer "Blues", light to dark.
BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c",
         "#08306b")  # fmt: skip

PAGE_WIDTH = 1080.0  # content width of a full-width section
COLUMN_WIDTH = 505.0  # content width of a half-width section
GLYPH = 0.62  # mean glyph width of the sans-serif, as a share of the font size
TICK_FONT = 10.0
TICK_GAP = 6.0  # between an axis and its tick labels
TICK_PITCH = 50.0  # about one tick per this many pixels of axis
TITLE_ROOM = 30.0  # left of the tick labels, for a rotated axis title centred at x=14
SWATCH = 12.0  # a legend's colour square


# ------------------------------------------------------------------ scales


@dataclass(frozen=True)
class Tick:
    value: float
    pos: float
    label: str


def nice_step(span: float, count: int) -> float:
    """The round step (1, 2, 2.5 or 5 times a power of ten) cutting `span` in about `count`."""
    raw = span / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if raw <= m * power * (1 + 1e-9))


def nice_ticks(lo: float, hi: float, count: int) -> tuple[list[float], float]:
    """Round values from `lo` to `hi`, about `count` intervals apart, and their step."""
    if hi <= lo:
        return [lo], 1.0
    step = nice_step(hi - lo, count)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)], step


def unit_range(numbers: Sequence[float], count: int) -> tuple[float, float, list[float], float]:
    """An axis for values within [0, 1] (accuracies): (low, high, ticks, step) around
    `numbers` (not empty), padded by 8 % (at least 0.01), on round ticks, within [0, 1]."""
    lo, hi = max(0.0, min(numbers)), min(1.0, max(numbers))
    pad = max((hi - lo) * 0.08, 0.01)
    ticks, step = nice_ticks(max(0.0, lo - pad), min(1.0, hi + pad), count)
    lo_v = min(ticks[0], max(0.0, lo - pad))
    hi_v = max(ticks[-1], min(1.0, hi + pad))
    if hi_v <= lo_v:
        lo_v, hi_v = max(0.0, lo_v - 0.05), min(1.0, hi_v + 0.05)
    return lo_v, hi_v, ticks, step


def decimals(step: float) -> int:
    """The fewest decimals that write every multiple of `step` exactly (0.25 -> 2)."""
    return next((d for d in range(10) if abs(round(step, d) - step) < 1e-9), 10)


@dataclass(frozen=True)
class Linear:
    """Data in [lo, hi] onto page positions [start, end], clamped; end < start points up."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        t = min(1.0, max(0.0, (value - self.lo) / (self.hi - self.lo)))
        return self.start + t * (self.end - self.start)

    def ticks(self, count: int, fmt: Callable[[float], str] | None = None) -> list[Tick]:
        values, step = nice_ticks(self.lo, self.hi, count)
        places = decimals(step)
        write = fmt or (lambda v: f"{v:.{places}f}")
        return [Tick(v, self(v), write(v)) for v in values]

    @property
    def length(self) -> float:
        return abs(self.end - self.start)


@dataclass(frozen=True)
class Band:
    """`n` equal slots of `step` from `start`: class rows and columns, histogram bins."""

    n: int
    start: float
    step: float

    def __call__(self, i: int) -> float:
        return self.start + i * self.step

    def centre(self, i: int) -> float:
        return self(i) + self.step / 2

    @property
    def end(self) -> float:
        return self.start + self.n * self.step

    @property
    def length(self) -> float:
        return self.n * self.step


def fit(n: int, room: float, lo: float, hi: float) -> float:
    """The whole-pixel slot that puts `n` slots in `room`, kept within [lo, hi]."""
    return max(lo, min(hi, float(math.floor(room / max(n, 1)))))


def blues(t: float) -> str:
    """The colour of the Blues scale at `t` in [0, 1]."""
    pos = min(1.0, max(0.0, t)) * (len(BLUES) - 1)
    i = min(int(pos), len(BLUES) - 2)
    a, b = (tuple(int(BLUES[k][j : j + 2], 16) for j in (1, 3, 5)) for k in (i, i + 1))
    return "#" + "".join(f"{round(x + (y - x) * (pos - i)):02x}" for x, y in zip(a, b, strict=True))


def compact(n: int) -> str:
    """A count in at most four characters: 950, 1.2k, 3M."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k".replace(".0k", "k")
    return f"{n / 1_000_000:.1f}M".replace(".0M", "M")


# ------------------------------------------------------------------ labels


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True)
class Label:
    """A class name at (x, y): `text` shortened to fit, `full` for its tooltip."""

    x: float
    y: float
    text: str
    full: str
    anchor: str = "middle"
    angle: int = 0  # degrees, counter-clockwise
    central: bool = False  # centred on y vertically


@dataclass(frozen=True)
class Key:
    """A legend entry: its swatch's top-left corner; the text follows the swatch."""

    x: float
    y: float
    text: str
    colour: str = ""
    size: float = SWATCH

    @property
    def right(self) -> float:
        return self.x + SWATCH

    @property
    def bottom(self) -> float:
        return self.y + SWATCH

    @property
    def text_x(self) -> float:
        return self.x + SWATCH + 6

    @property
    def text_y(self) -> float:
        return self.y + SWATCH / 2


def shorten(text: str, limit: int = 14) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_width(chars: int, font: float) -> float:
    return chars * font * GLYPH


def stride(step: float, font: float) -> int:
    """Label every k-th slot so that labels of `font` in slots of `step` keep apart."""
    return max(1, math.ceil((font + 2) / step))


def row_labels(names: Sequence[str], band: Band, x: float, font: float) -> list[Label]:
    """Names left of a vertical band, right-aligned at `x`; every k-th when dense."""
    every = stride(band.step, font)
    return [
        Label(x, band.centre(i), shorten(names[i]), names[i], "end", central=True)
        for i in range(0, band.n, every)
    ]


def column_labels(
    names: Sequence[str], band: Band, baseline: float, font: float
) -> tuple[list[Label], float]:
    """Names under a horizontal band, and the height they take below `baseline`.

    Every k-th when dense; slanted at 45° when they do not fit side by side, upright
    (90°) when even slanted names would touch.
    """
    shown = range(0, band.n, stride(band.step, font))
    room = band.step * shown.step
    wide = text_width(max((len(shorten(names[i])) for i in shown), default=1), font)
    if wide <= room - 4:
        y = baseline + font + 4
        return [Label(band.centre(i), y, shorten(names[i]), names[i]) for i in shown], font + 8
    angle = 45 if room * 0.7 >= font + 1 else 90
    labels = [
        Label(band.centre(i), baseline + 6, shorten(names[i]), names[i], "end", angle, True)
        for i in shown
    ]
    return labels, wide * math.sin(math.radians(angle)) + font + 10


def legend_row(
    entries: Sequence[tuple[str, str]], x: float, y: float, font: float = 12.0
) -> list[Key]:
    """Keys of (text, colour) side by side from (x, y)."""
    keys = []
    for text, colour in entries:
        keys.append(Key(x, y, text, colour))
        x = keys[-1].text_x + text_width(len(text), font) + 18
    return keys


def legend_column(texts: Sequence[str], x: float, y: float, pitch: float = 22.0) -> list[Key]:
    """Keys one under the other from (x, y), their swatches drawn by the template."""
    return [Key(x, y + k * pitch, text) for k, text in enumerate(texts)]


def axis_room(ticks: Sequence[Tick]) -> float:
    """The width tick labels take left of a vertical axis, gap included."""
    return text_width(max((len(t.label) for t in ticks), default=1), TICK_FONT) + TICK_GAP


# ------------------------------------------------------------------ confusion matrix


@dataclass(frozen=True)
class Cell:
    x: float
    y: float
    size: float
    count: int
    share: float  # of the true class's rows
    true: str
    predicted: str

    @property
    def fill(self) -> str:
        return blues(self.share)

    @property
    def ink(self) -> str:
        """The count's colour, readable on `fill`."""
        return "#ffffff" if self.share > 0.55 else INK

    @property
    def cx(self) -> float:
        return self.x + self.size / 2

    @property
    def cy(self) -> float:
        return self.y + self.size / 2


@dataclass(frozen=True)
class ColourBar:
    """The key of a colour scale: a vertical gradient, share 0 at the bottom, 1 at the top."""

    x: float
    scale: Linear
    ticks: list[Tick]
    stops: list[tuple[float, str]]
    title: Point
    width: float = 14.0

    @property
    def tick_end(self) -> float:
        return self.x + self.width + 4

    @property
    def label_x(self) -> float:
        return self.x + self.width + 7


@dataclass(frozen=True)
class Confusion:
    width: float
    height: float
    cols: Band
    rows: Band
    cells: list[Cell]
    gridlines: bool  # white lines between cells, when they are large enough
    font: float
    count_font: float  # 0: counts do not fit the cells
    row_labels: list[Label]
    col_labels: list[Label]
    x_title: Point
    y_title: Point
    bar: ColourBar


BAR_ROOM = 98.0  # right of the matrix: gap, colour bar, its ticks and title


def confusion(
    labels: Sequence[str], matrix: Sequence[Sequence[int]], width: float = PAGE_WIDTH
) -> Confusion:
    """The heatmap of `matrix` (rows true, columns predicted) with its colour bar."""
    n = len(matrix)
    names = [str(labels[i]) if i < len(labels) else str(i) for i in range(n)]
    longest = max(len(shorten(s)) for s in names)
    cell = fit(n, width - text_width(longest, 11) - TITLE_ROOM - TICK_GAP - BAR_ROOM, 4, 48)
    font = 11.0 if cell >= 12 else 9.0
    left = TITLE_ROOM + text_width(longest, font) + TICK_GAP
    cols, rows = Band(n, left, cell), Band(n, 12.0, cell)
    col_labels, label_h = column_labels(names, cols, rows.end, font)
    peak = max((max(row, default=0) for row in matrix), default=0)
    count_font = min(12.0, (cell - 6) / (GLYPH * len(str(peak))))
    bar = Linear(0, 1, rows.start + min(cols.length, 240.0), rows.start)
    bar_x = cols.end + 28
    bottom = rows.end + label_h
    return Confusion(
        width=cols.end + BAR_ROOM,
        height=bottom + 24,
        cols=cols,
        rows=rows,
        cells=_cells(matrix, names, cols, rows),
        gridlines=cell >= 10,
        font=font,
        count_font=count_font if count_font >= 7.5 else 0.0,
        row_labels=row_labels(names, rows, left - TICK_GAP, font),
        col_labels=col_labels,
        x_title=Point((cols.start + cols.end) / 2, bottom + 14),
        y_title=Point(14, (rows.start + rows.end) / 2),
        bar=ColourBar(
            x=bar_x,
            scale=bar,
            ticks=bar.ticks(2, lambda v: f"{v * 100:.0f}%"),
            stops=[(i / (len(BLUES) - 1), c) for i, c in enumerate(reversed(BLUES))],
            title=Point(bar_x + 56, (bar.start + bar.end) / 2),
        ),
    )


def _cells(
    matrix: Sequence[Sequence[int]], names: Sequence[str], cols: Band, rows: Band
) -> list[Cell]:
    cells = []
    for t, row in enumerate(matrix):
        total = sum(row)
        for p, count in enumerate(row):
            if count > 0:
                share = count / total
                cells.append(Cell(cols(p), rows(t), cols.step, count, share, names[t], names[p]))
    return cells


# ------------------------------------------------------------------ per-class bars


@dataclass(frozen=True)
class Series:
    key: str  # of the per-class entries
    name: str
    colour: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: Series
    value: float
    label: str


@dataclass(frozen=True)
class Bars:
    width: float
    height: float
    slots: Band
    y: Linear
    ticks: list[Tick]
    bars: list[Bar]
    font: float
    labels: list[Label]
    legend: list[Key]


PLOT_HEIGHT = 220.0  # of the per-class bars


def per_class(
    classes: Sequence[Mapping[str, Any]], series: Sequence[Series], width: float = PAGE_WIDTH
) -> Bars:
    """Grouped bars, one group per class and one bar per series, on a 0..1 axis."""
    names = [str(c.get("label", i)) for i, c in enumerate(classes)]
    top = 30.0  # the legend's row
    y = Linear(0, 1, top + PLOT_HEIGHT, top)
    ticks = y.ticks(round(PLOT_HEIGHT / TICK_PITCH))
    left = axis_room(ticks) + 14
    slots = Band(len(names), left, fit(len(names), width - left - 10, 8, 72))
    bar_w = slots.step * 0.8 / max(len(series), 1)
    bars = []
    for i, cls in enumerate(classes):
        for j, s in enumerate(series):
            value = _fraction(cls.get(s.key))
            x = slots(i) + slots.step * 0.1 + j * bar_w
            bars.append(Bar(x, y(value), max(bar_w - 1, 1), y.start - y(value), s, value, names[i]))
    font = 11.0 if slots.step >= 14 else 9.0
    labels, label_h = column_labels(names, slots, y.start, font)
    return Bars(
        width=left + max(slots.end - left, 200.0) + 10,
        height=y.start + label_h + 6,
        slots=slots,
        y=y,
        ticks=ticks,
        bars=bars,
        font=font,
        labels=labels,
        legend=legend_row([(s.name, s.colour) for s in series], left, 6),
    )


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, float(value)))


# ------------------------------------------------------------------ reliability diagram


@dataclass(frozen=True)
class Bin:
    x: float
    width: float
    lo: float  # the bin's confidence range
    hi: float
    rows: int
    accuracy: float
    confidence: float
    bar: tuple[float, float]  # the accuracy bar's top and height
    gap: tuple[float, float] | None  # the band between accuracy and confidence
    count: tuple[float, float]  # the rows bar's top and height
    count_label: Point | None  # where the count is written; None when the bin is too narrow


@dataclass(frozen=True)
class Reliability:
    width: float
    height: float
    x: Linear
    y: Linear
    hist: Linear  # rows per bin, under the plot on the same x scale
    x_ticks: list[Tick]  # written under the histogram
    x_labels_y: float
    y_ticks: list[Tick]
    bins: list[Bin]
    hist_title: Point
    legend: list[Key]
    note: Point  # the ECE, under the legend
    x_title: Point
    y_title: Point


def reliability(calibration: Mapping[str, Any], width: float = COLUMN_WIDTH) -> Reliability:
    """Accuracy per confidence bin against the diagonal, rows per bin underneath."""
    counts = [int(c) for c in calibration.get("counts") or []]
    top, legend_w = 12.0, 148.0
    left = TITLE_ROOM + axis_room(Linear(0, 1, 0, 1).ticks(6))  # the labels, not positions
    size = min(300.0, width - left - legend_w)
    x, y = Linear(0, 1, left, left + size), Linear(0, 1, top + size, top)
    band = Band(len(counts), left, size / max(len(counts), 1))
    hist = Linear(0, max(counts, default=0) or 1, top + size + 34 + 64, top + size + 34)
    bottom = hist.start + 18
    legend = legend_column(
        ["Accuracy", "Gap to confidence", "Perfect calibration"], x.end + 18, top + 8
    )
    return Reliability(
        width=x.end + legend_w,
        height=bottom + 22,
        x=x,
        y=y,
        hist=hist,
        x_ticks=x.ticks(round(size / TICK_PITCH)),
        x_labels_y=hist.start + 14,
        y_ticks=y.ticks(round(size / TICK_PITCH)),
        bins=_bins(calibration, counts, band, y, hist),
        hist_title=Point(left, hist.end - 10),
        legend=legend,
        note=Point(x.end + 18, legend[-1].bottom + 24),
        x_title=Point(left + size / 2, bottom + 14),
        y_title=Point(14, top + size / 2),
    )


def _bins(
    calibration: Mapping[str, Any], counts: Sequence[int], band: Band, y: Linear, hist: Linear
) -> list[Bin]:
    conf = list(calibration.get("confidence") or [])
    acc = list(calibration.get("accuracy") or [])
    bins = []
    for b, rows in enumerate(counts):
        if rows <= 0:
            continue
        a = _fraction(acc[b] if b < len(acc) else 0.0)
        c = _fraction(conf[b] if b < len(conf) else 0.0)
        lo, hi = sorted((y(a), y(c)))
        h = max(1.0, hist.start - hist(rows))
        bins.append(
            Bin(
                x=band(b) + 1,
                width=band.step - 2,
                lo=b / band.n,
                hi=(b + 1) / band.n,
                rows=rows,
                accuracy=a,
                confidence=c,
                bar=(y(a), y.start - y(a)),
                gap=(lo, hi - lo) if hi - lo > 0.5 else None,
                count=(hist.start - h, h),
                count_label=Point(band.centre(b), hist.start - h - 3) if band.step >= 16 else None,
            )
        )
    return bins
