"""The report's chart layout (dyff.report.charts): nice ticks, scales, bands, label placement,
and each chart's geometry computed from the data and the room it has."""

from __future__ import annotations

import pytest

from dyff.report import charts
from dyff.report.charts import BLUES, Band, Linear


@pytest.mark.parametrize(
    ("lo", "hi", "count", "expected", "step"),
    [
        (0, 1, 4, [0, 0.25, 0.5, 0.75, 1], 0.25),
        (0, 1, 6, [0, 0.2, 0.4, 0.6, 0.8, 1], 0.2),
        (0, 1, 2, [0, 0.5, 1], 0.5),
        (0, 137, 5, [0, 50, 100], 50),
        (-1, 1, 4, [-1, -0.5, 0, 0.5, 1], 0.5),
        (0.13, 0.91, 4, [0.2, 0.4, 0.6, 0.8], 0.2),  # only round values inside the range
        (0, 3000, 3, [0, 1000, 2000, 3000], 1000),
        (5, 5, 4, [5], 1.0),  # an empty range: one tick
    ],
)
def test_nice_ticks(lo: float, hi: float, count: int, expected: list[float], step: float) -> None:
    values, got_step = charts.nice_ticks(lo, hi, count)
    assert values == pytest.approx(expected) and got_step == pytest.approx(step)


def test_tick_labels_carry_the_decimals_of_their_step() -> None:
    labels = lambda scale, n: [t.label for t in scale.ticks(n)]  # noqa: E731
    assert labels(Linear(0, 1, 250, 30), 4) == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    assert labels(Linear(0, 1, 0, 300), 6) == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert labels(Linear(0, 1000, 0, 100), 4) == ["0", "250", "500", "750", "1000"]
    pct = Linear(0, 1, 100, 0).ticks(2, lambda v: f"{v * 100:.0f}%")
    assert [t.label for t in pct] == ["0%", "50%", "100%"]


def test_linear_maps_clamps_and_places_its_ticks() -> None:
    y = Linear(0, 1, 250, 30)  # upward: 0 at the bottom
    assert (y(0), y(0.5), y(1)) == (250, 140, 30)
    assert (y(-0.3), y(1.7)) == (250, 30)  # out of range: clamped to the axis
    assert [t.pos for t in y.ticks(4)] == pytest.approx([250, 195, 140, 85, 30])
    assert y.length == 220
    hist = Linear(0, 40, 100, 36)
    assert hist(10) == 84


def test_band_slots_and_fit() -> None:
    band = Band(10, 40, 8)
    assert (band(0), band(9), band.centre(9), band.end, band.length) == (40, 112, 116, 120, 80)
    assert charts.fit(10, 1000, 4, 48) == 48  # capped
    assert charts.fit(100, 850, 4, 48) == 8  # whole pixels
    assert charts.fit(1000, 850, 4, 48) == 4  # floored: the chart scrolls
    assert charts.fit(0, 850, 4, 48) == 48


def test_blues_runs_light_to_dark() -> None:
    assert charts.blues(0) == BLUES[0] and charts.blues(1) == BLUES[-1]
    assert charts.blues(-2) == BLUES[0] and charts.blues(3) == BLUES[-1]
    assert charts.blues(0.5) == BLUES[4]
    darkness = [sum(int(charts.blues(t / 20)[k : k + 2], 16) for k in (1, 3, 5)) for t in range(21)]
    assert darkness == sorted(darkness, reverse=True)


def test_column_labels_stay_level_then_slant_then_stand_and_thin_out() -> None:
    names = [f"digit {i}" for i in range(10)]
    level, level_h = charts.column_labels(names, Band(10, 0, 72), 100, 11)
    assert [lb.angle for lb in level] == [0] * 10 and {lb.anchor for lb in level} == {"middle"}
    assert [lb.x for lb in level] == [36 + 72 * i for i in range(10)]
    assert all(lb.y > 100 for lb in level)
    slanted, slanted_h = charts.column_labels(names, Band(10, 0, 30), 100, 11)
    assert {lb.angle for lb in slanted} == {45} and slanted_h > level_h
    long = [f"category_{i:03d}_with_a_long_name" for i in range(100)]
    upright, upright_h = charts.column_labels(long, Band(100, 0, 5.5), 100, 9)
    assert {lb.angle for lb in upright} == {90} and upright_h > slanted_h
    assert [lb.full for lb in upright] == long[::2]  # every other slot
    assert all(len(lb.text) == 14 and lb.text.endswith("…") for lb in upright)


