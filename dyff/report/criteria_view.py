"""What an evaluation's criteria (issue 12) look like to people: the display rows of the
`criteria` section of metrics.json (`dyff.criteria.compute`), for the HTML report, the web
view's evaluation page and `dyff metrics`.

`criteria_view(metrics_doc)` reads the section defensively: a document without one (written
before criteria existed) gives None, and a partial or unexpected one gives what is there
(missing numbers are None, malformed entries are left out); nothing here raises on data.

- **Intervals**: each headline metric with its bootstrap interval, in HEADLINE order, at the
  document's level.
- **Slices**: per slice spec, one row per slice value (support, accuracy and its interval,
  the rest's accuracy, the test's adjusted p-value), flagged slices first, most severe first
  (the order of the spec's `flagged` list), then the others in the document's order; and an
  interval chart of their accuracy (`SliceChart`, at most CHART_ROWS rows).
- **Gates**: each gate's outcome, observed value and threshold, and the overall verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dyff.report import charts

HEADLINE = (
    ("accuracy", "Accuracy"),
    ("top5Accuracy", "Top-5 accuracy"),
    ("macroPrecision", "Macro precision"),
    ("macroRecall", "Macro recall"),
    ("macroF1", "Macro F1"),
    ("ece", "ECE"),
)
USING = {"point": "value", "lower_bound": "lower bound", "upper_bound": "upper bound"}
NULL_VALUE = "(none)"  # a slice of rows without a value in a column
CHART_ROWS = 40  # slices drawn in one spec's chart (the table has them all)
ROW_PITCH = 22.0
LABEL_ROOM = 190.0
PLOT_WIDTH = 460.0
TOP = 24.0


# ------------------------------------------------------------------ reading


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    if value is None:
        return NULL_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def interval_text(low: float | None, high: float | None, digits: int = 4) -> str:
    """ "[0.8990, 0.9251]", or "" without both bounds."""
    if low is None or high is None:
        return ""
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def level_text(level: float | None) -> str:
    """ "95 %" for 0.95; "" when unknown."""
    return "" if level is None else f"{level * 100:g} %"


# ------------------------------------------------------------------ rows


@dataclass(frozen=True)
class Estimate:
    """A headline metric with its interval (None where the document has no number)."""

    key: str  # the criteria document's name: accuracy, top5Accuracy, macroF1, ...
    name: str
    value: float | None
    low: float | None
    high: float | None

    @property
    def interval(self) -> str:
        return interval_text(self.low, self.high)


@dataclass(frozen=True)
class SliceRow:
    key: dict[str, Any]  # column: value, as in the document
    values: list[str]  # one text per `by` column
    label: str  # "lighting=night, colour=grayscale"
    support: int | None
    accuracy: float | None
    low: float | None
    high: float | None
    rest_accuracy: float | None
    tested: bool
    q_value: float | None  # Benjamini-Hochberg adjusted p-value; None when untested
    flagged: bool
    gap: float | None  # the rest's accuracy minus this slice's

    @property
    def interval(self) -> str:
        return interval_text(self.low, self.high)


@dataclass(frozen=True)
class ChartRow:
    label: charts.Label
    y: float
    x: float | None
    lo: float | None
    hi: float | None
    flagged: bool
    title: str


@dataclass(frozen=True)
class SliceChart:
    """Accuracy per slice: a dot at the value, a line across its interval, and a dashed
    line at the accuracy of all rows; flagged slices drawn in the warning colour."""

    width: float
    height: float
    x0: float
    x1: float
    ticks: list[charts.Tick]
    overall: float | None  # x of the accuracy of all rows
    rows: list[ChartRow]
    shown: int
    total: int


@dataclass(frozen=True)
class SliceTable:
    index: int
    by: list[str]
    title: str  # "lighting" or "aspect, colour"
    q: float | None
    min_support: int | None
    rows: list[SliceRow]  # flagged first, most severe first
    chart: SliceChart | None

    @property
    def flagged(self) -> list[SliceRow]:
        return [r for r in self.rows if r.flagged]


@dataclass(frozen=True)
class GateRow:
    name: str
    passed: bool | None  # None: the document does not say
    metric: str
    using: str  # "value", "lower bound" or "upper bound"
    threshold: str  # ">= 0.9"
    slice: str  # "lighting=night", "" for every row
    observed: float | None
    rows: int | None
    message: str

    @property
    def outcome(self) -> str:
        return {True: "PASS", False: "FAIL", None: "?"}[self.passed]


@dataclass(frozen=True)
class Gates:
    passed: bool | None
    message: str
    rows: list[GateRow]

    @property
    def failed(self) -> list[GateRow]:
        return [g for g in self.rows if g.passed is False]


@dataclass(frozen=True)
class CriteriaView:
    version: int | None
    rows: int | None
    method: str
    level: float | None
    resamples: int | None
    seed: int | None
    estimates: list[Estimate]  # only the metrics the document gives a value for
    slices: list[SliceTable] = field(default_factory=list)
    gates: Gates | None = None

    @property
    def level_text(self) -> str:
        return level_text(self.level)

    def estimate(self, key: str) -> Estimate | None:
        return next((e for e in self.estimates if e.key == key), None)

    @property
    def accuracy(self) -> float | None:
        e = self.estimate("accuracy")
        return None if e is None else e.value


# ------------------------------------------------------------------ building


def _estimates(metrics: Mapping[str, Any]) -> list[Estimate]:
    out = []
    for key, name in HEADLINE:
        entry = _dict(metrics.get(key))
        value = _num(entry.get("value"))
        if value is None:
            continue
        out.append(Estimate(key, name, value, _num(entry.get("low")), _num(entry.get("high"))))
    return out


def key_label(key: Mapping[str, Any]) -> str:
    return ", ".join(f"{c}={_text(v)}" for c, v in key.items())


def _slice_row(entry: Mapping[str, Any], by: Sequence[str]) -> SliceRow | None:
    key = entry.get("key")
    if not isinstance(key, dict):
        return None
    accuracy = _dict(_dict(entry.get("metrics")).get("accuracy"))
    value = _num(accuracy.get("value"))
    rest = _num(entry.get("restAccuracy"))
    return SliceRow(
        key=key,
        values=[_text(key.get(c)) for c in by] if by else [_text(v) for v in key.values()],
        label=key_label(key),
        support=_int(entry.get("support")),
        accuracy=value,
        low=_num(accuracy.get("low")),
        high=_num(accuracy.get("high")),
        rest_accuracy=rest,
        tested=entry.get("tested") is True,
        q_value=_num(entry.get("qValue")),
        flagged=entry.get("flagged") is True,
        gap=None if rest is None or value is None else rest - value,
    )


def _slice_table(index: int, spec: Mapping[str, Any], overall: float | None) -> SliceTable:
    by = [str(c) for c in _list(spec.get("by"))]
    rows = [r for e in _list(spec.get("values")) if (r := _slice_row(_dict(e), by)) is not None]
    # Flagged first, in the order of the document's `flagged` list (most severe first).
    order = [f.get("key") for f in _list(spec.get("flagged")) if isinstance(f, dict)]

    def rank(row: SliceRow) -> tuple[int, int]:
        if not row.flagged:
            return (1, 0)
        return (0, order.index(row.key) if row.key in order else len(order))

    rows.sort(key=rank)  # stable: the rest keep the document's order
    return SliceTable(
        index=index,
        by=by,
        title=", ".join(by) or "?",
        q=_num(spec.get("q")),
        min_support=_int(spec.get("minSupport")),
        rows=rows,
        chart=slice_chart(rows, overall),
    )


def _gate_row(entry: Mapping[str, Any]) -> GateRow:
    gate = _dict(entry.get("gate"))
    where = _dict(gate.get("slice"))
    op, value = gate.get("op"), _num(gate.get("value"))
    threshold = f"{op} {value:g}" if isinstance(op, str) and value is not None else ""
    passed = entry.get("passed")
    return GateRow(
        name=str(entry.get("name") or gate.get("metric") or "?"),
        passed=passed if isinstance(passed, bool) else None,
        metric=str(gate.get("metric") or ""),
        using=USING.get(str(gate.get("using") or "point"), str(gate.get("using"))),
        threshold=threshold,
        slice=key_label(where),
        observed=_num(entry.get("observed")),
        rows=_int(entry.get("rows")),
        message=str(entry.get("message") or ""),
    )


def _gates(doc: Any) -> Gates | None:
    if not isinstance(doc, dict):
        return None
    rows = [_gate_row(e) for e in _list(doc.get("results")) if isinstance(e, dict)]
    passed = doc.get("passed")
    if not isinstance(passed, bool):
        passed = None if not rows else all(g.passed is True for g in rows)
    return Gates(passed=passed, message=str(doc.get("message") or ""), rows=rows)


def criteria_view(metrics_doc: Mapping[str, Any] | None) -> CriteriaView | None:
    """The display rows of a metrics document's `criteria` section; None without one."""
    section = (metrics_doc or {}).get("criteria")
    if not isinstance(section, dict):
        return None
    intervals = _dict(section.get("intervals"))
    estimates = _estimates(_dict(intervals.get("metrics")))
    overall = next((e.value for e in estimates if e.key == "accuracy"), None)
    specs = [s for s in _list(section.get("slices")) if isinstance(s, dict)]
    return CriteriaView(
        version=_int(section.get("version")),
        rows=_int(section.get("rows")),
        method=str(intervals.get("method") or ""),
        level=_num(intervals.get("level")),
        resamples=_int(intervals.get("resamples")),
        seed=_int(intervals.get("seed")),
        estimates=estimates,
        slices=[_slice_table(i, s, overall) for i, s in enumerate(specs)],
        gates=_gates(section.get("gates")),
    )


