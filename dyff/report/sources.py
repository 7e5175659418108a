"""`build_report`: an evaluation's report gathered from the record and blob stores."""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dyff import layout, results, shard_lists
from dyff.errors import Conflict, DyffError
from dyff.lifecycle import EvaluationPhase
from dyff.report.page import render_report
from dyff.schema import Dataset, Evaluation
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

log = logging.getLogger("dyff.report")

ERRORS_SHOWN = 12


def _row_images(
    blobs: BlobStore, dataset: Dataset, row_ids: Sequence[int], cache_dir: Path
) -> dict[int, bytes]:
    """The encoded images of `row_ids`, read from the shards that hold them (those rows only)."""
    shards = sorted(shard_lists.listed_shards(blobs, [dataset]), key=lambda s: s.first_row)
    starts = [s.first_row for s in shards]
    wanted: dict[int, list[int]] = {}
    for rid in row_ids:
        i = bisect.bisect_right(starts, rid) - 1
        if i >= 0 and rid < shards[i].first_row + shards[i].rows:
            wanted.setdefault(i, []).append(int(rid))
    out: dict[int, bytes] = {}
    for i, ids in sorted(wanted.items()):
        out.update(shard_images(blobs, dataset.account, shards[i].sha256, ids, cache_dir))
    return out


def shard_images(
    blobs: BlobStore, account: str, shard: str, row_ids: Sequence[int], cache_dir: Path
) -> dict[int, bytes]:
    """The encoded images of `row_ids` in one shard (only those rows are read); none where
    the shard cannot be read (its thumbnails are left out, the report still renders)."""
    key = layout.shard_key(account, shard)
    try:
        (path,) = results.local_paths(blobs, [key], cache_dir)
        table = pq.read_table(
            path, columns=["row_id", "image"], filters=[("row_id", "in", list(row_ids))]
        )
    except (DyffError, OSError, pa.ArrowException) as exc:
        log.warning("shard %s unreadable, its thumbnails are left out: %s", key, exc)
        return {}
    rows = table.column("row_id").to_pylist()
    return dict(zip(rows, table.column("image").to_pylist(), strict=True))


def build_report(
    records: RecordStore,
    blobs: BlobStore,
    account: str,
    name: str,
    cache_dir: Path,
    *,
    errors_limit: int = ERRORS_SHOWN,
) -> str:
    """The HTML report of a complete evaluation, gathered from the record and blob stores.

    Raises NotFound for a missing evaluation (or missing metrics/manifest) and
    Conflict for one that is not Complete. Thumbnails of rows whose dataset or
    shard is gone are shown as "image unavailable".
    """
    evaluation = records.get(Evaluation, account, name)
    if evaluation.status.phase != EvaluationPhase.COMPLETE:
        raise Conflict(
            f"evaluation {name!r} is {evaluation.status.phase or 'Pending'}, not Complete",
            field="status.phase",
        )
    uid = evaluation.metadata.uid or ""
    metrics = json.loads(blobs.get(layout.metrics_key(account, name, uid)))
    manifest = json.loads(blobs.get(layout.manifest_key(account, name, uid)))
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = results.local_paths(blobs, manifest.get("files") or [], cache_dir)
    frame = results.Results(paths).confident_errors(errors_limit)
    rows = frame.select("row_id", "label", "predicted", "score").to_dicts()
    ref = evaluation.spec.dataset
    dataset = records.find(Dataset, ref.account or account, ref.name)
    if dataset is None:
        log.warning("dataset %s of evaluation %s is gone; no thumbnails", ref.name, name)
        images: dict[int, bytes] = {}
    else:
        images = _row_images(blobs, dataset, [r["row_id"] for r in rows], cache_dir)
        if not metrics.get("labels") and dataset.status.labels:
            metrics = {**metrics, "labels": dataset.status.labels}
    for row in rows:
        row["image"] = images.get(row["row_id"])
    return render_report(evaluation, metrics, rows, title=f"Evaluation report: {name}")
