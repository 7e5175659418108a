"""Inference calls of evaluations that can reuse earlier work, against the first full run.

Three evaluations run through the real workload path (`run_evaluation`, which
serves the model's Bento under `bentoml serve` only when something is left to
infer), from one account, against the demo's digits ViT architecture:

1. the full dataset (4,500 rows, 10 shards): the baseline number of calls;
2. the same evaluation again, under another name: goal 0 calls (and no server);
3. the dataset with 10% new rows appended (4,950 rows, 11 shards, the first 10
   identical): goal exactly the new shard's calls.

Prints two JSON lines, {"bench": "reuse", "case": "repeat" | "appended_10pct",
"value": calls, "unit": "inference calls", "baseline": calls of run 1,
"ratio": value / baseline, "goal": ..., ...}.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchenv  # noqa: F401 - first: sets the environment before dyff loads

from dyff.schema import Dataset, Shard
from dyff.shard_lists import shards_of
from dyff.workloads.evaluate import RunReport, run_evaluation
from hack.bench.evaluation_throughput import tiny_vit_untrained
from tests.workloads.evaluation_fixtures import OWNER, Platform

ROWS = 4500
SHARD_ROWS = 450
BATCH = 64
ACCOUNT = "bench"


def digits(rows: int) -> list[tuple[bytes, int]]:
    from dyff.tinymodels import digits_png, digits_splits

    train, test = digits_splits()
    pngs = digits_png(test.images) + digits_png(train.images)
    labels = [int(t) for t in test.labels] + [int(t) for t in train.labels]
    return [(pngs[i % len(pngs)], labels[i % len(pngs)]) for i in range(rows)]


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    from dyff.models import package_transformers

    with tempfile.TemporaryDirectory(prefix="dyff-bench-reuse-") as tmp:
        work = Path(tmp)
        model_dir = tiny_vit_untrained(work / "model")
        platform = Platform(work / "platform")
        platform.add_model("m", model_dir, package_transformers(model_dir, work / "package"))
        platform.add_dataset("base", digits(ROWS), SHARD_ROWS)
        platform.add_dataset("plus", digits(ROWS + ROWS // 10), SHARD_ROWS)

        def evaluate(name: str, dataset: str) -> tuple[RunReport, float]:
            platform.order(ACCOUNT, name, model="m", dataset=dataset, batch_size=BATCH)
            t = time.perf_counter()
            out = run_evaluation(
                platform.records, platform.blobs, ACCOUNT, name, scratch_dir=work / "scratch"
            )
            assert out is not None
            assert platform.evaluation(ACCOUNT, name).status.phase == "Complete"
            return out, time.perf_counter() - t

        first, first_s = evaluate("first", "base")
        repeat, repeat_s = evaluate("repeat", "base")
        plus, plus_s = evaluate("plus", "plus")

        def shards(name: str) -> list[Shard]:
            return shards_of(platform.blobs, platform.records.get(Dataset, OWNER, name))

        base = {s.sha256 for s in shards("base")}
        new = sorted(s.sha256 for s in shards("plus") if s.sha256 not in base)
        new_rows = sum(s.rows for s in shards("plus") if s.sha256 not in base)
        expected = -(-new_rows // BATCH)
        lines: list[dict[str, Any]] = [
            {
                "bench": "reuse",
                "case": "repeat",
                "value": repeat.inference_calls,
                "unit": "inference calls",
                "baseline": first.inference_calls,
                "ratio": repeat.inference_calls / first.inference_calls,
                "goal": 0,
                "shards_inferred": len(repeat.inferred),
                "shards_reused": repeat.plan.reused,
                "server_started": "serve_start_s" in repeat.timings,
                "wall_s": round(repeat_s, 2),
                "first_wall_s": round(first_s, 2),
            },
            {
                "bench": "reuse",
                "case": "appended_10pct",
                "value": plus.inference_calls,
                "unit": "inference calls",
                "baseline": first.inference_calls,
                "ratio": round(plus.inference_calls / first.inference_calls, 3),
                "goal": expected,
                "new_shards": len(new),
                "shards_inferred": len(plus.inferred),
                "inferred_exactly_the_new_shards": sorted(plus.inferred) == new,
                "shards_reused": plus.plan.reused,
                "rows": ROWS + ROWS // 10,
                "wall_s": round(plus_s, 2),
            },
        ]
        for line in lines:
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
