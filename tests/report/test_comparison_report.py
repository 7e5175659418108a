"""The comparison report: a self-contained page from a comparison document, written by
`dyff compare A B -o cmp.html`, rendered by headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from dyff.report.comparison import forest, render_comparison
from tests.report.test_report import CHROMIUM, CHROMIUM_MISSING, HOSTILE, chromium
from tests.shim.evaluations_with_results import complete
from tests.unit.test_cli import Served, run_cli, served  # noqa: F401 - the fixture


def comparison_doc(labels: list[str]) -> dict[str, Any]:
    def metric(name: str, a: float, b: float, lo: float, hi: float) -> dict[str, Any]:
        return {"metric": name, "a": a, "b": b, "difference": b - a, "aInterval": [a - 0.01,
                a + 0.01], "bInterval": [b - 0.01, b + 0.01], "interval": [lo, hi]}  # fmt: skip

    return {
        "a": {"name": "old", "account": "acme", "modelDigest": "a" * 64},
        "b": {"name": "new", "account": "acme", "modelDigest": "b" * 64},
        "rows": 1000,
        "commonShards": 2,
        "resamples": 1000,
        "seed": 0,
        "level": 0.95,
        "labels": labels,
        "mcnemar": {
            "table": [[800, 20], [60, 120]],
            "bothRight": 800,
            "broken": 20,
            "fixed": 60,
            "bothWrong": 120,
            "pValue": 1.2e-5,
        },
        "metrics": [
            metric("accuracy", 0.82, 0.86, 0.02, 0.06),
            metric("macro_f1", 0.80, 0.79, -0.03, 0.01),
            metric("ece", 0.05, 0.03, -0.035, -0.005),
        ],
        "perClass": [
            {
                "label": name,
                "support": 100,
                "a": 0.8,
                "b": 0.85,
                "difference": 0.05,
                "interval": [-0.02, 0.12],
            }
            for name in labels
        ],
    }


def flipped(labels: list[str]) -> dict[str, Any]:
    row = {"row_id": 7, "label": len(labels) - 1, "predicted_a": 0, "score_a": 0.9,
           "predicted_b": len(labels) - 1, "score_b": 0.8}  # fmt: skip
    return {"fixed": {"total": 60, "rows": [row]}, "broken": {"total": 20, "rows": []}}


def test_the_page_has_its_sections_escapes_labels_and_has_no_script() -> None:
    labels = [f"digit {i}" for i in range(9)] + [HOSTILE]
    html = render_comparison(comparison_doc(labels), flipped(labels))
    for section in ("summary", "differences", "mcnemar", "per-class-differences", "flips"):
        assert f'id="{section}"' in html
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "http://" not in html and "https://" not in html  # nothing external
    # the chart: one row per metric, coloured by whether the interval excludes 0
    assert html.count('class="up"') >= 1 and html.count('class="flat"') >= 1
    # ECE fell: B is better there, in green like accuracy's rise
    ece_row = html.split('data-name="ECE (lower is better)"')[0].rsplit("<g ", 1)[1]
    assert 'class="up"' in ece_row
    assert "60 fixed" in html and "20 broken" in html
    assert "The first 1 of 60 rows." in html


def test_forest_places_zero_and_intervals_in_order() -> None:
    f = forest([("a", 0.02, [0.01, 0.03]), ("b", -0.05, [-0.08, -0.02]), ("c", None, [None, None])])
    assert f.x0 < f.zero < f.x1
    up, down, none = f.rows
    assert up.tone == "up" and down.tone == "down" and none.x is None
    assert forest([("b", -0.05, [-0.08, -0.02])], lower_better=["b"]).rows[0].tone == "up"
    assert up.lo is not None and up.hi is not None and up.lo < up.x < up.hi  # type: ignore[operator]
    assert down.hi is not None and down.hi < f.zero


def test_dyff_compare_writes_the_report(
    served: Served,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    auth = {"Authorization": f"Bearer {served.token}"}
    source = {"form": "parquet", "upload": {"sha256": "a" * 64, "sizeBytes": 1}}
    with httpx.Client(base_url=served.url, headers=auth) as c:
        assert c.post("/v1/models", json={"name": "m", "spec": {"source": {
            **source, "form": "transformers"}}}).status_code == 201  # fmt: skip
        assert c.post("/v1/datasets", json={"name": "d", "spec": {"source": source}}).is_success
        for name in ("old", "new"):
            body = {"name": name, "spec": {"model": {"name": "m"}, "dataset": {"name": "d"}}}
            assert c.post("/v1/evaluations", json=body).status_code == 201
    complete(served, served.account, "old", [i % 3 != 0 for i in range(300)])  # type: ignore[arg-type]
    complete(served, served.account, "new", [i % 7 != 0 for i in range(300)])  # type: ignore[arg-type]
    out_file = tmp_path / "cmp.html"
    code, out, err = run_cli(
        served, monkeypatch, capsys, "compare", "old", "new", "-o", str(out_file)
    )
    assert code == 0, err
    assert "300 common rows" in out and "McNemar" in out and "accuracy" in out
    html = out_file.read_text()
    assert 'id="mcnemar"' in html and "<script" not in html
    fixed = int(re.search(r"(\d+) fixed</td>", html).group(1))  # type: ignore[union-attr]
    assert fixed == sum(1 for i in range(300) if i % 3 == 0 and i % 7 != 0)
    code, out, _ = run_cli(served, monkeypatch, capsys, "--json", "compare", "old", "new")
    assert code == 0 and '"mcnemar"' in out
    code, out, _ = run_cli(served, monkeypatch, capsys, "leaderboard", "d")
    assert code == 0 and out.index("new") < out.index("old")
    code, _, err = run_cli(served, monkeypatch, capsys, "compare", "old", "nope")
    assert code == 1 and "404" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=CHROMIUM_MISSING)
def test_the_comparison_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    labels = [f"class {i}" for i in range(12)]
    page = tmp_path / "cmp.html"
    page.write_text(render_comparison(comparison_doc(labels), flipped(labels)))
    dom = chromium(["--dump-dom", page.as_uri()], tmp_path / "profile-dom")
    assert 'id="differences"' in dom and dom.count("<circle") == 3 + len(labels)
    shot = tmp_path / "cmp.png"
    chromium(
        ["--screenshot=" + str(shot), "--window-size=1280,2000", page.as_uri()],
        tmp_path / "profile-shot",
    )
    assert shot.exists() and shot.stat().st_size > 10_000
