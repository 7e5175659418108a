"""Complete evaluations with constructed predictions, written as the evaluate workload writes
them (`dyff.workloads.evaluate`): one prediction file per shard under its cache key, the
manifest, metrics.json, and the record Complete with its headline metrics."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from dyff import layout, metrics
from dyff.evaluation import encode_predictions, prediction_table
from dyff.schema import Evaluation, MetricsSummary, Progress
from tests.shim.conftest import Shim

LABELS = [f"c{i}" for i in range(8)]
SHARD_ROWS = 100


def shard_digest(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def rows_of(
    right: Sequence[bool], *, offset: int = 0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row_ids, labels, top-5 ids, top-5 scores, label map) for rows right or wrong as
    given: a wrong row predicts label + 1; top-5 holds the label for every row."""
    n = len(right)
    row_ids = np.arange(offset, offset + n, dtype=np.int64)
    labels = (row_ids % len(LABELS)).astype(np.int32)
    first = np.where(np.asarray(right), labels, (labels + 1) % len(LABELS))
    # top-5 always contains the label: a right row ranks label, label+1, ..., a wrong one
    # label+1, label, label+2, ...
    second = np.where(np.asarray(right), (labels + 1) % len(LABELS), labels)
    others = [(labels + j) % len(LABELS) for j in range(2, 5)]
    topk = np.stack([first, second, *others], axis=1)
    rng = np.random.default_rng(seed)
    top = rng.uniform(0.4, 1.0, n)
    scores = np.stack([top] + [(1 - top) / 4] * 4, axis=1)
    return row_ids, labels, topk, scores, np.arange(len(LABELS))


def complete(
    shim: Shim,
    account: str,
    name: str,
    right: Sequence[bool],
    *,
    shards: Sequence[str] | None = None,
    model_digest: str | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Make evaluation `name` Complete with predictions right or wrong row by row, cut into
    shards of SHARD_ROWS rows (named `shards`, default digests of 'shard-i')."""
    evaluation = shim.records.get(Evaluation, account, name)
    uid = evaluation.metadata.uid or ""
    digest = model_digest or hashlib.sha256(name.encode()).hexdigest()
    n_shards = (len(right) + SHARD_ROWS - 1) // SHARD_ROWS
    names = list(shards or [shard_digest(f"shard-{i}") for i in range(n_shards)])
    keys = []
    all_labels, all_pred, all_score, all_topk = [], [], [], []
    for i, shard in enumerate(names):
        part = right[i * SHARD_ROWS : (i + 1) * SHARD_ROWS]
        row_ids, labels, topk, scores, label_map = rows_of(
            part, offset=i * SHARD_ROWS, seed=seed + i
        )
        data = encode_predictions(prediction_table(row_ids, labels, topk, scores, label_map))
        key = layout.prediction_key(account, digest, "inference", shard)
        shim.blobs.put(key, data, sha256=hashlib.sha256(data).hexdigest())
        keys.append(key)
        all_labels.append(labels)
        all_pred.append(topk[:, 0])
        all_score.append(scores[:, 0])
        all_topk.append(topk)
    doc = metrics.compute(
        np.concatenate(all_labels),
        np.concatenate(all_pred),
        np.concatenate(all_score),
        np.concatenate(all_topk),
        LABELS,
        list(metrics_names()),
    )
    doc.update(modelDigest=digest, inferenceDigest="inference", topK=5, shards=len(names))
    shim.blobs.put(layout.manifest_key(account, name, uid), json.dumps({"files": keys}).encode())
    shim.blobs.put(layout.metrics_key(account, name, uid), json.dumps(doc).encode())
    summary = metrics.summary(doc)

    def done(e: Evaluation) -> None:
        e.status.phase = "Complete"
        e.status.model_digest = digest
        e.status.metrics = MetricsSummary.model_validate(summary)
        e.status.progress = Progress(
            shards_total=len(names), shards_done=len(names), rows=len(right)
        )
        e.status.set_condition("Ready", "True", "Complete", "", e.metadata.generation)

    shim.records.mutate(Evaluation, account, name, done)
    return doc


def metrics_names() -> tuple[str, ...]:
    return ("accuracy", "top5_accuracy", "precision", "recall", "f1", "confusion_matrix", "ece")
