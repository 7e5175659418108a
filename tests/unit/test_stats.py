"""dyff.stats held to scipy and to the plain bootstrap of row indices; dyff.compare's
statistics on constructed rows."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from dyff import compare, metrics, stats


@pytest.mark.parametrize(
    ("k1", "k2"),
    [(0, 0), (0, 1), (1, 0), (3, 3), (30, 12), (12, 30), (0, 25), (5, 6), (400, 520),
     (1, 1000), (49_000, 51_000), (123_456, 124_000)],
)  # fmt: skip
def test_the_exact_binomial_p_value_matches_scipy(k1: int, k2: int) -> None:
    expected = 1.0 if k1 + k2 == 0 else binomtest(k1, k1 + k2, 0.5).pvalue
    assert stats.binomial_two_sided(k1, k2) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_counts_the_table_and_tests_the_discordant_pairs() -> None:
    a = np.array([True] * 50 + [True] * 7 + [False] * 20 + [False] * 23)
    b = np.array([True] * 50 + [False] * 7 + [True] * 20 + [False] * 23)
    test = stats.mcnemar(a, b)
    assert test.table == [[50, 7], [20, 23]]
    assert (test.fixed, test.broken) == (20, 7)
    assert test.p_value == pytest.approx(binomtest(20, 27, 0.5).pvalue, rel=1e-12)
    with pytest.raises(ValueError):
        stats.mcnemar(a, b[:-1])


def test_grouped_counts_give_the_distribution_of_resampled_row_indices() -> None:
    """The interval of accuracy from four groups equals (in distribution) the one from
    resampling the row indices themselves."""
    rng = np.random.default_rng(3)
    right = rng.random(2000) < 0.7
    sizes = np.array([(~right).sum(), right.sum()])
    grouped = stats.bootstrap(lambda c, _: c[:, 1] / c.sum(axis=1), sizes, resamples=4000, seed=1)[
        0
    ]
    rows = stats.bootstrap(
        lambda c, _: (c * right).sum(axis=1) / c.sum(axis=1),
        np.ones(len(right), dtype=np.int64),
        resamples=4000,
        seed=2,
    )[0]
    assert grouped.low == pytest.approx(rows.low, abs=0.004)
    assert grouped.high == pytest.approx(rows.high, abs=0.004)
    se = np.sqrt(right.mean() * (1 - right.mean()) / len(right))
    assert grouped.high - grouped.low == pytest.approx(2 * 1.96 * se, rel=0.08)


def test_the_bootstrap_is_reproducible_with_a_seed_and_blocks_bound_memory() -> None:
    sizes = np.array([10, 30, 60])

    def share(c: np.ndarray, _: np.random.Generator) -> np.ndarray:
        return np.stack([c[:, 0] / 100, c[:, 2] / 100], axis=1)

    first = stats.bootstrap(share, sizes, resamples=500, seed=11)
    assert stats.bootstrap(share, sizes, resamples=500, seed=11) == first
    assert stats.bootstrap(share, sizes, resamples=500, seed=12) != first
    blocked = stats.bootstrap(share, sizes, resamples=500, seed=11, block_cells=30)
    assert len(blocked) == 2 and all(iv.resamples == 500 for iv in blocked)
    with pytest.raises(ValueError):
        stats.bootstrap(share, sizes, resamples=0)
    undefined = stats.bootstrap(lambda c, _: np.full(len(c), np.nan), sizes, resamples=10)
    assert undefined[0].low is None and undefined[0].high is None


def paired(n: int, k: int, seed: int = 0) -> compare.Paired:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, k, n)

    def predict(acc: float) -> np.ndarray:
        p = label.copy()
        wrong = rng.random(n) > acc
        p[wrong] = (label[wrong] + rng.integers(1, k, wrong.sum())) % k
        return p

    return compare.Paired(
        shards=["s"],
        shard=np.zeros(n, np.int32),
        row_id=np.arange(n),
        label=label,
        pred_a=predict(0.8),
        pred_b=predict(0.85),
        score_a=rng.uniform(0.2, 1, n),
        score_b=rng.uniform(0.2, 1, n),
        top5_a=rng.random(n) < 0.95,
        top5_b=rng.random(n) < 0.97,
    )


def test_compute_agrees_with_the_metrics_module_and_intervals_cover_the_values() -> None:
    p = paired(5000, 7)
    labels = [f"l{i}" for i in range(7)]
    doc = compare.compute(p, labels, resamples=300, seed=5)
    by = {m["metric"]: m for m in doc["metrics"]}
    ref_a = metrics.compute(p.label, p.pred_a, p.score_a, None, labels, ["accuracy", "f1",
                            "precision", "recall", "ece"])  # fmt: skip
    assert by["accuracy"]["a"] == pytest.approx(ref_a["accuracy"])
    assert by["macro_f1"]["a"] == pytest.approx(ref_a["macro"]["f1"])
    assert by["macro_precision"]["a"] == pytest.approx(ref_a["macro"]["precision"])
    assert by["ece"]["a"] == pytest.approx(ref_a["ece"])
    for m in doc["metrics"]:
        for value, key in ((m["a"], "aInterval"), (m["b"], "bInterval"),
                           (m["difference"], "interval")):  # fmt: skip
            low, high = m[key]
            assert low <= value <= high, (m["metric"], key)
    recall_a = [r["recall"] for r in ref_a["perClass"]]
    assert [c["a"] for c in doc["perClass"]] == pytest.approx(recall_a)
    assert compare.compute(p, labels, resamples=300, seed=5) == doc


def test_a_prediction_outside_the_labels_is_wrong_and_adds_no_class() -> None:
    p = paired(1000, 4, seed=2)
    p.pred_b[:100] = 9  # a model label the dataset lacks
    labels = ["a", "b", "c", "d"]
    doc = compare.compute(p, labels, resamples=50)
    ref = metrics.compute(p.label, p.pred_b, p.score_b, None, labels, ["accuracy", "f1"])
    by = {m["metric"]: m for m in doc["metrics"]}
    assert by["accuracy"]["b"] == pytest.approx(ref["accuracy"])
    assert by["macro_f1"]["b"] == pytest.approx(ref["macro"]["f1"])


def test_a_million_rows_with_a_thousand_resamples_take_seconds() -> None:
    p = paired(1_000_000, 10)
    t = time.perf_counter()
    doc = compare.compute(p, [str(i) for i in range(10)], resamples=1000)
    assert time.perf_counter() - t < 10  # ~1 s on 2 cores; generous for loaded machines
    assert doc["rows"] == 1_000_000


def test_rows_in_another_order_or_missing_are_joined_on_shard_and_row_id(tmp_path: Path) -> None:
    import polars as pl

    from dyff.results import PREDICTION_SCHEMA

    def write(path: Path, row_ids: list[int], predicted: list[int]) -> Path:
        pl.DataFrame(
            {
                "row_id": row_ids,
                "label": [r % 3 for r in row_ids],
                "predicted": predicted,
                "score": [0.5] * len(row_ids),
                "correct": [p == r % 3 for r, p in zip(row_ids, predicted, strict=True)],
                "topk_labels": [[p] for p in predicted],
                "topk_scores": [[0.5]] * len(row_ids),
            },
            schema=PREDICTION_SCHEMA,
        ).write_parquet(path)
        return path

    ids = list(range(10))
    a = write(tmp_path / "a.parquet", ids, [r % 3 for r in ids])  # all right
    shuffled = [7, 3, 9, 1, 5, 0, 2, 8, 6]  # row 4 missing
    b = write(tmp_path / "b.parquet", shuffled, [(r + 1) % 3 if r < 5 else r % 3 for r in shuffled])
    p = compare.load_pairs(["s"], [a], [b], top5=False)
    assert list(p.row_id) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert list(p.pred_b == p.label) == [r >= 5 for r in p.row_id]
    assert stats.mcnemar(p.pred_a == p.label, p.pred_b == p.label).table == [[5, 4], [0, 0]]


def test_the_ece_interval_agrees_with_the_plain_bootstrap_of_row_indices() -> None:
    """ECE's groups carry their confidence sums by mean and covariance: the interval of the
    difference matches resampling the rows themselves."""
    p = paired(3000, 5, seed=4)
    doc = compare.compute(p, [str(i) for i in range(5)], resamples=2000, seed=1)
    ours = next(m for m in doc["metrics"] if m["metric"] == "ece")["interval"]
    ca, cb = p.pred_a == p.label, p.pred_b == p.label
    edges = np.linspace(0, 1, metrics.ECE_BINS + 1)[1:-1]
    bins_a = np.clip(np.searchsorted(edges, p.score_a), 0, metrics.ECE_BINS - 1)
    bins_b = np.clip(np.searchsorted(edges, p.score_b), 0, metrics.ECE_BINS - 1)
    one_hot_a = np.eye(metrics.ECE_BINS)[bins_a]
    one_hot_b = np.eye(metrics.ECE_BINS)[bins_b]

    def ece_difference(c: np.ndarray, _: np.random.Generator) -> np.ndarray:
        c = c.astype(np.float64)
        n = c.sum(axis=1)
        ea = np.abs(c @ (one_hot_a * (ca - p.score_a)[:, None])).sum(axis=1) / n
        eb = np.abs(c @ (one_hot_b * (cb - p.score_b)[:, None])).sum(axis=1) / n
        return eb - ea

    plain = stats.bootstrap(ece_difference, np.ones(len(p), np.int64), resamples=2000, seed=2)[0]
    assert plain.low is not None and plain.high is not None
    width = plain.high - plain.low
    assert ours[0] == pytest.approx(plain.low, abs=0.12 * width)
    assert ours[1] == pytest.approx(plain.high, abs=0.12 * width)
