"""What an evaluation's robustness results (issue 12, `spec.criteria.perturbations`) look
like to people: the display rows of the `robustness` section of metrics.json
(`dyff.robustness.robustness_doc`), for the HTML report, the web view's evaluation page and
`dyff metrics`. The sibling of `criteria_view`, read the same way.

`robustness_view(metrics_doc)` reads the section defensively: a document without one (no
perturbations were asked, or it was written before they existed) gives None, and a partial
or unexpected one gives what is there (missing numbers are None, malformed entries are left
out); nothing here raises on data.

- **Per kind** (in the document's order): one row per severity (severity, the kind's
  parameter at that severity, accuracy, top-5 accuracy where computed, error and its change
  from the clean images' error), the kind's mean error and relative error
  (`perturbations.CorruptionError`: no AlexNet normalisation), and a chart of accuracy by
  severity with the clean accuracy as a reference line (`SeverityChart`; every kind's chart
  on the same scale, so they compare at a glance).
- **Overall**: the clean accuracy and error, and the means over the kinds.

Rows come from each kind's `bySeverity`; a document without them (the first version wrote
only the per-severity `errors`) gives rows from `errors` and `degradation`, accuracy being
1 - error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dyff import perturbations
from dyff.report import charts
from dyff.report.criteria_view import _dict, _int, _list, _num

SEVERITIES = perturbations.SEVERITIES
CHART_WIDTH = 300.0
CHART_HEIGHT = 190.0
LEFT = 46.0  # room for the accuracy tick labels and the axis title
RIGHT = 12.0
TOP = 18.0
BOTTOM = 38.0  # severity labels and the axis title


# ------------------------------------------------------------------ formatting


def signed(value: float | None, digits: int = 4) -> str:
    """ "+0.1234" / "-0.0100"; "" when unknown."""
    return "" if value is None else f"{value:+.{digits}f}"


def parameter_text(value: float | None) -> str:
    """A severity's parameter as the tables write it: "0.08", "25"; "" when unknown."""
    return "" if value is None else f"{value:g}"


# ------------------------------------------------------------------ rows


@dataclass(frozen=True)
class SeverityRow:
    severity: int | None
    parameter: float | None  # the kind's table value at this severity (sigma, quality, ...)
    accuracy: float | None
    error: float | None
    delta: float | None  # error minus the clean images' error (the document's degradation)
    top5_accuracy: float | None

    @property
    def parameter_text(self) -> str:
        return parameter_text(self.parameter)

    @property
    def delta_text(self) -> str:
        return signed(self.delta)


@dataclass(frozen=True)
class ChartPoint:
    x: float
    y: float
    severity: int
    accuracy: float
    title: str


@dataclass(frozen=True)
class SeverityChart:
    """Accuracy (y) by severity 1..5 (x): a dot per severity joined by a line, and a dashed
    line at the clean accuracy."""

    width: float
    height: float
    x0: float
    x1: float
    y_top: float
    y_bottom: float
    y_ticks: list[charts.Tick]  # pos: y
    x_ticks: list[charts.Tick]  # pos: x, one per severity
    clean: float | None  # y of the clean accuracy
    clean_label: str
    points: list[ChartPoint]

    @property
    def line(self) -> str:
        """The polyline through the points: "x,y x,y ..."."""
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass(frozen=True)
class KindRobustness:
    index: int
    kind: str
    meaning: str  # what the parameter is ("JPEG quality (Pillow)"); "" for an unknown kind
    seed: int | None
    clean_error: float | None
    mean_error: float | None
    relative_error: float | None
    rows: list[SeverityRow]  # by severity
    chart: SeverityChart | None

    @property
    def severities(self) -> list[int]:
        return [r.severity for r in self.rows if r.severity is not None]

    @property
    def severities_text(self) -> str:
        """ "1-5", "1, 3, 5" or "" without any."""
        s = self.severities
        if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
            return f"{s[0]}-{s[-1]}"
        return ", ".join(str(v) for v in s)

    @property
    def over_text(self) -> str:
        """ "severities 1-5", "severity 3" or "" without any."""
        if not self.severities:
            return ""
        word = "severity" if len(self.severities) == 1 else "severities"
        return f"{word} {self.severities_text}"

    @property
    def relative_text(self) -> str:
        return signed(self.relative_error)


@dataclass(frozen=True)
class RobustnessView:
    version: int | None
    perturbations_version: int | None
    clean_accuracy: float | None
    clean_error: float | None
    kinds: list[KindRobustness]
    mean_error: float | None  # the mean over the kinds of their mean errors
    relative_error: float | None  # likewise of their relative errors

    @property
    def has_top5(self) -> bool:
        return any(r.top5_accuracy is not None for k in self.kinds for r in k.rows)

    @property
    def relative_text(self) -> str:
        return signed(self.relative_error)

    def kind(self, name: str) -> KindRobustness | None:
        return next((k for k in self.kinds if k.kind == name), None)


# ------------------------------------------------------------------ building


def _by_severity(entries: Mapping[str, Any], severity: int) -> float | None:
    return _num(entries.get(str(severity)))


def _row(
    entry: Mapping[str, Any], kind: Mapping[str, Any], clean_error: float | None
) -> SeverityRow:
    severity = _int(entry.get("severity"))
    accuracy = _num(entry.get("accuracy"))
    error = _num(entry.get("error"))
    if error is None and severity is not None:
        error = _by_severity(_dict(kind.get("errors")), severity)
    if error is None and accuracy is not None:
        error = 1.0 - accuracy
    if accuracy is None and error is not None:
        accuracy = 1.0 - error
    delta = None if severity is None else _by_severity(_dict(kind.get("degradation")), severity)
    if delta is None and error is not None and clean_error is not None:
        delta = error - clean_error
    return SeverityRow(
        severity=severity,
        parameter=_num(entry.get("parameter")),
        accuracy=accuracy,
        error=error,
        delta=delta,
        top5_accuracy=_num(entry.get("top5Accuracy")),
    )


