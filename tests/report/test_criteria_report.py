"""Evaluation criteria (issue 12) shown to people: the report's intervals, Gates and Slices
sections, and the display rows behind them (`dyff.report.criteria_view`), from documents
that `dyff.criteria.compute` makes of synthetic predictions; older and partial documents."""

from __future__ import annotations

import html as htmllib
import json
import re
from typing import Any

import numpy as np
import polars as pl
import pytest

from dyff import criteria, metrics, report
from dyff.report.criteria_view import CHART_ROWS, criteria_view
from dyff.schema import ALL_METRICS, Criteria, Gate, IntervalSpec, SliceSpec
from tests.report.test_report import HOSTILE, Page, assert_self_contained, complete_evaluation

LABELS = [f"c{i}" for i in range(6)]
FAST = IntervalSpec(resamples=200, seed=0)
# Accuracy per lighting: night and dusk clearly worse than the rest; the hostile value is a
# slice like any other.
ACCURACY = {"day": 0.92, "dusk": 0.72, "indoor": 0.93, "night": 0.5, HOSTILE: 0.91}
ROWS = 300


def top5_of(predicted: np.ndarray) -> np.ndarray:
    """Each row's five best labels: the prediction and the next four."""
    return np.stack([(predicted + j) % len(LABELS) for j in range(5)], axis=1)


def predictions(seed: int = 0) -> pl.DataFrame:
    """Rows whose accuracy depends on their lighting (the criteria frame's columns)."""
    rng = np.random.default_rng(seed)
    k = len(LABELS)
    parts = []
    for light, acc in ACCURACY.items():
        label = rng.integers(0, k, ROWS)
        right = rng.random(ROWS) < acc
        predicted = np.where(right, label, (label + rng.integers(1, k, ROWS)) % k)
        score = np.where(right, rng.uniform(0.5, 1.0, ROWS), rng.uniform(0.2, 0.7, ROWS))
        parts.append(
            pl.DataFrame(
                {
                    "label": label.astype(np.int32),
                    "predicted": predicted.astype(np.int32),
                    "score": score.astype(np.float32),
                    "top5": (top5_of(predicted) == label[:, None]).any(axis=1),
                    "lighting": [light] * ROWS,
                }
            )
        )
    return pl.concat(parts)


GATES = [
    Gate(metric="accuracy", op=">=", value=0.7),
    Gate(metric="accuracy", op=">=", value=0.9, using="lower_bound"),
    Gate(name="night-ok", metric="accuracy", op=">=", value=0.8, slice={"lighting": "night"}),
    Gate(metric="ece", op="<=", value=0.5, using="upper_bound"),
]


def metrics_doc(spec: Criteria | None = None) -> dict[str, Any]:
    """metrics.json as the evaluate workload writes it: the standard metrics and the
    criteria section of the same predictions."""
    frame = predictions()
    labels = frame["label"].to_numpy()
    predicted = frame["predicted"].to_numpy()
    score = frame["score"].to_numpy().astype(np.float64)
    doc = metrics.compute(labels, predicted, score, top5_of(predicted), LABELS, list(ALL_METRICS))
    spec = spec or Criteria(intervals=FAST, slices=[SliceSpec(by=["lighting"])], gates=GATES)
    doc["criteria"] = json.loads(json.dumps(criteria.compute(frame, LABELS, spec, top5=True)))
    return doc


def rows_of(html: str, attribute: str) -> dict[str, tuple[str, str]]:
    """{attribute value: (the row's class, its text)} of the table rows carrying it."""
    out = {}
    pattern = rf'<tr {attribute}="([^"]*)"(?: data-passed="[^"]*")?(?: class="([^"]*)")?>(.*?)</tr>'
    for value, cls, inner in re.findall(pattern, html, re.S):
        text = " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", inner)).split())
        out[htmllib.unescape(value)] = (cls, text)
    return out


