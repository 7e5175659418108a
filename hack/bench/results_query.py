"""Accuracy by label + confusion counts over 10,000,000 prediction rows, against DuckDB.

Generates the rows once (in a temp folder, 10 Parquet files of 1M rows with the
prediction contract's columns, written with the evaluation workload's own
writer options), then times, interleaved and repeated, `dyff.results.Results`
(`by_label()` then `confusion()`: two scans, nothing cached between them),
DuckDB running the same two GROUP BY queries on the same files (into Arrow
tables), and, for reference, the same views as plain polars lazy group-bys.
Every engine uses every core and reads warm files; medians are reported, and
CPU seconds too (steadier than wall time while other processes load the
machine). Prints one JSON line:
{"bench": "results_query", "value": dyff_s, "unit": "s", "baseline": duckdb_s,
 "ratio": value / baseline, ...}. Goal: ratio <= 1.0.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dyff.evaluation import PREDICTION_ARROW_SCHEMA, PREDICTION_WRITER_OPTIONS  # noqa: E402
from dyff.results import Results  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "10000000"))
FILES = 10
CLASSES = 100
TOP_K = 5
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))


def generate(folder: Path) -> list[Path]:
    """Predictions right ~80% of the time, with softmax-like top-k scores."""
    rng = np.random.default_rng(0)
    per_file = ROWS // FILES
    paths = []
    for f in range(FILES):
        n = per_file if f < FILES - 1 else ROWS - per_file * (FILES - 1)
        labels = rng.integers(0, CLASSES, n, dtype=np.int32)
        right = rng.random(n) < 0.8
        predicted = np.where(right, labels, rng.integers(0, CLASSES, n, dtype=np.int32))
        topk = (predicted[:, None] + np.arange(TOP_K, dtype=np.int32)) % CLASSES
        scores = np.sort(rng.dirichlet(np.ones(TOP_K + 1), n)[:, :TOP_K], axis=1)[:, ::-1]
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        offsets = pa.array(np.arange(0, n * TOP_K + 1, TOP_K, dtype=np.int32))
        first = f * per_file
        table = pa.table(
            {
                "row_id": pa.array(np.arange(first, first + n, dtype=np.int64)),
                "label": pa.array(labels),
                "predicted": pa.array(predicted.astype(np.int32)),
                "score": pa.array(scores[:, 0]),
                "correct": pa.array(predicted == labels),
                "topk_labels": pa.ListArray.from_arrays(offsets, pa.array(topk.reshape(-1))),
                "topk_scores": pa.ListArray.from_arrays(offsets, pa.array(scores.reshape(-1))),
            },
            schema=PREDICTION_ARROW_SCHEMA,
        )
        path = folder / f"part-{f:02d}.parquet"
        pq.write_table(table, path, row_group_size=65_536, **PREDICTION_WRITER_OPTIONS)
        paths.append(path)
    return paths


def run_dyff(paths: list[Path]) -> tuple[float, tuple[int, int]]:
    t = time.perf_counter()
    res = Results(paths)
    by_label = res.by_label()
    confusion = res.confusion()
    return time.perf_counter() - t, (int(by_label["correct"].sum()), confusion.height)


def run_plain_polars(paths: list[Path]) -> tuple[float, tuple[int, int]]:
    """The same two views as plain polars lazy group-bys (no dyff layer), for reference."""
    t = time.perf_counter()
    lf = pl.scan_parquet([str(p) for p in paths])
    by_label = (
        lf.group_by("label").agg(rows=pl.len(), correct=pl.col("correct").sum())
        .with_columns(accuracy=pl.col("correct") / pl.col("rows")).sort("label").collect()
    )  # fmt: skip
    confusion = lf.group_by("label", "predicted").agg(count=pl.len()).sort(
        "label", "predicted").collect()  # fmt: skip
    return time.perf_counter() - t, (int(by_label["correct"].sum()), confusion.height)


def run_duckdb(con: object, paths: list[Path]) -> tuple[float, tuple[int, int]]:
    files = "[" + ", ".join(f"'{p}'" for p in paths) + "]"
    t = time.perf_counter()
    by_label = con.sql(  # type: ignore[attr-defined]
        f"SELECT label, count(*) AS rows, sum(correct::INTEGER) AS correct, "
        f"sum(correct::INTEGER) / count(*) AS accuracy "
        f"FROM read_parquet({files}) GROUP BY label ORDER BY label"
    ).to_arrow_table()
    confusion = con.sql(  # type: ignore[attr-defined]
        f"SELECT label, predicted, count(*) AS count FROM read_parquet({files}) "
        f"GROUP BY label, predicted ORDER BY label, predicted"
    ).to_arrow_table()
    return time.perf_counter() - t, (int(pc.sum(by_label["correct"]).as_py()),
                                     confusion.num_rows)  # fmt: skip


def main() -> int:
    import duckdb

    with tempfile.TemporaryDirectory(prefix="dyff-bench-results-") as tmp:
        t = time.perf_counter()
        paths = generate(Path(tmp))
        gen_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in paths)
        con = duckdb.connect()
        # Warm all three (page cache, lazy imports), and check they agree.
        _, ours = run_dyff(paths)
        _, plain = run_plain_polars(paths)
        _, theirs = run_duckdb(con, paths)
        if not ours == plain == theirs:
            raise SystemExit(f"engines disagree: dyff {ours}, polars {plain}, duckdb {theirs}")
        # Interleaved rounds, so that load from other processes hits all alike.
        times: dict[str, list[float]] = {"dyff": [], "polars": [], "duckdb": []}
        cpu: dict[str, list[float]] = {"dyff": [], "polars": [], "duckdb": []}
        runs = {
            "dyff": lambda: run_dyff(paths),
            "polars": lambda: run_plain_polars(paths),
            "duckdb": lambda: run_duckdb(con, paths),
        }
        for _ in range(ROUNDS):
            for name, fn in runs.items():
                c = time.process_time()
                times[name].append(fn()[0])
                cpu[name].append(time.process_time() - c)
        med = {name: statistics.median(v) for name, v in times.items()}
        cpu_med = {name: statistics.median(v) for name, v in cpu.items()}
        value, baseline = med["dyff"], med["duckdb"]
        print(
            json.dumps(
                {
                    "bench": "results_query",
                    "value": round(value, 4),
                    "unit": "s",
                    "baseline": round(baseline, 4),
                    "ratio": round(value / baseline, 3),
                    "rows": ROWS,
                    "files": FILES,
                    "bytes": size,
                    "rounds": ROUNDS,
                    "plain_polars_s": round(med["polars"], 4),
                    "cpu_s": {k: round(v, 4) for k, v in cpu_med.items()},
                    "cpu_ratio": round(cpu_med["dyff"] / cpu_med["duckdb"], 3),
                    "generate_s": round(gen_s, 1),
                    "queries": "by_label + confusion",
                    "cpus": os.cpu_count(),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
