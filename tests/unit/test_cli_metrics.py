"""`dyff metrics NAME` with evaluation criteria (issue 12): every headline metric with its
interval, the slices (flagged first, with their adjusted p-values) and the gates; `--json`
prints the document unchanged; a document without criteria prints as before."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.report.test_criteria_report import ACCURACY, HOSTILE, metrics_doc


class FakeClient:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.asked: list[str] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def metrics(self, name: str) -> dict[str, Any]:
        self.asked.append(name)
        return self.doc


def run_metrics(
    doc: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *options: str,
) -> str:
    """`dyff [OPTIONS] metrics e` against a server answering `doc`: its stdout."""
    from dyff import cli

    fake = FakeClient(doc)
    monkeypatch.setattr(cli, "client", lambda: fake)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "argv", ["dyff", *options, "metrics", "e"])
    capsys.readouterr()
    try:
        cli.main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr()
    out = capsys.readouterr().out
    assert fake.asked == ["e"]
    return out


def words(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def line_starting(lines: list[list[str]], *words: str) -> list[str]:
    found = [line for line in lines if line[: len(words)] == list(words)]
    assert len(found) == 1, (words, lines)
    return found[0]


def test_metrics_show_intervals_slices_and_gates(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = metrics_doc()
    section = doc["criteria"]
    iv = section["intervals"]["metrics"]
    out = run_metrics(doc, monkeypatch, capsys)
    lines = words(out)

    # headline metrics: "accuracy 0.9123 [0.8990, 0.9251]"
    assert line_starting(lines, "METRIC") == ["METRIC", "VALUE", "95%", "INTERVAL"]

    def bounds(key: str) -> list[str]:
        return [f"[{iv[key]['low']:.4f},", f"{iv[key]['high']:.4f}]"]

    acc = f"{doc['accuracy']:.4f}"
    assert line_starting(lines, "accuracy", acc) == ["accuracy", acc, *bounds("accuracy")]
    assert line_starting(lines, "top5Accuracy")[2:] == bounds("top5Accuracy")
    assert line_starting(lines, "ece", f"{doc['ece']:.4f}")[2:] == bounds("ece")
    macro = {"precision": "macroPrecision", "recall": "macroRecall", "f1": "macroF1"}
    for key, name in macro.items():
        value = f"{doc['macro'][key]:.4f}"
        assert line_starting(lines, "macro", key) == ["macro", key, value, *bounds(name)]
    assert line_starting(lines, "rows") == ["rows", str(doc["rows"])]

    # slices: flagged first, most severe first, with q
    assert line_starting(lines, "slices", "by", "lighting:") == [
        "slices", "by", "lighting:", "2", "of", "5", "flagged,", "q=0.05,", "min", "support", "30",
    ]  # fmt: skip
    start = lines.index(line_starting(lines, "LIGHTING"))
    table = lines[start + 1 : start + 1 + len(ACCURACY)]
    values = {v["key"]["lighting"]: v for v in section["slices"][0]["values"]}
    assert [row[0] for row in table[:2]] == ["night", "dusk"]
    hostile = HOSTILE.split()
    for row in table:
        light = " ".join(row[: len(hostile)]) if row[0] == hostile[0] else row[0]
        rest = row[len(hostile) :] if row[0] == hostile[0] else row[1:]
        v = values[light]
        acc = v["metrics"]["accuracy"]
        assert rest[:5] == [
            str(v["support"]),
            f"{acc['value']:.4f}",
            f"[{acc['low']:.4f},",
            f"{acc['high']:.4f}]",
            f"{v['restAccuracy']:.4f}",
        ]
        if v["flagged"]:
            assert rest[5:] == ["FLAGGED", f"q={v['qValue']:.3g}"]
        else:
            assert rest[5:] == []
    # the hostile value is printed as it is (text, not rich markup)
    assert HOSTILE in out

    # gates: the verdict, then each gate with PASS/FAIL, observed and required
    verdict = line_starting(lines, "gates:")
    assert verdict[1] == "FAILED:" and " ".join(verdict[2:]) == section["gates"]["message"]
    gates = {g["name"]: g for g in section["gates"]["results"]}
    night = line_starting(lines, "night-ok")
    observed, rows = f"{gates['night-ok']['observed']:.4f}", str(gates["night-ok"]["rows"])
    assert night == ["night-ok", "FAIL", observed, "accuracy", ">=", "0.8", "on",
                     "lighting=night", rows]  # fmt: skip
    low = gates["accuracy (lower bound) >= 0.9"]
    assert line_starting(lines, "accuracy", "(lower", "bound)") == [
        "accuracy", "(lower", "bound)", ">=", "0.9", "FAIL", f"{low['observed']:.4f}",
        "(lower", "bound)", "accuracy", ">=", "0.9", str(low["rows"]),
    ]  # fmt: skip
    assert line_starting(lines, "accuracy", ">=", "0.7")[3] == "PASS"


def test_json_prints_the_document_unchanged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = metrics_doc()
    out = run_metrics(doc, monkeypatch, capsys, "--json")
    assert json.loads(out) == doc


def test_a_document_without_criteria_prints_as_before(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = metrics_doc()
    del doc["criteria"]
    out = run_metrics(doc, monkeypatch, capsys)
    lines = words(out)
    assert line_starting(lines, "METRIC") == ["METRIC", "VALUE"]
    assert line_starting(lines, "accuracy") == ["accuracy", f"{doc['accuracy']:.4f}"]
    assert not any(line[:1] in (["slices"], ["gates:"]) for line in lines)
    assert "INTERVAL" not in out and "[" not in out


def test_a_partial_criteria_section_prints_what_is_there(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = metrics_doc()
    doc["criteria"] = {
        "intervals": {"level": 0.9, "metrics": {"accuracy": {"value": 0.8}}},
        "slices": [{"by": ["site"]}],
        "gates": {"passed": True, "results": []},
    }
    out = run_metrics(doc, monkeypatch, capsys)
    lines = words(out)
    assert line_starting(lines, "METRIC") == ["METRIC", "VALUE", "90%", "INTERVAL"]
    assert line_starting(lines, "accuracy") == ["accuracy", f"{doc['accuracy']:.4f}"]
    assert line_starting(lines, "slices", "by", "site:")[3:] == ["0", "of", "0", "flagged"]
    assert not any(line[:1] == ["gates:"] for line in lines)  # no gates were set


# ------------------------------------------------------------------ robustness


def test_metrics_show_robustness_after_the_gates(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.report.test_robustness_report import with_robustness

    doc = with_robustness()
    robust = doc["robustness"]
    out = run_metrics(doc, monkeypatch, capsys)
    lines = words(out)
    head = line_starting(lines, "robustness:")
    assert head == ["robustness:", "clean", "accuracy", "0.9000,", "error", "0.1000"]
    assert lines.index(head) > lines.index(line_starting(lines, "gates:"))
    titles = line_starting(lines, "KIND")
    assert titles == ["KIND", "SEVERITY", "PARAMETER", "ACCURACY", "ERROR", "Δ", "vs", "CLEAN"]
    start = lines.index(titles)
    rows = [r for e in robust["perturbations"] for r in e["bySeverity"]]
    table = lines[start + 1 : start + 1 + len(rows)]
    expected = [
        [
            e["kind"],
            str(r["severity"]),
            f"{r['parameter']:g}",
            f"{r['accuracy']:.4f}",
            f"{r['error']:.4f}",
            f"{e['degradation'][str(r['severity'])]:+.4f}",
        ]
        for e in robust["perturbations"]
        for r in e["bySeverity"]
    ]
    assert table == expected
    assert table[2] == ["gaussian_noise", "3", "0.18", "0.6600", "0.3400", "+0.2400"]
    assert table[-1][-1] == "-0.0125"  # brightness helped
    # a line per kind, then the means over the kinds
    after = lines[start + 1 + len(rows) :]
    kinds = robust["perturbations"]
    assert after[: len(kinds)] == [
        [f"{e['kind']}:", "mean", "error", f"{e['meanError']:.4f},", "relative", "error",
         f"{e['relativeError']:+.4f}", "over", *over, "seed", str(e["seed"])]
        for e, over in zip(
            kinds, (["severities", "1-5,"], ["severities", "1,", "3,", "5,"], ["severity", "2,"]),
            strict=True,
        )
    ]  # fmt: skip
    assert after[len(kinds)] == [
        "mean", "over", "3", "kinds:", "mean", "error", f"{robust['meanError']:.4f},",
        "relative", "error", f"{robust['relativeError']:+.4f}",
    ]  # fmt: skip


def test_robustness_json_and_absent_and_partial(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.report.test_robustness_report import with_robustness

    doc = with_robustness()
    assert json.loads(run_metrics(doc, monkeypatch, capsys, "--json")) == doc
    # no section (no perturbations, or an older document): nothing printed
    plain = metrics_doc()
    out = run_metrics(plain, monkeypatch, capsys)
    assert "robustness" not in out and "KIND" not in out
    # a section without kinds: nothing either
    plain["robustness"] = {"perturbations": []}
    assert "robustness" not in run_metrics(plain, monkeypatch, capsys)
    # partial: what is there, unknown numbers blank or "?"
    doc = metrics_doc()
    doc["robustness"] = {
        "perturbations": [
            {"kind": "jpeg", "bySeverity": [{"severity": 3, "accuracy": 0.7}, "x", {}]},
            "odd",
        ]
    }
    lines = words(run_metrics(doc, monkeypatch, capsys))
    assert line_starting(lines, "robustness:") == [
        "robustness:", "clean", "accuracy", "?,", "error", "?",
    ]  # fmt: skip
    assert line_starting(lines, "jpeg", "3") == ["jpeg", "3", "15", "0.7000", "0.3000"]
    assert line_starting(lines, "jpeg:") == [
        "jpeg:", "mean", "error", "?,", "relative", "error", "?", "over", "severity", "3",
    ]  # fmt: skip
    assert not any(line[:2] == ["mean", "over"] for line in lines)