def note_of(html: str) -> str:
    """The text of the first slice spec's note (what it flags)."""
    start = html.index('id="slices-0"')
    inner = html[html.index('<p class="note">', start) : html.index("</p>", start)]
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", inner)).split())


def section(html: str, section_id: str) -> str:
    start = html.index(f'<section id="{section_id}">')
    return html[start : html.index("</section>", start)]


# ------------------------------------------------------------------ the report


def test_intervals_stand_beside_the_headline_metrics() -> None:
    doc = metrics_doc()
    html = report.render_report(complete_evaluation(), doc, [])
    assert_self_contained(html)
    page = Page(html)
    iv = doc["criteria"]["intervals"]["metrics"]
    acc = iv["accuracy"]
    assert acc["low"] < acc["high"]
    for key, value in (("accuracy", doc["accuracy"]), ("top5Accuracy", doc["top5Accuracy"]),
                       ("macroF1", doc["macro"]["f1"]), ("ece", doc["ece"])):  # fmt: skip
        assert iv[key]["value"] == pytest.approx(value)
        assert iv[key]["low"] <= value <= iv[key]["high"]
    # the cards: "95 % CI [88.1%, 90.3%]"
    header = page.text("summary")
    assert f"95 % CI [{acc['low'] * 100:.1f}%, {acc['high'] * 100:.1f}%]" in header
    f1 = iv["macroF1"]
    assert f"95 % CI [{f1['low']:.3f}, {f1['high']:.3f}]" in header
    # the metrics table: an interval column, in each row's own unit
    table = page.text("metrics-table")
    assert "95 % interval" in table
    assert f"[{acc['low'] * 100:.2f}%, {acc['high'] * 100:.2f}%]" in table
    top5 = iv["top5Accuracy"]
    assert f"[{top5['low'] * 100:.2f}%, {top5['high'] * 100:.2f}%]" in table
    for key in ("macroPrecision", "macroRecall", "macroF1"):
        assert f"[{iv[key]['low']:.3f}, {iv[key]['high']:.3f}]" in table
    assert f"[{iv['ece']['low']:.4f}, {iv['ece']['high']:.4f}]" in table
    assert "200 resamples, seed 0" in page.text("intervals-note")
    # the cards' whiskers: a line from low to high on 0..1 (x = 4 + v * 112), a dot at the value
    whiskers = re.findall(r'<svg class="whisker".*?</svg>', html)
    assert len(whiskers) == 4  # accuracy, top-5, macro F1, ECE
    ranges = re.findall(r'class="whisker-range"', whiskers[0])
    assert len(ranges) == 3
    x1, x2 = (
        float(v)
        for v in re.findall(
            r'x1="([\d.]+)" y1="6" x2="([\d.]+)" y2="6" class="whisker-range"', whiskers[0]
        )[0]
    )
    assert (x1, x2) == (round(4 + acc["low"] * 112, 1), round(4 + acc["high"] * 112, 1))
    (dot,) = re.findall(r'<circle cx="([\d.]+)"', whiskers[0])
    assert float(dot) == round(4 + acc["value"] * 112, 1)


def test_gates_show_each_outcome_against_its_threshold() -> None:
    doc = metrics_doc()
    html = report.render_report(complete_evaluation(), doc, [])
    gates = doc["criteria"]["gates"]
    assert [g["passed"] for g in gates["results"]] == [True, False, False, True]
    shown = rows_of(section(html, "gates"), "data-gate")
    assert list(shown) == [g["name"] for g in gates["results"]]
    for g in gates["results"]:
        _, text = shown[g["name"]]
        assert ("PASS" if g["passed"] else "FAIL") in text.split()
        assert f"{g['observed']:.4f}" in text and f"{g['rows']:,}" in text
    assert "(lower bound)" in shown["accuracy (lower bound) >= 0.9"][1]
    assert "accuracy >= 0.9" in shown["accuracy (lower bound) >= 0.9"][1]
    assert "accuracy >= 0.8 on lighting=night" in shown["night-ok"][1]
    assert "(upper bound)" in shown["ece (upper bound) <= 0.5"][1]
    passed = re.findall(r'<tr data-gate="[^"]*" data-passed="(\w+)"', html)
    assert passed == ["true", "false", "false", "true"]
    verdict = Page(html).text("gates")
    assert "FAILED" in verdict and gates["message"] in verdict
    # the summary says it too, linking to the section
    summary = Page(html).text("gates-verdict")
    assert "failed" in summary and "2 of 4 gates failed" in summary


