"""The evaluate workload's work after inference does not grow faster than the rows
(issue 16): the prediction cache is listed once, not once per shard, and metrics are
read from the prediction files a batch at a time, giving the document `metrics.compute`
gives over every row at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dyff import metrics, results
from dyff.evaluation import encode_json
from dyff.workloads import evaluate
from dyff.workloads.evaluate import run_evaluation
from tests.workloads.evaluation_fixtures import (
    HELDOUT_ROWS,
    LONG,
    LONG_ROWS,
    LONG_SHARD_ROWS,
    Platform,
    fresh_account,
)


def test_an_evaluation_lists_its_cache_once_and_reads_metrics_by_file(
    platform: Platform, served_tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    listings: list[int] = []
    real_present = evaluate._present

    def present(*args: Any) -> set[str]:
        listings.append(1)
        return real_present(*args)

    heights: list[int] = []
    real_batches = results.prediction_batches

    def batches(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for frame in real_batches(*args, **kwargs):
            heights.append(frame.height)
            yield frame

    monkeypatch.setattr(evaluate, "_present", present)
    monkeypatch.setattr(results, "prediction_batches", batches)
    account = fresh_account()
    platform.order(account, "scale", dataset=LONG)  # 30 shards
    out = run_evaluation(platform.records, platform.blobs, account, "scale", model_url=served_tiny)
    assert out is not None and len(out.inferred) == -(-LONG_ROWS // LONG_SHARD_ROWS) == 30
    # Once for the whole run (it was once per shard: a listing of the cache each time).
    assert len(listings) == 1
    # Metrics never held more than one shard's rows (criteria read the files apart).
    assert sum(heights) == LONG_ROWS and max(heights) <= LONG_SHARD_ROWS

    doc = platform.metrics_doc(account, "scale")
    paths = results.local_paths(platform.blobs, platform.manifest(account, "scale"), Path("/"))
    frame = results.Results(paths).scan().collect()
    topk = np.stack(frame["topk_labels"].list.head(5).to_list())
    whole = metrics.compute(
        frame["label"].to_numpy(), frame["predicted"].to_numpy(), frame["score"].to_numpy(),
        topk, doc["labels"], list(platform.evaluation(account, "scale").spec.metrics),
    )  # fmt: skip
    assert whole["rows"] == LONG_ROWS > HELDOUT_ROWS
    assert encode_json({k: doc[k] for k in whole}) == encode_json(whole)