def test_row_labels_thin_out_when_dense() -> None:
    names = [str(i) for i in range(100)]
    labels = charts.row_labels(names, Band(100, 12, 8), 90, 9)
    assert [lb.full for lb in labels] == names[::2]
    assert {(lb.x, lb.anchor) for lb in labels} == {(90, "end")}
    assert labels[1].y == 12 + 2 * 8 + 4  # centred on its row


def matrix(n: int) -> list[list[int]]:
    return [[50 if t == p else (1 if p == (t + 1) % n else 0) for p in range(n)] for t in range(n)]


def test_confusion_cells_follow_the_number_of_classes_and_the_width() -> None:
    sizes = []
    for n in (3, 10, 30, 100):
        chart = charts.confusion([f"class {i}" for i in range(n)], matrix(n))
        assert chart.width <= charts.PAGE_WIDTH
        assert len(chart.cells) == 2 * n  # one per non-zero count
        sizes.append(chart.cols.step)
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 48 and sizes[-1] <= 10
    narrow = charts.confusion([f"class {i}" for i in range(30)], matrix(30), width=500)
    assert narrow.width <= 500 and narrow.cols.step < sizes[2]
    small, big = charts.confusion(["a", "b", "c"], matrix(3)), charts.confusion([], matrix(100))
    assert small.count_font > 0 and small.gridlines
    assert big.count_font == 0 and not big.gridlines  # counts would not fit
    diagonal = next(c for c in small.cells if c.true == c.predicted == "b")
    assert (diagonal.x, diagonal.y) == (small.cols(1), small.rows(1))
    assert diagonal.share == pytest.approx(50 / 51) and diagonal.ink == "#ffffff"
    assert [t.label for t in small.bar.ticks] == ["0%", "50%", "100%"]
    assert small.bar.ticks[0].pos > small.bar.ticks[-1].pos  # 100% at the top
    assert [lb.full for lb in big.row_labels][:2] == ["0", "2"]  # ids where labels are missing


def test_per_class_bars_are_proportional_and_the_legend_keys_apart() -> None:
    classes = [{"label": "a", "precision": 0.5, "recall": 1.0}, {"label": "b", "recall": 1.4}]
    series = [charts.Series("precision", "Precision", "#111"), charts.Series("recall", "R", "#222")]
    chart = charts.per_class(classes, series)
    heights = [(bar.label, bar.series.key, bar.height) for bar in chart.bars]
    h = charts.PLOT_HEIGHT
    assert heights == [("a", "precision", h / 2), ("a", "recall", h), ("b", "precision", 0),
                       ("b", "recall", h)]  # fmt: skip
    assert all(bar.y + bar.height == chart.y.start for bar in chart.bars)
    assert [t.value for t in chart.ticks] == [0, 0.25, 0.5, 0.75, 1]
    first, second = chart.legend
    assert second.x > first.text_x + len("Precision") * 12 * charts.GLYPH
    many = charts.per_class([{"label": str(i), "recall": 0.5} for i in range(100)], series[1:])
    assert many.width <= charts.PAGE_WIDTH and len(many.bars) == 100


def test_reliability_fits_its_column_and_draws_only_filled_bins() -> None:
    cal = {
        "counts": [0, 10, 40, 0, 20],
        "accuracy": [0, 0.3, 0.5, 0, 0.9],
        "confidence": [0, 0.3, 0.7, 0, 0.85],
    }
    chart = charts.reliability(cal)
    assert chart.width <= charts.COLUMN_WIDTH
    assert [b.rows for b in chart.bins] == [10, 40, 20]
    assert [x for b in chart.bins for x in (b.lo, b.hi)] == pytest.approx(
        [0.2, 0.4, 0.4, 0.6, 0.8, 1]
    )
    one, two, _ = chart.bins
    assert one.gap is None  # calibrated: no gap to draw
    assert two.gap == pytest.approx((chart.y(0.7), chart.y(0.5) - chart.y(0.7)))
    assert two.count[1] == pytest.approx(chart.hist.length)  # the fullest bin: full height
    assert one.count[1] == pytest.approx(chart.hist.length / 4)
    assert all(b.count_label is not None for b in chart.bins)  # 60 px bins: room for counts
    assert [t.label for t in chart.x_ticks] == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert chart.legend[0].x > chart.x.end
