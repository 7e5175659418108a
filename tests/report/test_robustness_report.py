"""Robustness results (issue 12, `spec.criteria.perturbations`) shown to people: the
report's Robustness section and the display rows behind it (`dyff.report.robustness_view`),
from sections that `dyff.robustness.robustness_doc` (what the evaluate workload writes) makes
of per-severity accuracies; the first version's documents, partial ones and hostile ones."""

from __future__ import annotations

import html as htmllib
import json
import re
from typing import Any

import pytest

from dyff import perturbations, report
from dyff.report.robustness_view import robustness_view
from dyff.robustness import robustness_doc
from dyff.schema import Criteria, PerturbationSpec
from tests.report.test_criteria_report import metrics_doc, section
from tests.report.test_report import HOSTILE, Page, assert_self_contained, complete_evaluation

CLEAN = 0.9
# Accuracy per (kind, seed) and severity: noise hurts more and more, JPEG a little, and
# brightness at 2 happens to help (a negative change of error).
ACCURACY: dict[tuple[str, int], dict[int, float]] = {
    ("gaussian_noise", 7): {1: 0.85, 2: 0.78, 3: 0.66, 4: 0.51, 5: 0.32},
    ("jpeg", 0): {1: 0.88, 3: 0.86, 5: 0.8},
    ("brightness", 0): {2: 0.9125},
}


def robustness_section(
    clean: float = CLEAN,
    accuracy: dict[tuple[str, int], dict[int, float]] | None = None,
    top5: dict[tuple[str, int], dict[int, float]] | None = None,
) -> dict[str, Any]:
    """The `robustness` section as metrics.json holds it: rows in the shape
    `robustness_results` builds them, assembled by `robustness_doc`, through JSON."""
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for (kind, seed), by_severity in (accuracy or ACCURACY).items():
        for severity, acc in by_severity.items():
            row: dict[str, Any] = {
                "severity": severity,
                "parameter": perturbations.parameter(kind, severity),
                "accuracy": acc,
                "error": 1.0 - acc,
            }
            if top5 is not None:
                row["top5Accuracy"] = top5[kind, seed][severity]
            rows.setdefault((kind, seed), []).append(row)
    return json.loads(json.dumps(robustness_doc(clean, rows)))


def with_robustness(robust: Any = None) -> dict[str, Any]:
    doc = metrics_doc()
    doc["robustness"] = robustness_section() if robust is None else robust
    return doc


def table_rows(html: str) -> list[tuple[str, str, str, str]]:
    """(class, kind, severity, text) of each row of the robustness table, in order."""
    pattern = r'<tr (?:class="([^"]*)" )?data-kind="([^"]*)" data-severity="([^"]*)">(.*?)</tr>'
    return [
        (cls, htmllib.unescape(kind), sev, text_of(inner))
        for cls, kind, sev, inner in re.findall(pattern, html, re.S)
    ]


def text_of(fragment: str) -> str:
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def render(doc: dict[str, Any], evaluation: Any = None) -> str:
    return report.render_report(evaluation or complete_evaluation(), doc, [])


# ------------------------------------------------------------------ the document


def test_the_document_is_the_corruption_error_of_each_kind() -> None:
    robust = robustness_section()
    assert robust["version"] == 1
    assert robust["perturbationsVersion"] == perturbations.PERTURBATIONS_VERSION
    assert robust["clean"] == {"accuracy": CLEAN, "error": pytest.approx(1 - CLEAN)}
    summaries = {}
    for entry, ((kind, seed), by_severity) in zip(
        robust["perturbations"], ACCURACY.items(), strict=True
    ):
        summary = perturbations.corruption_error(
            1 - CLEAN, {s: 1 - a for s, a in by_severity.items()}
        )
        summaries[kind] = summary
        rows = entry.pop("bySeverity")
        assert entry == {"kind": kind, "seed": seed, **json.loads(json.dumps(summary.to_dict()))}
        assert [r["severity"] for r in rows] == list(by_severity)
        assert [r["accuracy"] for r in rows] == list(by_severity.values())
    means = perturbations.mean_over_kinds(summaries)
    assert robust["meanError"] == pytest.approx(means["meanError"])
    assert robust["relativeError"] == pytest.approx(means["relativeError"])
    # relative error: mean error minus the clean error, negative where it helps
    noise = robust["perturbations"][0]
    assert noise["relativeError"] == pytest.approx(noise["meanError"] - (1 - CLEAN))
    assert robust["perturbations"][2]["relativeError"] < 0


