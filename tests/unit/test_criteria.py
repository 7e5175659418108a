"""Criteria that need no inference (issue 12): intervals, slices, gates, from predictions
and attributes alone; and the statistics they use (`dyff.stats` additions)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from dyff import criteria, metrics, stats
from dyff.errors import WorkloadFailed
from dyff.schema import Criteria, EvaluationSpec, Gate, IntervalSpec, SliceSpec

FAST = IntervalSpec(resamples=200, seed=0)


def synthetic(
    rng: np.random.Generator,
    accuracy: dict[str, float],
    rows: int,
    k: int = 10,
    column: str = "group",
) -> pl.DataFrame:
    """Predictions whose accuracy depends on the group: `rows` per group, labels uniform,
    a wrong prediction is another class (sometimes one outside the labels), scores that
    are higher when right, top-5 hit when right or by chance."""
    groups, labels, predicted, scores, top5 = [], [], [], [], []
    for name, acc in accuracy.items():
        label = rng.integers(0, k, rows)
        right = rng.random(rows) < acc
        wrong = (label + rng.integers(1, k, rows)) % k
        wrong = np.where(rng.random(rows) < 0.05, k + 3, wrong)  # a model label outside
        predicted.append(np.where(right, label, wrong))
        labels.append(label)
        scores.append(np.where(right, rng.uniform(0.5, 1.0, rows), rng.uniform(0.1, 0.8, rows)))
        top5.append(right | (rng.random(rows) < 0.5))
        groups += [name] * rows
    return pl.DataFrame(
        {
            "label": np.concatenate(labels).astype(np.int32),
            "predicted": np.concatenate(predicted).astype(np.int32),
            "score": np.concatenate(scores).astype(np.float32),
            "top5": np.concatenate(top5),
            column: groups,
        }
    )


def whole_cells(frame: pl.DataFrame, k: int = 10) -> criteria.Cells:
    return criteria.cells_of(criteria.group_cells(frame, [], k, True)[1], k)


# ------------------------------------------------------------------ metrics


def test_point_metrics_equal_the_standard_metrics() -> None:
    frame = synthetic(np.random.default_rng(1), {"a": 0.7, "b": 0.4}, 3000)
    got = criteria.point_metrics(whole_cells(frame), 10, True)
    labels = frame["label"].to_numpy()
    predicted = frame["predicted"].to_numpy()
    score = frame["score"].to_numpy()
    wanted = ["accuracy", "precision", "recall", "f1", "ece"]
    doc = metrics.compute(labels, predicted, score, None, [str(i) for i in range(10)], wanted)
    assert got["accuracy"] == pytest.approx(doc["accuracy"], abs=1e-12)
    assert got["macroPrecision"] == pytest.approx(doc["macro"]["precision"], abs=1e-12)
    assert got["macroRecall"] == pytest.approx(doc["macro"]["recall"], abs=1e-12)
    assert got["macroF1"] == pytest.approx(doc["macro"]["f1"], abs=1e-12)
    assert got["ece"] == pytest.approx(doc["ece"], abs=1e-9)
    assert got["top5Accuracy"] == pytest.approx(frame["top5"].mean(), abs=1e-12)


def test_intervals_are_reproducible_and_hold_the_value() -> None:
    frame = synthetic(np.random.default_rng(2), {"a": 0.8}, 2000)
    cells = whole_cells(frame)
    a = criteria.metric_entries(cells, 10, True, FAST)
    b = criteria.metric_entries(cells, 10, True, FAST)
    c = criteria.metric_entries(cells, 10, True, IntervalSpec(resamples=200, seed=1))
    assert a == b
    assert a != c
    for name in criteria.HEADLINE:
        entry = a[name]
        assert entry["low"] is not None and entry["high"] is not None, name
        assert entry["low"] < entry["high"], name
        # the point estimate lies inside its interval (ECE is biased upward in resamples,
        # so allow it a little room below)
        slack = 0.01 if name == "ece" else 0.0
        assert entry["low"] - slack <= entry["value"] <= entry["high"], (name, entry)
    # 2000 rows at p = 0.8: the interval is about ±1.96 * sqrt(.8 * .2 / 2000) = ±0.0175
    width = a["accuracy"]["high"] - a["accuracy"]["low"]  # type: ignore[operator]
    assert 0.028 < width < 0.042


def test_accuracy_intervals_cover_the_true_accuracy_about_95_percent() -> None:
    rng = np.random.default_rng(3)
    truth, rows, trials = 0.8, 400, 200
    covered = 0
    for t in range(trials):
        right = rng.random(rows) < truth
        cells = criteria.Cells(
            label=np.array([0, 0]),
            pred=np.array([0, 1]),
            bin=np.array([14, 14]),
            top5=np.array([True, True]),
            n=np.array([right.sum(), rows - right.sum()]),
            s1=np.array([0.0, 0.0]),
            s2=np.array([0.0, 0.0]),
        )
        low, high = criteria.interval_metrics(cells, 2, False, IntervalSpec(resamples=400, seed=t))[
            "accuracy"
        ]
        assert low is not None and high is not None
        covered += low <= truth <= high
    assert 0.90 <= covered / trials <= 0.99, covered


# ------------------------------------------------------------------ slices


def test_the_harder_slice_is_flagged_and_no_other() -> None:
    acc = {"day": 0.9, "dusk": 0.88, "indoor": 0.9, "night": 0.7, "tiny": 0.2}
    frame = synthetic(np.random.default_rng(4), acc, 300)
    # "tiny" has too few rows to be tested, however bad it is
    tiny = pl.col("group") == "tiny"
    frame = pl.concat([frame.filter(~tiny), frame.filter(tiny).head(20)])
    doc = criteria.slice_results(frame, SliceSpec(by=["group"]), 10, True, FAST, 0)
    by_key = {v["key"]["group"]: v for v in doc["values"]}
    assert [f["key"] for f in doc["flagged"]] == [{"group": "night"}]
    assert by_key["night"]["flagged"] and by_key["night"]["qValue"] <= 0.05
    assert not by_key["tiny"]["tested"] and not by_key["tiny"]["flagged"]
    assert by_key["tiny"]["support"] == 20
    assert sum(v["support"] for v in doc["values"]) == frame.height
    for v in doc["values"]:
        assert set(v["metrics"]) == set(criteria.HEADLINE)
        assert v["metrics"]["accuracy"]["low"] <= v["metrics"]["accuracy"]["value"]


def test_flagged_slices_come_most_severe_first() -> None:
    acc = {"a": 0.9, "b": 0.9, "c": 0.9, "d": 0.9, "bad": 0.6, "worse": 0.4}
    frame = synthetic(np.random.default_rng(5), acc, 200)
    doc = criteria.slice_results(frame, SliceSpec(by=["group"]), 10, True, FAST, 0)
    assert [f["key"]["group"] for f in doc["flagged"]] == ["worse", "bad"]
    assert doc["flagged"][0]["gap"] > doc["flagged"][1]["gap"] > 0


def test_no_slice_is_flagged_without_a_real_difference_over_seeds() -> None:
    """Every slice has the same true accuracy: over many seeds, the share of runs that flag
    anything stays near q (Benjamini-Hochberg under the full null controls it at q)."""
    flagged_runs = 0
    seeds = 40
    groups = {f"g{i}": 0.85 for i in range(8)}
    for seed in range(seeds):
        frame = synthetic(np.random.default_rng(100 + seed), groups, 150)
        doc = criteria.slice_results(
            frame, SliceSpec(by=["group"]), 10, False, IntervalSpec(resamples=100), 0
        )
        flagged_runs += bool(doc["flagged"])
    # Binomial(40, <= 0.05): mean <= 2; 6 or more has probability below 2 %.
    assert flagged_runs <= 5, flagged_runs


def test_crossed_slices_and_null_values() -> None:
    frame = synthetic(np.random.default_rng(6), {"x": 0.8, "y": 0.8}, 100)
    i = pl.int_range(pl.len())
    frame = frame.with_columns(site=pl.when(i % 4 == 0).then(None).otherwise(i % 2))
    doc = criteria.slice_results(frame, SliceSpec(by=["group", "site"]), 10, True, FAST, 0)
    keys = [(v["key"]["group"], v["key"]["site"]) for v in doc["values"]]
    assert keys == [("x", 0), ("x", 1), ("x", None), ("y", 0), ("y", 1), ("y", None)]
    assert sum(v["support"] for v in doc["values"]) == 200


def test_too_many_slice_values_are_refused() -> None:
    frame = synthetic(np.random.default_rng(7), {"a": 0.5}, criteria.MAX_SLICE_VALUES + 1)
    frame = frame.with_columns(file=pl.int_range(pl.len()).cast(pl.String))
    with pytest.raises(WorkloadFailed) as info:
        criteria.slice_results(frame, SliceSpec(by=["file"]), 10, True, FAST, 0)
    assert info.value.reason == criteria.BAD_CRITERIA and "coarser" in info.value.message


# ------------------------------------------------------------------ gates


def test_gates_pass_and_fail_naming_the_failing_ones() -> None:
    frame = synthetic(np.random.default_rng(8), {"day": 0.9, "night": 0.6}, 500)
    spec = Criteria(
        intervals=FAST,
        gates=[
            Gate(metric="accuracy", op=">=", value=0.7),
            # the point value (0.787) passes, its interval's lower bound does not
            Gate(metric="accuracy", op=">=", value=0.78),
            Gate(metric="accuracy", op=">=", value=0.78, using="lower_bound"),
            Gate(metric="accuracy", op=">=", value=0.8, slice={"group": "night"}),
            Gate(name="calibrated", metric="ece", op="<=", value=0.5, using="upper_bound"),
            Gate(metric="accuracy", op=">", value=0.1, slice={"group": "noon"}),
        ],
    )
    doc = criteria.compute(frame, [str(i) for i in range(10)], spec, top5=True)
    gates = doc["gates"]
    verdicts = [g["passed"] for g in gates["results"]]
    assert verdicts == [True, True, False, False, True, False]
    assert gates["passed"] is False
    assert gates["failed"] == [
        "accuracy (lower bound) >= 0.78",
        "accuracy >= 0.8 on group=night",
        "accuracy > 0.1 on group=noon",
    ]
    assert gates["message"].startswith(
        "3 of 6 gates failed: accuracy (lower bound) >= 0.78: failed (accuracy lower bound is"
    )
    assert "no rows have these attribute values" in gates["results"][5]["message"]
    night = gates["results"][3]
    assert night["rows"] == 500 and night["observed"] == pytest.approx(0.6, abs=0.06)
    # every gate passes: the condition's message says so
    ok = Criteria(intervals=FAST, gates=[Gate(metric="accuracy", op=">=", value=0.5)])
    doc = criteria.compute(frame, [str(i) for i in range(10)], ok, top5=True)
    assert doc["gates"] == {
        "passed": True,
        "failed": [],
        "message": "all 1 gates passed",
        "results": doc["gates"]["results"],
    }


def test_a_gate_on_a_metric_the_predictions_cannot_answer_fails() -> None:
    frame = synthetic(np.random.default_rng(9), {"a": 0.9}, 100)
    spec = Criteria(intervals=FAST, gates=[Gate(metric="top5_accuracy", op=">=", value=0.5)])
    doc = criteria.compute(frame, [str(i) for i in range(10)], spec, top5=False)
    (result,) = doc["gates"]["results"]
    assert not result["passed"] and "not available" in result["message"]


def test_gate_slice_values_are_compared_as_text() -> None:
    frame = synthetic(np.random.default_rng(10), {"a": 0.9}, 200).with_columns(
        site=pl.int_range(pl.len()) % 2, outdoor=pl.int_range(pl.len()) % 2 == 0
    )
    spec = EvaluationSpec.model_validate(
        {
            "model": {"name": "m"},
            "dataset": {"name": "d"},
            "criteria": {
                "intervals": {"resamples": 100},
                "gates": [
                    {"metric": "accuracy", "op": ">=", "value": 0.5, "slice": {"site": 1}},
                    {"metric": "accuracy", "op": ">=", "value": 0.5, "slice": {"outdoor": "true"}},
                ],
            },
        }
    ).criteria
    doc = criteria.compute(frame, [str(i) for i in range(10)], spec, top5=True)
    assert [g["rows"] for g in doc["gates"]["results"]] == [100, 100]


# ------------------------------------------------------------------ document


def test_the_document_is_versioned_and_json() -> None:
    import json

    frame = synthetic(np.random.default_rng(11), {"a": 0.9, "b": 0.5}, 100)
    spec = Criteria(intervals=FAST, slices=[SliceSpec(by=["group"])])
    doc = criteria.compute(frame, [str(i) for i in range(10)], spec, top5=True)
    assert doc["version"] == criteria.CRITERIA_VERSION == 1
    assert set(doc) == {"version", "rows", "intervals", "slices", "gates"}
    assert doc["intervals"]["resamples"] == 200 and doc["rows"] == 200
    assert set(doc["intervals"]["metrics"]) == set(criteria.HEADLINE)
    json.dumps(doc, allow_nan=False)
    assert doc == criteria.compute(frame, [str(i) for i in range(10)], spec, top5=True)


def test_check_criteria_names_unknown_columns() -> None:
    spec = Criteria(
        slices=[SliceSpec(by=["lighting", "aspect"])],
        gates=[Gate(metric="accuracy", op=">=", value=0.5, slice={"site": "1"})],
    )
    assert criteria.check_criteria(spec, ["aspect", "lighting", "site"]) is None
    why = criteria.check_criteria(spec, ["aspect"])
    assert why is not None and "lighting, site" in why and "its attributes: aspect" in why
    assert criteria.check_criteria(None, None) is None


# ------------------------------------------------------------------ stats


def test_proportion_below_is_the_pooled_two_proportion_z_test_with_correction() -> None:
    from scipy.stats import norm

    right, rows = np.array([60, 90, 0]), np.array([100, 100, 50])
    got = stats.proportion_below(right, rows, 600, 800)
    for i in range(2):
        x2, n2 = 600 - right[i], 800 - rows[i]
        p = 600 / 800
        inverse = 1 / rows[i] + 1 / n2
        z = (right[i] / rows[i] - x2 / n2 + 0.5 * inverse) / np.sqrt(p * (1 - p) * inverse)
        assert got[i] == pytest.approx(norm.cdf(z), rel=1e-9)
    assert got[2] < 1e-20  # far in the tail, still positive and exact
    assert stats.proportion_below(np.array([5]), np.array([5]), 10, 10)[0] == 1.0  # no rest
    assert stats.proportion_below(np.array([5]), np.array([5]), 20, 20)[0] == 1.0  # all right


def test_benjamini_hochberg_matches_scipy() -> None:
    from scipy.stats import false_discovery_control

    p = np.random.default_rng(12).random(50) ** 3
    assert np.allclose(stats.benjamini_hochberg(p), false_discovery_control(p, method="bh"))
    assert len(stats.benjamini_hochberg(np.array([]))) == 0


def test_group_sums() -> None:
    sums = stats.GroupSums(np.array([2, 0, 2, 1]), 4, np.array([True, True, True, False]))
    values = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    assert sums(values).tolist() == [[2.0, 0.0, 4.0, 0.0], [20.0, 0.0, 40.0, 0.0]]


def test_dense_and_hashed_counting_give_the_same_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = synthetic(np.random.default_rng(13), {"a": 0.7, "b": 0.5, "c": 0.9}, 400)
    frame = frame.with_columns(site=pl.int_range(pl.len()) % 3)
    for by in ([], ["group"], ["group", "site"]):
        keys, dense = criteria.group_cells(frame, by, 10, True)
        monkeypatch.setattr(criteria, "DENSE_CELLS", 0)
        keys2, hashed = criteria.group_cells(frame, by, 10, True)
        monkeypatch.undo()
        assert keys.equals(keys2)
        assert dense.select(pl.all().cast(pl.Int64)).equals(hashed.select(pl.all().cast(pl.Int64)))
        assert int(dense["n"].sum()) == frame.height
