"""Criteria without inference (issue 12): bootstrap intervals and slices, against baselines.

Prints two JSON lines (medians of BENCH_ROUNDS, default 3, after a warm-up run that also
checks the engines agree):

- `criteria_bootstrap_1m`: `value` = seconds for the 95 % intervals of every headline
  metric (accuracy, top-5, macro precision/recall/F1, ECE) with 1,000 resamples over
  1,000,000 prediction rows as `dyff.criteria` computes them (count the rows into cells,
  three bootstraps of multinomial counts through `dyff.stats.bootstrap`), from the rows in
  memory. `baseline` = a plain vectorised numpy bootstrap of accuracy alone over the same
  rows (row indices drawn with `Generator.integers` in blocks of 20 resamples, the mean of
  the gathered right/wrong flags). `ratio` = value / baseline. Goals: value <= 2 s,
  ratio <= 1.5. (The baseline does one metric of the six: a conservative comparison.)
- `criteria_slices_10m`: `value` = seconds for the group-by behind slicing 10,000,000 rows
  by a 50-value string column (`criteria.group_cells`: the column's distinct values, then
  one group-by of every row on slice number x cell code, with counts and fixed-point score
  sums), `baseline` = DuckDB running the
  same GROUP BY (the same cell code, counts and sums, computed in SQL) over the same rows
  (the polars frame handed to DuckDB as Arrow, no copy). `ratio` = value / baseline, goal
  <= 1.0. `full_s`: everything after the group-by for all 50 slices (per-slice metrics,
  1,000-resample intervals of each, the z-tests and Benjamini-Hochberg).

BENCH_ROWS / BENCH_SLICE_ROWS / BENCH_CLASSES change the sizes.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dyff import criteria  # noqa: E402
from dyff.schema import IntervalSpec, SliceSpec  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
SLICE_ROWS = int(os.environ.get("BENCH_SLICE_ROWS", "10000000"))
CLASSES = int(os.environ.get("BENCH_CLASSES", "10"))
SLICE_VALUES = 50
RESAMPLES = 1000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def generate(rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    k = CLASSES
    label = rng.integers(0, k, rows)
    group = rng.integers(0, SLICE_VALUES, rows)
    right = rng.random(rows) < 0.8 - 0.004 * group
    predicted = np.where(right, label, (label + rng.integers(1, k, rows)) % k)
    score = np.where(right, rng.uniform(0.5, 1.0, rows), rng.uniform(0.1, 0.8, rows))
    names = np.array([f"value-{i:02d}" for i in range(SLICE_VALUES)])
    return pl.DataFrame(
        {
            "label": label.astype(np.int32),
            "predicted": predicted.astype(np.int32),
            "score": score.astype(np.float32),
            "top5": right | (rng.random(rows) < 0.5),
            "group": names[group],
        }
    )


def timed(fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def dyff_intervals(frame: pl.DataFrame) -> dict:  # type: ignore[type-arg]
    spec = IntervalSpec(resamples=RESAMPLES, seed=0)
    cells = criteria.cells_of(criteria.group_cells(frame, [], CLASSES, True)[1], CLASSES)
    return criteria.metric_entries(cells, CLASSES, True, spec)


def numpy_bootstrap(frame: pl.DataFrame) -> tuple[float, float]:
    correct = (frame["label"] == frame["predicted"]).to_numpy()
    n = len(correct)
    rng = np.random.default_rng(0)
    means = []
    for _ in range(RESAMPLES // 20):
        idx = rng.integers(0, n, size=(20, n))
        means.append(correct[idx].mean(axis=1))
    low, high = np.quantile(np.concatenate(means), [0.025, 0.975])
    return float(low), float(high)


def dyff_groupby(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return criteria.group_cells(frame, ["group"], CLASSES, True)


def duckdb_groupby(con, frame: pl.DataFrame) -> pl.DataFrame:  # type: ignore[no-untyped-def]
    k1, bins, scale = CLASSES + 1, criteria.BINS, criteria.SCORE_SCALE
    sql = f"""
        SELECT "group",
          ((label * {k1} + CASE WHEN predicted < 0 OR predicted >= {CLASSES}
                                THEN {CLASSES} ELSE predicted END) * {bins}
           + greatest(0, least({bins - 1}, ceil(score::DOUBLE * {bins})::BIGINT - 1))) * 2
           + top5::BIGINT AS code,
          count(*) AS n,
          sum(round_even(score::DOUBLE * {scale}, 0)::BIGINT) AS s1,
          sum(round_even(score::DOUBLE * score::DOUBLE * {scale}, 0)::BIGINT) AS s2
        FROM t GROUP BY ALL
    """
    return pl.from_arrow(con.sql(sql).arrow())  # type: ignore[return-value]


def main() -> int:
    import duckdb

    # ---- bootstrap
    frame = generate(ROWS, 0)
    ours = dyff_intervals(frame)
    plain = numpy_bootstrap(frame)
    acc = ours["accuracy"]
    if abs(acc["low"] - plain[0]) > 0.002 or abs(acc["high"] - plain[1]) > 0.002:
        raise SystemExit(f"intervals disagree: dyff {acc}, numpy {plain}")
    times: dict[str, list[float]] = {"dyff": [], "numpy": []}
    for _ in range(ROUNDS):
        times["dyff"].append(timed(lambda: dyff_intervals(frame))[0])
        times["numpy"].append(timed(lambda: numpy_bootstrap(frame))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "bench": "criteria_bootstrap_1m",
                "value": round(med["dyff"], 3),
                "unit": "s",
                "baseline": round(med["numpy"], 3),
                "ratio": round(med["dyff"] / med["numpy"], 3),
                "rows": ROWS,
                "classes": CLASSES,
                "resamples": RESAMPLES,
                "metrics": len(criteria.HEADLINE),
                "baseline_metrics": 1,
                "rounds": ROUNDS,
                "cpus": os.cpu_count(),
            }
        ),
        flush=True,
    )
    del frame

    # ---- slices
    frame = generate(SLICE_ROWS, 1)
    con = duckdb.connect()
    arrow = frame.to_arrow()
    con.register("t", arrow)
    keys, cells = dyff_groupby(frame)
    mine = cells.join(keys, on="slice").sort(["group", "code"])
    theirs = duckdb_groupby(con, frame).sort(["group", "code"])
    if not mine.select("group", "code", "n", "s1", "s2").equals(
        theirs.select(
            "group",
            pl.col("code").cast(pl.Int64),
            pl.col("n").cast(mine["n"].dtype),
            pl.col("s1").cast(pl.Int64),
            pl.col("s2").cast(pl.Int64),
        )
    ):
        raise SystemExit("group-bys disagree")
    times = {"dyff": [], "duckdb": [], "full": []}
    spec = SliceSpec(by=["group"])
    intervals = IntervalSpec(resamples=RESAMPLES)
    for _ in range(ROUNDS):
        times["dyff"].append(timed(lambda: dyff_groupby(frame))[0])
        times["duckdb"].append(timed(lambda: duckdb_groupby(con, frame))[0])
        times["full"].append(
            timed(lambda: criteria.slice_results(frame, spec, CLASSES, True, intervals, 0))[0]
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    doc = criteria.slice_results(frame, spec, CLASSES, True, intervals, 0)
    print(
        json.dumps(
            {
                "bench": "criteria_slices_10m",
                "value": round(med["dyff"], 3),
                "unit": "s",
                "baseline": round(med["duckdb"], 3),
                "ratio": round(med["dyff"] / med["duckdb"], 3),
                "full_s": round(med["full"], 3),
                "rows": SLICE_ROWS,
                "slice_values": SLICE_VALUES,
                "cells": mine.height,
                "flagged": len(doc["flagged"]),
                "classes": CLASSES,
                "rounds": ROUNDS,
                "cpus": os.cpu_count(),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