# ------------------------------------------------------------------ the view


def test_the_view_follows_the_document() -> None:
    robust = robustness_section()
    view = robustness_view({"robustness": robust})
    assert view is not None
    assert robustness_view({"accuracy": 0.5}) is None and robustness_view(None) is None
    assert robustness_view({"robustness": "odd"}) is None
    assert view.clean_accuracy == CLEAN and view.clean_error == pytest.approx(1 - CLEAN)
    assert view.mean_error == pytest.approx(robust["meanError"])
    assert view.relative_text == f"{robust['relativeError']:+.4f}"
    assert [k.kind for k in view.kinds] == [k for k, _ in ACCURACY]
    assert not view.has_top5
    for k, entry in zip(view.kinds, robust["perturbations"], strict=True):
        assert k.seed == entry["seed"] and k.mean_error == pytest.approx(entry["meanError"])
        assert k.relative_error == pytest.approx(entry["relativeError"])
        assert k.severities == entry["severities"]
        for r in k.rows:
            assert r.severity is not None
            assert r.parameter == perturbations.parameter(k.kind, r.severity)
            assert r.accuracy == ACCURACY[k.kind, k.seed][r.severity]
            assert r.error == pytest.approx(1 - r.accuracy)
            assert r.delta == pytest.approx(entry["degradation"][str(r.severity)])
            assert r.delta == pytest.approx(r.error - (1 - CLEAN))
    noise, jpeg, bright = view.kinds
    assert noise.over_text == "severities 1-5" and jpeg.over_text == "severities 1, 3, 5"
    assert bright.over_text == "severity 2" and bright.rows[0].delta_text.startswith("-")
    assert noise.meaning == perturbations.KINDS["gaussian_noise"].parameter


def test_each_kind_has_a_chart_on_one_scale_with_the_clean_accuracy() -> None:
    view = robustness_view({"robustness": robustness_section()})
    assert view is not None
    noise, jpeg, bright = view.kinds
    assert noise.chart is not None and jpeg.chart is not None and bright.chart is not None
    # one dot per severity, at the severity's slot: lower accuracy lower on the page
    assert [p.severity for p in noise.chart.points] == [1, 2, 3, 4, 5]
    xs = [p.x for p in noise.chart.points]
    ys = [p.y for p in noise.chart.points]
    assert xs == sorted(xs) and ys == sorted(ys) and len(set(ys)) == 5
    assert [p.severity for p in jpeg.chart.points] == [1, 3, 5]
    assert [p.x for p in jpeg.chart.points] == [xs[0], xs[2], xs[4]]
    # the clean accuracy is above every noise point (they are all worse), below brightness's
    assert noise.chart.clean is not None and all(noise.chart.clean < y for y in ys)
    assert bright.chart.points[0].y < noise.chart.clean
    # every chart on the same scale, so the kinds compare
    assert noise.chart.y_ticks == jpeg.chart.y_ticks == bright.chart.y_ticks
    assert noise.chart.clean == jpeg.chart.clean
    t0, t1 = noise.chart.y_ticks[:2]

    def y(value: float) -> float:  # the ticks' linear scale
        return t0.pos + (value - t0.value) * (t1.pos - t0.pos) / (t1.value - t0.value)

    assert t1.pos < t0.pos  # up the page
    assert jpeg.chart.points[0].y == pytest.approx(y(0.88))
    assert noise.chart.points[4].y == pytest.approx(y(0.32))
    assert noise.chart.clean == pytest.approx(y(CLEAN))
    assert "gaussian_noise severity 3 (0.18): accuracy 0.6600" in noise.chart.points[2].title


