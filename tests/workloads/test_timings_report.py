"""`status.timings` of an Evaluation: its schema (camelCase on the wire, optional) and its
one line in the HTML report."""

from __future__ import annotations

from dyff import report
from dyff.schema import Evaluation, Timings
from tests.report.test_report import Page, complete_evaluation, make_metrics


def test_timings_are_optional_and_camel_case() -> None:
    ev = complete_evaluation()
    assert ev.status.timings is None
    ev.status.timings = Timings(queued_s=0.25, model_start_s=0, inference_s=1.5, metrics_s=0.1)
    wire = ev.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["status"]["timings"] == {
        "queuedS": 0.25, "modelStartS": 0.0, "inferenceS": 1.5, "metricsS": 0.1,
    }  # fmt: skip
    assert Evaluation.model_validate(wire).status.timings == ev.status.timings


def test_report_shows_the_timings_in_one_line() -> None:
    doc, *_ = make_metrics()
    ev = complete_evaluation()
    assert "model start" not in Page(report.render_report(ev, doc, [])).text("summary")
    ev.status.timings = Timings(queued_s=0.42, model_start_s=5.06, inference_s=1.5, metrics_s=0.1)
    header = Page(report.render_report(ev, doc, [])).text("summary")
    assert "queued 0.4 s · model start 5.1 s · inference 1.5 s · metrics 0.1 s" in header