def _rows(kind: Mapping[str, Any], clean_error: float | None) -> list[SeverityRow]:
    entries = [e for e in _list(kind.get("bySeverity")) if isinstance(e, dict)]
    if not entries:
        # No rows: the severities of `errors` (the first version's documents).
        errors = _dict(kind.get("errors"))
        entries = [{"severity": int(s)} for s in errors if isinstance(s, str) and s.isdigit()]
    rows = [_row(e, kind, clean_error) for e in entries]
    name = kind.get("kind")
    if isinstance(name, str) and name in perturbations.KINDS:
        table = perturbations.KINDS[name].table
        rows = [
            replace(r, parameter=float(table[r.severity - 1]))
            if r.parameter is None and r.severity in SEVERITIES
            else r
            for r in rows
        ]
    # By severity (a stable sort: rows without one keep their place at the end).
    return sorted(rows, key=lambda r: (r.severity is None, r.severity or 0))


def _kind(index: int, entry: Mapping[str, Any], clean_error: float | None) -> KindRobustness:
    name = str(entry.get("kind") or "?")
    known = perturbations.KINDS.get(name)
    kind_clean = _num(entry.get("cleanError"))
    if kind_clean is None:
        kind_clean = clean_error
    return KindRobustness(
        index=index,
        kind=name,
        meaning="" if known is None else known.parameter,
        seed=_int(entry.get("seed")),
        clean_error=kind_clean,
        mean_error=_num(entry.get("meanError")),
        relative_error=_num(entry.get("relativeError")),
        rows=_rows(entry, kind_clean),
        chart=None,
    )


def robustness_view(metrics_doc: Mapping[str, Any] | None) -> RobustnessView | None:
    """The display rows of a metrics document's `robustness` section; None without one."""
    section = (metrics_doc or {}).get("robustness") if isinstance(metrics_doc, Mapping) else None
    if not isinstance(section, dict):
        return None
    clean = _dict(section.get("clean"))
    accuracy, error = _num(clean.get("accuracy")), _num(clean.get("error"))
    if error is None and accuracy is not None:
        error = 1.0 - accuracy
    if accuracy is None and error is not None:
        accuracy = 1.0 - error
    entries = [e for e in _list(section.get("perturbations")) if isinstance(e, dict)]
    kinds = [_kind(i, e, error) for i, e in enumerate(entries)]
    scale = _scale([r.accuracy for k in kinds for r in k.rows], accuracy)
    if scale is not None:
        kinds = [replace(k, chart=severity_chart(k, accuracy, scale)) for k in kinds]
    return RobustnessView(
        version=_int(section.get("version")),
        perturbations_version=_int(section.get("perturbationsVersion")),
        clean_accuracy=accuracy,
        clean_error=error,
        kinds=kinds,
        mean_error=_num(section.get("meanError")),
        relative_error=_num(section.get("relativeError")),
    )


# ------------------------------------------------------------------ chart


def _scale(values: Sequence[float | None], clean: float | None) -> tuple[float, float] | None:
    """The accuracy range every kind's chart shares: the values and the clean accuracy,
    padded, on round ticks, within [0, 1]; None with nothing to draw."""
    numbers = [v for v in values if v is not None]
    if not numbers:
        return None
    if clean is not None:
        numbers.append(clean)
    lo_v, hi_v, _, _ = charts.unit_range(numbers, 4)
    return lo_v, hi_v


def severity_chart(
    kind: KindRobustness, clean: float | None, scale: tuple[float, float]
) -> SeverityChart | None:
    """Accuracy by severity of one kind on the shared accuracy `scale`; None without a row
    to draw (a severity 1..5 with an accuracy)."""
    drawn = [r for r in kind.rows if r.severity in SEVERITIES and r.accuracy is not None]
    if not drawn:
        return None
    x0, x1 = LEFT, CHART_WIDTH - RIGHT
    y_top, y_bottom = TOP, CHART_HEIGHT - BOTTOM
    band = charts.Band(len(SEVERITIES), x0, (x1 - x0) / len(SEVERITIES))
    y = charts.Linear(scale[0], scale[1], y_bottom, y_top)
    y_ticks = [t for t in y.ticks(4) if scale[0] - 1e-9 <= t.value <= scale[1] + 1e-9]
    x_ticks = [charts.Tick(s, band.centre(i), str(s)) for i, s in enumerate(SEVERITIES)]
    points = []
    for r in drawn:
        assert r.severity is not None and r.accuracy is not None
        title = f"{kind.kind} severity {r.severity}"
        if r.parameter is not None:
            title += f" ({r.parameter_text})"
        title += f": accuracy {r.accuracy:.4f}"
        if r.delta is not None:
            title += f", error {r.delta_text} vs clean"
        x = band.centre(SEVERITIES.index(r.severity))
        points.append(ChartPoint(x, y(r.accuracy), r.severity, r.accuracy, title))
    return SeverityChart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        x0=x0,
        x1=x1,
        y_top=y_top,
        y_bottom=y_bottom,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        clean=None if clean is None else y(clean),
        clean_label="" if clean is None else f"clean {clean:.3f}",
        points=points,
    )