# ------------------------------------------------------------------ the report


def test_the_report_shows_every_kind_and_severity() -> None:
    doc = with_robustness()
    robust = doc["robustness"]
    html = render(doc)
    assert_self_contained(html)
    page = Page(html)
    assert {"robustness", "robustness-summary", "robustness-0", "robustness-2"} <= page.ids()
    summary = " ".join(page.text("robustness-summary").split())
    assert f"accuracy {CLEAN:.4f}" in summary and f"error {1 - CLEAN:.4f}" in summary
    assert f"mean error {robust['meanError']:.4f}" in summary
    assert f"relative error {robust['relativeError']:+.4f}" in summary
    rows = table_rows(section(html, "robustness"))
    expected = []
    for entry in robust["perturbations"]:
        kind = entry["kind"]
        for r in entry["bySeverity"]:
            delta = entry["degradation"][str(r["severity"])]
            text = (
                f"{kind} {r['severity']} {r['parameter']:g} {r['accuracy']:.4f} "
                f"{r['error']:.4f} {delta:+.4f}"
            )
            expected.append(("", kind, str(r["severity"]), text))
        over = (
            "severity 2"
            if kind == "brightness"
            else "severities " + ("1-5" if kind == "gaussian_noise" else "1, 3, 5")
        )
        text = f"{kind} mean over {over} {entry['meanError']:.4f} {entry['relativeError']:+.4f}"
        expected.append(("kind-mean", kind, "mean", text))
    overall = (
        f"all kinds mean over 3 kinds {robust['meanError']:.4f} {robust['relativeError']:+.4f}"
    )
    expected.append(("all-kinds", "all kinds", "mean", overall))
    assert rows == expected
    assert "-0.0125" in rows[-3][3]  # brightness helped: error 0.0875 vs 0.1000
    # a chart per kind: a dot per severity asked, the clean accuracy's dashed line
    for i, entry in enumerate(robust["perturbations"]):
        block = f"robustness-{i}"
        dots = page.find(block, "circle", "severity-point")
        assert [d["data-severity"] for d in dots] == [str(s) for s in entry["severities"]]
        assert len(page.find(block, "line", "clean")) == 1
        assert f"clean {CLEAN:.3f}" in page.text(block)
        assert entry["kind"] in page.text(block, "h3")
    assert "JPEG quality (Pillow)" in page.text("robustness-1")
    assert "Seed 7." in page.text("robustness-0")


def test_top5_shows_only_where_the_document_has_it() -> None:
    top5 = {k: {s: min(1.0, a + 0.05) for s, a in v.items()} for k, v in ACCURACY.items()}
    doc = with_robustness(robustness_section(top5=top5))
    html = render(doc)
    assert '<th class="num">Top-5</th>' in section(html, "robustness")
    row = table_rows(section(html, "robustness"))[0]
    assert row[3] == "gaussian_noise 1 0.08 0.8500 0.9000 0.1500 +0.0500"
    assert "Top-5" not in section(render(with_robustness()), "robustness")


def test_without_results_the_section_says_why() -> None:
    # criteria but no robustness: the evaluation asked for no perturbation
    doc = metrics_doc()
    page = Page(render(doc))
    assert "No perturbations were requested" in page.text("robustness")
    assert "robustness-summary" not in page.ids()
    # an older document (neither section): not computed
    del doc["criteria"]
    assert "Not computed" in Page(render(doc)).text("robustness")
    # asked for, but the results lack them: not computed
    asked = complete_evaluation()
    asked.spec.criteria = Criteria(perturbations=[PerturbationSpec(kind="jpeg")])
    assert "Not computed" in Page(render(metrics_doc(), asked)).text("robustness")
    # a section without any kind
    assert "No perturbations" in Page(render(with_robustness({"perturbations": []}))).text(
        "robustness"
    )