def test_flagged_slices_come_first_with_their_adjusted_p_values() -> None:
    doc = metrics_doc()
    html = report.render_report(complete_evaluation(), doc, [])
    spec = doc["criteria"]["slices"][0]
    flagged = [f["key"]["lighting"] for f in spec["flagged"]]
    assert flagged == ["night", "dusk"]  # most severe first
    slices = section(html, "slices")
    assert 'id="slices-0"' in slices and 'data-by="lighting"' in slices
    shown = rows_of(slices, "data-slice")
    order = [k.removeprefix("lighting=") for k in shown]
    assert order[:2] == ["night", "dusk"]
    assert set(order) == set(ACCURACY)
    values = {v["key"]["lighting"]: v for v in spec["values"]}
    for light, (cls, text) in shown.items():
        v = values[light.removeprefix("lighting=")]
        acc = v["metrics"]["accuracy"]
        assert text.startswith(v["key"]["lighting"])
        assert f"{acc['value']:.4f}" in text and str(v["support"]) in text
        assert f"[{acc['low']:.4f}, {acc['high']:.4f}]" in text
        assert f"{v['restAccuracy']:.4f}" in text
        assert (cls == "flagged") == v["flagged"] == ("flagged" in text)
        if v["flagged"]:
            assert f"q = {v['qValue']:.3g}" in text
    # the note names the flagged ones, most severe first
    note = note_of(html)
    assert "2 flagged" in note and note.index("lighting=night") < note.index("lighting=dusk")
    # the chart: one point per slice, the flagged ones marked, a line at all rows' accuracy
    page = Page(html)
    points = page.find("slices-0", "g", "slice-point")
    assert len(points) == len(ACCURACY)
    assert len(page.find("slices-0", "g", "flagged")) == 2
    assert len(page.find("slices-0", "circle")) == len(ACCURACY)
    assert len(page.find("slices-0", "line", "overall")) == 1


def test_a_hostile_slice_value_stays_text() -> None:
    doc = metrics_doc()
    html = report.render_report(complete_evaluation(), doc, [])
    assert "<script" not in html.lower()
    assert htmllib.escape(HOSTILE, quote=False) in html
    page = Page(html)
    assert HOSTILE in page.text("slices-0", "th")  # its table row, as text
    assert f"lighting={HOSTILE}" in rows_of(section(html, "slices"), "data-slice")
    assert any(HOSTILE in t for t, *_ in page.texts)


def test_crossed_slices_and_untested_small_slices() -> None:
    frame_spec = Criteria(
        intervals=FAST,
        slices=[SliceSpec(by=["lighting"], min_support=ROWS + 1)],  # every slice untested
    )
    doc = metrics_doc(frame_spec)
    html = report.render_report(complete_evaluation(), doc, [])
    shown = rows_of(section(html, "slices"), "data-slice")
    assert all(cls == "" and "untested" in text for cls, text in shown.values())
    assert "None flagged." in note_of(html)
    assert "No gates were set" in Page(html).text("gates")


def test_an_older_document_without_criteria_renders_as_before() -> None:
    doc = metrics_doc()
    del doc["criteria"]
    html = report.render_report(complete_evaluation(), doc, [])
    page = Page(html)
    assert 'class="card-interval"' not in html and "interval" not in page.text("metrics-table")
    assert "Not computed" in page.text("gates") and "Not computed" in page.text("slices")
    assert "gates-verdict" not in page.ids()
    head = re.search(r'<table id="metrics-table".*?</thead>', html, re.S)
    assert head is not None and len(re.findall(r"<th[ >]", head.group(0))) == 3