# ------------------------------------------------------------------ chart


def slice_chart(rows: Sequence[SliceRow], overall: float | None) -> SliceChart | None:
    """The interval chart of the first CHART_ROWS slices with an accuracy; None if none."""
    drawn = [r for r in rows if r.accuracy is not None][:CHART_ROWS]
    if not drawn:
        return None
    numbers = [v for r in drawn for v in (r.accuracy, r.low, r.high) if v is not None]
    if overall is not None:
        numbers.append(overall)
    lo_v, hi_v, ticks, step = charts.unit_range(numbers, 6)
    x0, x1 = LABEL_ROOM, LABEL_ROOM + PLOT_WIDTH
    scale = charts.Linear(lo_v, hi_v, x0, x1)
    digits = charts.decimals(step)
    tick_marks = [charts.Tick(t, scale(t), f"{t:.{digits}f}") for t in ticks]
    out = []
    for i, r in enumerate(drawn):
        y = TOP + (i + 0.5) * ROW_PITCH
        title = f"{r.label}: accuracy {r.accuracy:.4f}"
        if r.interval:
            title += f" {r.interval}"
        if r.support is not None:
            title += f", {r.support:,} rows"
        if r.flagged and r.q_value is not None:
            title += f", flagged (q = {r.q_value:.3g})"
        out.append(
            ChartRow(
                label=charts.Label(
                    x0 - 10, y, charts.shorten(r.label, 28), r.label, "end", central=True
                ),
                y=y,
                x=scale(r.accuracy) if r.accuracy is not None else None,
                lo=None if r.low is None else scale(r.low),
                hi=None if r.high is None else scale(r.high),
                flagged=r.flagged,
                title=title,
            )
        )
    height = TOP + len(drawn) * ROW_PITCH + 30
    return SliceChart(
        width=x1 + 20,
        height=height,
        x0=x0,
        x1=x1,
        ticks=tick_marks,
        overall=None if overall is None else scale(overall),
        rows=out,
        shown=len(drawn),
        total=len(rows),
    )