def test_the_first_versions_documents_show_their_errors() -> None:
    """Before `bySeverity`, a kind's rows were lost under `severities` (the ints): its rows
    come from `errors` and `degradation`, accuracy being 1 - error."""
    robust = robustness_section()
    for entry in robust["perturbations"]:
        del entry["bySeverity"]
    view = robustness_view({"robustness": robust})
    assert view is not None
    noise = view.kinds[0]
    assert [r.severity for r in noise.rows] == [1, 2, 3, 4, 5]
    assert [r.parameter for r in noise.rows] == list(perturbations.KINDS["gaussian_noise"].table)
    assert [r.accuracy for r in noise.rows] == pytest.approx(
        list(ACCURACY["gaussian_noise", 7].values())
    )
    html = render(with_robustness(robust))
    rows = table_rows(section(html, "robustness"))
    assert rows[2][3] == "gaussian_noise 3 0.18 0.6600 0.3400 +0.2400"


def test_a_hostile_kind_stays_text() -> None:
    robust = robustness_section()
    robust["perturbations"][0]["kind"] = HOSTILE
    html = render(with_robustness(robust))
    assert "<script" not in html.lower()
    assert htmllib.escape(HOSTILE, quote=False) in html
    page = Page(html)
    assert HOSTILE in page.text("robustness-0", "h3")
    assert table_rows(section(html, "robustness"))[0][1] == HOSTILE


@pytest.mark.parametrize(
    "robust",
    [
        {},
        {"version": 1},
        {"perturbations": "odd", "clean": "odd", "meanError": "x"},
        {"perturbations": [{"kind": "jpeg"}]},
        {"perturbations": [{}, "x", None, {"bySeverity": "odd", "errors": [1]}]},
        {"perturbations": [{"kind": "rotate", "bySeverity": [{"severity": "x"}, "y", {}]}]},
        {"perturbations": [{"kind": "jpeg", "bySeverity": [{"severity": 9, "accuracy": 0.5}]}]},
        {"perturbations": [{"kind": "jpeg", "errors": {"2": 0.4, "x": 1, "3": "odd"}}]},
        {"clean": {"accuracy": 0.9},
         "perturbations": [{"kind": "contrast", "bySeverity": [{"severity": 2, "error": 0.3}]}]},
        {"clean": {"error": float("nan")},
         "perturbations": [{"kind": "jpeg", "bySeverity": [{"severity": 1, "accuracy": True}]}]},
    ],
)  # fmt: skip
def test_partial_documents_show_what_is_there(robust: dict[str, Any]) -> None:
    view = robustness_view({"robustness": robust})
    assert view is not None
    html = render(with_robustness(robust))
    page = Page(html)
    assert {"robustness", "gates", "slices"} <= page.ids()
    if view.kinds:
        assert len(table_rows(section(html, "robustness"))) >= len(view.kinds)


def test_a_partial_row_is_completed_from_what_is_known() -> None:
    view = robustness_view(
        {
            "robustness": {
                "clean": {"accuracy": 0.9},
                "perturbations": [
                    {"kind": "contrast", "bySeverity": [{"severity": 2, "error": 0.3}, {}]}
                ],
            }
        }
    )
    assert view is not None and view.clean_error == pytest.approx(0.1)
    (k,) = view.kinds
    first, empty = k.rows
    assert first.accuracy == pytest.approx(0.7) and first.delta == pytest.approx(0.2)
    assert first.parameter == perturbations.parameter("contrast", 2)
    assert empty.severity is None and empty.accuracy is None and empty.delta_text == ""
    assert k.mean_error is None and k.relative_text == ""
    assert k.chart is not None and [p.severity for p in k.chart.points] == [2]
