"""`render_report`: one evaluation's page.

This module decides what each section shows (the headline cards, the rows of the
metrics table, the thumbnails); `charts` lays the charts out; the templates in
`templates/` hold the markup. Autoescape is on: every value a template writes
is escaped, class labels and names being user data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from dyff.report import charts
from dyff.report.criteria_view import CriteriaView, criteria_view
from dyff.report.robustness_view import robustness_view, signed
from dyff.report.thumbnails import THUMB_PX, thumbnail_data_uri
from dyff.schema import Evaluation

MISSING = "—"


# ------------------------------------------------------------------ formatting


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def pct(value: Any, digits: int = 1) -> str:
    v = _num(value)
    return MISSING if v is None else f"{v * 100:.{digits}f}%"


def dec(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return MISSING if v is None else f"{v:.{digits}f}"


def thousands(value: Any) -> str:
    return f"{int(value):,}"


def px(value: float, digits: int = 1) -> str:
    """A coordinate for an SVG attribute."""
    return f"{value:.{digits}f}"


def _dig(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


@functools.cache
def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("dyff.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        pct=pct, dec=dec, thousands=thousands, px=px, compact=charts.compact, signed=signed
    )
    env.globals.update(
        thumb_px=THUMB_PX,
        tick_gap=charts.TICK_GAP,
        tick_font=charts.TICK_FONT,
        colours={
            name.lower(): getattr(charts, name)
            for name in ("INK", "MUTED", "GRID", "FRAME", "ACCURACY", "GAP", "BLUES")
        },
    )
    return env


# ------------------------------------------------------------------ sections


@dataclass(frozen=True)
class Ref:
    name: str
    account: str


@dataclass(frozen=True)
class Fact:
    label: str
    value: str
    style: str  # "badge", "code" or "text"


@dataclass(frozen=True)
class Summary:
    name: str
    account: str
    model: Ref
    dataset: Ref
    details: list[Fact]


@dataclass(frozen=True)
class Card:
    key: str
    label: str
    value: str
    hint: str
    interval: str = ""  # "95 % CI [89.9%, 92.5%]", "" without one
    # The interval as a whisker on the 0..1 scale: (low, value, high), None without one.
    whisker: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Row:
    name: str
    value: str
    note: str
    interval: str = ""  # "[89.90%, 92.51%]", "" without one


@dataclass(frozen=True)
class PerClass:
    chart: charts.Bars | None  # None: neither precision nor recall computed
    columns: list[str]
    rows: list[tuple[str, list[str]]]
    open: bool


@dataclass(frozen=True)
class Error:
    row_id: Any
    true: str
    predicted: str
    score: float | None
    meter: str  # the score as a bar's width, "" without a score
    thumb: tuple[str, int, int] | None


def _summary(doc: dict[str, Any]) -> Summary:
    meta, spec, status = (doc.get(k) or {} for k in ("metadata", "spec", "status"))

    def ref(which: str) -> Ref:
        r = spec.get(which) or {}
        return Ref(str(r.get("name") or "?"), str(r.get("account") or ""))

    details = []
    if status.get("phase"):
        details.append(Fact("", str(status["phase"]), "badge"))
    if meta.get("creationTimestamp"):
        details.append(Fact("created", str(meta["creationTimestamp"]), "text"))
    if status.get("modelDigest"):
        details.append(Fact("model digest", str(status["modelDigest"])[:19], "code"))
    if meta.get("uid"):
        details.append(Fact("uid", str(meta["uid"]), "code"))
    if timings := _timings(status.get("timings")):
        details.append(Fact("time", timings, "text"))
    name, account = meta.get("name") or "?", meta.get("namespace") or ""
    return Summary(str(name), str(account), ref("model"), ref("dataset"), details)


def _timings(timings: Any) -> str:
    """`status.timings` in one line: "queued 0.4 s · model start 5.1 s · …"; "" without."""
    if not isinstance(timings, dict):
        return ""
    parts = []
    for key, label in (
        ("queuedS", "queued"),
        ("modelStartS", "model start"),
        ("inferenceS", "inference"),
        ("metricsS", "metrics"),
    ):
        value = timings.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{label} {value:.1f} s")
    return " · ".join(parts)


def _bins(metrics: dict[str, Any]) -> Any:
    return _dig(metrics, "calibration", "bins") or 15


def _bounds(criteria: CriteriaView | None, key: str, fmt: Any, sep: str = ", ") -> str | None:
    """The interval of a headline metric (criteria key) written with `fmt`; None without."""
    e = None if criteria is None else criteria.estimate(key)
    if e is None or e.low is None or e.high is None:
        return None
    return f"{fmt(e.low)}{sep}{fmt(e.high)}"


def _with_intervals(cards: list[Card], criteria: CriteriaView | None) -> list[Card]:
    formats = {"accuracy": pct, "top5Accuracy": pct, "macroF1": dec, "ece": dec}
    out = []
    for c in cards:
        fmt = formats.get(c.key)
        bounds = None if fmt is None else _bounds(criteria, c.key, fmt)
        if bounds is not None and c.value != MISSING:
            assert criteria is not None
            e = criteria.estimate(c.key)
            assert e is not None and e.low is not None and e.high is not None
            whisker = None
            if e.value is not None and all(0 <= v <= 1 for v in (e.low, e.value, e.high)):
                whisker = (float(e.low), float(e.value), float(e.high))
            text = f"{criteria.level_text} CI [{bounds}]"
            c = Card(c.key, c.label, c.value, c.hint, text, whisker)
        out.append(c)
    return out


def _cards(metrics: dict[str, Any]) -> list[Card]:
    top5_hint = "true label among the top 5"
    if metrics.get("top5Omitted"):
        top5_hint = "n/a: the model has at most 5 classes"
    elif "top5Accuracy" not in metrics:
        top5_hint = "not computed"
    elif metrics["top5Accuracy"] is None:
        top5_hint = "n/a: fewer than 5 labels kept"
    rows = _num(metrics.get("rows"))
    cards = [
        Card("accuracy", "Accuracy", pct(metrics.get("accuracy")), "top-1"),
        Card("top5Accuracy", "Top-5 accuracy", pct(metrics.get("top5Accuracy")), top5_hint),
        Card("macroF1", "Macro F1", dec(_dig(metrics, "macro", "f1")), "mean over classes"),
        Card("ece", "ECE", dec(metrics.get("ece")), f"{_bins(metrics)} bins, lower is better"),
        Card("rows", "Rows", MISSING if rows is None else thousands(rows), "predictions scored"),
    ]
    return [
        Card(c.key, c.label, c.value, "not computed")
        if c.value == MISSING and c.key != "top5Accuracy"
        else c
        for c in cards
    ]


def _metric_rows(m: dict[str, Any], criteria: CriteriaView | None = None) -> list[Row]:
    def interval(key: str, fmt: Any) -> str:
        bounds = _bounds(criteria, key, fmt)
        return "" if bounds is None else f"[{bounds}]"

    rows = []
    if "rows" in m:
        rows.append(Row("Rows evaluated", thousands(m["rows"]), "Predictions scored."))
    if "labels" in m:
        rows.append(Row("Classes", str(len(m["labels"])), "Labels the dataset defines."))
    if "accuracy" in m:
        note = "Share of rows whose top prediction is the true label."
        iv = interval("accuracy", lambda v: pct(v, 2))
        rows.append(Row("Accuracy (top-1)", pct(m["accuracy"], 2), note, iv))
    rows += _top5_rows(m, interval("top5Accuracy", lambda v: pct(v, 2)))
    for key, label in (("precision", "Precision"), ("recall", "Recall"), ("f1", "F1")):
        if key in (m.get("macro") or {}):
            name = f"Macro {label if key == 'f1' else key}"
            iv = interval(f"macro{label}", dec)
            rows.append(Row(name, dec(m["macro"][key]), f"{label}, averaged over classes.", iv))
    if "ece" in m:
        note = (
            f"Mean gap between confidence and accuracy over {_bins(m)} bins, "
            "weighted by rows; 0 is perfectly calibrated."
        )
        iv = interval("ece", lambda v: dec(v, 4))
        rows.append(Row("Expected calibration error", dec(m["ece"], 4), note, iv))
    return rows


def _top5_rows(m: dict[str, Any], interval: str = "") -> list[Row]:
    rows = []
    if "top5Accuracy" in m:
        top5 = m["top5Accuracy"]
        note = "Share of rows whose true label is among the five best predictions."
        if top5 is None:
            note += " Too few labels were kept per prediction."
        value = "n/a" if top5 is None else pct(top5, 2)
        rows.append(Row("Top-5 accuracy", value, note, "" if top5 is None else interval))
    if m.get("top5Omitted"):
        rows.append(Row("Top-5 accuracy", "n/a", str(m["top5Omitted"]).capitalize()))
    if m.get("predictedOutsideLabels"):
        extra = [str(x) for x in m.get("extraLabels") or []]
        shown = ", ".join(extra[:10]) + (", …" if len(extra) > 10 else "")
        note = "Rows predicted as a model label the dataset lacks"
        note += f" ({shown}); counted as wrong." if extra else "; counted as wrong."
        name = "Predicted outside the dataset's labels"
        rows.append(Row(name, thousands(m["predictedOutsideLabels"]), note))
    return rows


def _reliability(metrics: dict[str, Any]) -> charts.Reliability | None:
    cal = metrics.get("calibration")
    if not isinstance(cal, dict) or not cal.get("counts"):
        return None
    return charts.reliability(cal)


def _confusion(metrics: dict[str, Any]) -> charts.Confusion | None:
    matrix = metrics.get("confusionMatrix")
    return charts.confusion(metrics.get("labels") or [], matrix) if matrix else None


def _per_class(metrics: dict[str, Any]) -> PerClass | None:
    classes = metrics.get("perClass") or []
    if not classes:
        return None
    series = [
        charts.Series(key, key.capitalize(), colour)
        for key, colour in (("precision", charts.PRECISION), ("recall", charts.RECALL))
        if any(key in c for c in classes)
    ]
    keys = [k for k in ("support", "precision", "recall", "f1") if any(k in c for c in classes)]
    rows = [
        (
            str(c.get("label", "")),
            [thousands(c[k]) if _is_count(c.get(k)) else dec(c.get(k)) for k in keys],
        )
        for c in classes
    ]
    return PerClass(
        chart=charts.per_class(classes, series) if series else None,
        columns=["F1" if k == "f1" else k.capitalize() for k in keys],
        rows=rows,
        open=len(classes) <= 12,
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _robustness_note(doc: dict[str, Any], metrics: dict[str, Any]) -> str:
    """What the Robustness section says without results: "No perturbations were requested"
    when the evaluation asked for none (its spec, or a criteria section written without a
    robustness one), otherwise "Not computed" (results from before perturbations existed,
    or missing)."""
    asked = _dig(doc, "spec", "criteria", "perturbations")
    if asked:
        return "Not computed for this evaluation."
    if isinstance(metrics.get("criteria"), dict) or isinstance(asked, list):
        return "No perturbations were requested (spec.criteria.perturbations)."
    return "Not computed for this evaluation."


def _errors(errors: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[Error]:
    def name(i: Any) -> str:
        return str(labels[i]) if isinstance(i, int) and 0 <= i < len(labels) else str(i)

    cards = []
    for row in errors:
        score = _num(row.get("score"))
        meter = "" if score is None else f"{min(1.0, max(0.0, score)) * 100:.0f}"
        thumb = thumbnail_data_uri(row.get("image"))
        true, predicted = name(row.get("label")), name(row.get("predicted"))
        cards.append(Error(row.get("row_id"), true, predicted, score, meter, thumb))
    return cards


# ------------------------------------------------------------------ the page


def render_report(
    evaluation: dict[str, Any] | Evaluation,
    metrics: dict[str, Any],
    errors: list[dict[str, Any]],
    *,
    title: str | None = None,
) -> str:
    """A self-contained HTML page of an evaluation's results.

    `evaluation` is the record or its wire document (camelCase, as served);
    `metrics` the metrics document (`dyff.metrics.compute`; any key may be
    missing); `errors` rows with `row_id`, `label`, `predicted` (class ids),
    `score` and `image` (the encoded image bytes, or None). Class names come
    from `metrics["labels"]`.
    """
    doc = evaluation.wire() if isinstance(evaluation, Evaluation) else dict(evaluation)
    name = _dig(doc, "metadata", "name") or "evaluation"
    # Prediction ids past the dataset's labels name model labels the dataset lacks.
    labels = [str(x) for x in (metrics.get("labels") or []) + (metrics.get("extraLabels") or [])]
    criteria = criteria_view(metrics)
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            title=title or f"Evaluation report: {name}",
            summary=_summary(doc),
            cards=_with_intervals(_cards(metrics), criteria),
            metric_rows=_metric_rows(metrics, criteria),
            criteria=criteria,
            robustness=robustness_view(metrics),
            robustness_note=_robustness_note(doc, metrics),
            reliability=_reliability(metrics),
            ece=_num(metrics.get("ece")),
            confusion=_confusion(metrics),
            per_class=_per_class(metrics),
            errors=_errors(errors, labels),
        )
    )
