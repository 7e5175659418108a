"""A paired comparison of two 1,000,000-row evaluations with 1,000 bootstrap resamples.

Generates two evaluations' prediction files once (in a temp folder: the same 20 shards of
50,000 rows, written with the evaluation workload's own writer, B right on ~2 % more rows
than A), then times, interleaved and repeated:

- `value`: the whole comparison as the shim computes it (`dyff.compare`): read both
  evaluations' files of the common shards, align the rows, McNemar's table, the metrics with
  their 1,000-resample paired-bootstrap intervals, per-class differences, the flipped rows;
- the non-bootstrap part alone (read, align, the 2x2 table per class, the flipped rows),
  against `baseline`: DuckDB doing the same join on (shard, row id) and the same counts
  (one GROUP BY) and flipped rows (into Arrow) on the same files.

Medians are reported. Prints one JSON line:
{"bench": "compare_1m", "value": s, "unit": "s", "baseline": duckdb_s, "ratio": ...}
where ratio = (dyff's non-bootstrap part) / baseline. Goals: value <= 3 s, ratio <= 1.0.
BENCH_CLASSES (default 10) sets the number of classes: the bootstrap of the macro scores
costs resamples x (distinct (label, A's, B's prediction) triples).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dyff import compare, stats  # noqa: E402
from dyff.evaluation import encode_predictions, prediction_table  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
SHARDS = 20
CLASSES = int(os.environ.get("BENCH_CLASSES", "10"))
RESAMPLES = 1000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def generate(folder: Path) -> tuple[list[str], list[Path], list[Path]]:
    rng = np.random.default_rng(0)
    per = ROWS // SHARDS
    shards, paths_a, paths_b = [], [], []
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    for s in range(SHARDS):
        n = per if s < SHARDS - 1 else ROWS - per * (SHARDS - 1)
        shard = hashlib.sha256(f"shard-{s}".encode()).hexdigest()
        row_ids = np.arange(s * per, s * per + n, dtype=np.int64)
        labels = rng.integers(0, CLASSES, n).astype(np.int32)
        for side, acc, out in (("a", 0.90, paths_a), ("b", 0.92, paths_b)):
            right = rng.random(n) < acc
            wrong = (labels + rng.integers(1, CLASSES, n)) % CLASSES
            first = np.where(right, labels, wrong)
            k = min(5, CLASSES)
            topk = (first[:, None] + np.arange(k)) % CLASSES
            top = rng.uniform(0.3, 1.0, n)
            scores = np.concatenate(
                [top[:, None], np.repeat(((1 - top) / k)[:, None], k - 1, 1)], 1
            )
            table = prediction_table(row_ids, labels, topk, scores, np.arange(CLASSES))
            path = folder / side / f"{shard}.parquet"
            path.write_bytes(encode_predictions(table))
            out.append(path)
        shards.append(shard)
    return shards, paths_a, paths_b


def run_dyff(shards: list[str], pa: list[Path], pb: list[Path]) -> tuple[float, tuple[int, ...]]:
    t = time.perf_counter()
    paired = compare.load_pairs(shards, pa, pb, top5=True)
    labels = [str(i) for i in range(CLASSES)]
    doc = compare.compute(paired, labels, resamples=RESAMPLES, seed=0)
    flips = compare.flips(paired)
    elapsed = time.perf_counter() - t
    m = doc["mcnemar"]
    return elapsed, (m["bothRight"], m["broken"], m["fixed"], m["bothWrong"], flips.height)


def run_dyff_counts(
    shards: list[str], pa: list[Path], pb: list[Path]
) -> tuple[float, tuple[int, ...]]:
    """The non-bootstrap part: read, align, the 2x2 table per class, the flipped rows."""
    t = time.perf_counter()
    p = compare.load_pairs(shards, pa, pb, top5=False)
    ca, cb = p.pred_a == p.label, p.pred_b == p.label
    per_class = np.bincount((p.label * 2 + ca) * 2 + cb, minlength=4 * CLASSES).reshape(CLASSES, 4)
    test = stats.mcnemar_counts(*(int(x) for x in per_class.sum(axis=0)[::-1]))
    flips = compare.flips(p)
    elapsed = time.perf_counter() - t
    return elapsed, (test.both_right, test.broken, test.fixed, test.both_wrong, flips.height)


def run_duckdb(con: object, pa: list[Path], pb: list[Path]) -> tuple[float, tuple[int, ...]]:
    def files(paths: list[Path]) -> str:
        return "[" + ", ".join(f"'{p}'" for p in paths) + "]"

    joined = (
        "WITH a AS (SELECT parse_filename(filename) AS shard, row_id, label, predicted, score "
        f"FROM read_parquet({files(pa)}, filename=true)), "
        "b AS (SELECT parse_filename(filename) AS shard, row_id, predicted, score "
        f"FROM read_parquet({files(pb)}, filename=true)), "
        "j AS (SELECT a.shard, a.row_id, a.label, a.predicted AS predicted_a, "
        "a.score AS score_a, b.predicted AS predicted_b, b.score AS score_b "
        "FROM a JOIN b USING (shard, row_id)) "
    )
    t = time.perf_counter()
    counts = con.sql(  # type: ignore[attr-defined]
        joined + "SELECT label, predicted_a = label AS ca, predicted_b = label AS cb, "
        "count(*) AS n FROM j GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    flips = con.sql(  # type: ignore[attr-defined]
        joined + "SELECT CASE WHEN predicted_b = label THEN 'fixed' ELSE 'broken' END AS kind, "
        "shard, row_id, label, predicted_a, score_a, predicted_b, score_b FROM j "
        "WHERE (predicted_a = label) <> (predicted_b = label) ORDER BY shard, row_id"
    ).to_arrow_table()
    elapsed = time.perf_counter() - t
    cell = {(ca, cb): 0 for ca in (True, False) for cb in (True, False)}
    for _, ca, cb, n in counts:
        cell[(ca, cb)] += n
    table = (cell[(True, True)], cell[(True, False)], cell[(False, True)], cell[(False, False)])
    return elapsed, (*table, flips.num_rows)


def main() -> int:
    import duckdb

    with tempfile.TemporaryDirectory(prefix="dyff-bench-compare-") as tmp:
        t = time.perf_counter()
        shards, pa, pb = generate(Path(tmp))
        gen_s = time.perf_counter() - t
        con = duckdb.connect()
        _, ours = run_dyff(shards, pa, pb)  # warm-up, and the engines must agree
        _, counts = run_dyff_counts(shards, pa, pb)
        _, theirs = run_duckdb(con, pa, pb)
        if not ours == counts == theirs:
            raise SystemExit(f"engines disagree: dyff {ours} / {counts}, duckdb {theirs}")
        times: dict[str, list[float]] = {"dyff": [], "counts": [], "duckdb": []}
        for _ in range(ROUNDS):
            times["dyff"].append(run_dyff(shards, pa, pb)[0])
            times["counts"].append(run_dyff_counts(shards, pa, pb)[0])
            times["duckdb"].append(run_duckdb(con, pa, pb)[0])
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            json.dumps(
                {
                    "bench": "compare_1m",
                    "value": round(med["dyff"], 3),
                    "unit": "s",
                    "baseline": round(med["duckdb"], 4),
                    "ratio": round(med["counts"] / med["duckdb"], 3),
                    "non_bootstrap_s": round(med["counts"], 4),
                    "rows": ROWS,
                    "shards": SHARDS,
                    "classes": CLASSES,
                    "resamples": RESAMPLES,
                    "rounds": ROUNDS,
                    "flipped_rows": ours[-1],
                    "generate_s": round(gen_s, 1),
                    "cpus": os.cpu_count(),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