@pytest.mark.parametrize(
    "section_doc",
    [
        {},
        {"version": 1},
        {"intervals": {"metrics": {"accuracy": {"value": 0.5}}}},  # no bounds
        {"intervals": {"metrics": {"accuracy": {"value": 0.5, "low": None, "high": 0.6}}}},
        {"intervals": "odd", "slices": "odd", "gates": "odd"},
        {"slices": [{"by": ["lighting"]}], "gates": {"passed": True}},
        {"slices": [{"by": ["lighting"], "values": [{"key": {"lighting": None}}, "x", {}]}]},
        {"gates": {"results": [{"name": "g"}, "x", {"gate": {"op": ">="}, "passed": "yes"}]}},
        {"slices": [{"values": [{"key": {"a": 1}, "flagged": True, "metrics": {}}]}]},
    ],
)
def test_partial_documents_show_what_is_there(section_doc: dict[str, Any]) -> None:
    doc = metrics_doc()
    doc["criteria"] = section_doc
    html = report.render_report(complete_evaluation(), doc, [])
    page = Page(html)
    assert {"gates", "slices", "metrics-table"} <= page.ids()
    view = criteria_view(doc)
    assert view is not None
    if view.estimate("accuracy") is not None:
        assert 'class="card-interval"' not in html  # a value without both bounds has no interval


def test_a_partial_slice_row_keeps_its_null_value_and_unknown_gates() -> None:
    view = criteria_view(
        {
            "criteria": {
                "slices": [{"by": ["lighting"], "values": [{"key": {"lighting": None}}]}],
                "gates": {"results": [{"name": "g"}]},
            }
        }
    )
    assert view is not None
    (row,) = view.slices[0].rows
    assert row.values == ["(none)"] and row.accuracy is None and not row.flagged
    assert view.slices[0].chart is None  # nothing to draw
    assert view.gates is not None
    (gate,) = view.gates.rows
    assert gate.passed is None and gate.outcome == "?" and view.gates.passed is False


def test_the_view_follows_the_document() -> None:
    doc = metrics_doc()
    view = criteria_view(doc)
    assert view is not None and criteria_view({"accuracy": 0.5}) is None
    assert criteria_view(None) is None
    assert view.level_text == "95 %" and view.resamples == 200 and view.rows == ROWS * 5
    assert [e.key for e in view.estimates] == list(criteria.HEADLINE)
    acc = doc["criteria"]["intervals"]["metrics"]["accuracy"]
    est = view.estimate("accuracy")
    assert est is not None and est.interval == f"[{acc['low']:.4f}, {acc['high']:.4f}]"
    (table,) = view.slices
    assert [r.label for r in table.flagged] == ["lighting=night", "lighting=dusk"]
    assert table.flagged[0].gap == pytest.approx(doc["criteria"]["slices"][0]["flagged"][0]["gap"])
    assert view.gates is not None and [g.name for g in view.gates.failed] == [
        "accuracy (lower bound) >= 0.9",
        "night-ok",
    ]


def test_the_chart_is_capped_and_says_so() -> None:
    many = [
        {
            "key": {"site": f"s{i}"},
            "support": 40,
            "metrics": {"accuracy": {"value": 0.5 + i / 200, "low": 0.4, "high": 0.9}},
            "flagged": False,
            "tested": True,
        }
        for i in range(CHART_ROWS + 10)
    ]
    doc = {"accuracy": 0.6, "criteria": {"slices": [{"by": ["site"], "values": many}]}}
    view = criteria_view(doc)
    assert view is not None
    chart = view.slices[0].chart
    assert chart is not None and chart.shown == CHART_ROWS and chart.total == CHART_ROWS + 10
    html = report.render_report(complete_evaluation(), doc, [])
    assert f"first {CHART_ROWS} of {CHART_ROWS + 10} slices" in html
    assert len(rows_of(section(html, "slices"), "data-slice")) == CHART_ROWS + 10
