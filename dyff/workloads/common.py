"""What every workload shares: its config file, the stores, and how it reports.

A workload is `python -m dyff.workloads.<name> --config FILE`: the same entry
point runs in a Kubernetes Job's container and as a local subprocess. It reads
and writes only through the record and blob stores named in its config.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from dyff import layout
from dyff.errors import NotFound, WorkloadFailed
from dyff.lifecycle import lifecycle, settle
from dyff.schema import Dataset, Model, Schema
from dyff.stores import BlobStore, RecordStore, open_blobs, open_records
from dyff.stores.blobs import CHUNK

log = logging.getLogger("dyff.workloads")

# A status is copied into its record and its CR, and etcd refuses objects over 1.5 MiB:
# what grows with the data (shards) lives in blobs, and the one list that stays in status,
# the labels, gets a budget (ImageNet-21k's 21,841 names take about 0.7 MiB).
MAX_LABEL_BYTES = 1024 * 1024
TOO_MANY_LABELS = "TooManyLabels"


def check_labels_fit(labels: list[str] | None) -> None:
    """WorkloadFailed(TooManyLabels) when the labels would not fit in a status."""
    size = len(json.dumps(labels or [], ensure_ascii=False).encode())
    if size > MAX_LABEL_BYTES:
        raise WorkloadFailed(
            TOO_MANY_LABELS,
            f"the {len(labels or [])} labels take {size:,} bytes as JSON; a status holds at"
            f" most {MAX_LABEL_BYTES:,} (shorter names or fewer classes)",
        )


class WorkloadConfig(Schema):
    """The config file a workload is started with."""

    records_url: str = Field(description="Record store URL.")
    blobs_url: str = Field(description="Blob store URL.")
    account: str = Field(description="Account owning the entity.")
    name: str = Field(description="Name of the Model, Dataset or Evaluation.")
    scratch_dir: str | None = Field(default=None, description="Local scratch space.")
    shard_index: int | None = Field(
        default=None, description="For Indexed Jobs: this Pod's index (JOB_COMPLETION_INDEX)."
    )
    shard_count: int | None = Field(default=None, description="For Indexed Jobs: Pod count.")

    def stores(self) -> tuple[RecordStore, BlobStore]:
        return open_records(self.records_url), open_blobs(self.blobs_url)


SOURCE_NOT_FOUND = "SourceNotFound"
SOURCE_MISMATCH = "SourceMismatch"
UNSUPPORTED_SOURCE = "UnsupportedSource"


def source_key(entity: Model | Dataset, blobs: BlobStore) -> tuple[str, str, int | None]:
    """(blob key, declared sha256, declared size) of a model's or dataset's upload or uri.

    A `uri` is read only when it names a blob of the entity's own account inside the
    platform's blob store: a workload must not read its host's files, buckets its service
    account happens to reach, or another account's blobs, on a user's behalf.
    """
    src = entity.spec.source
    if src.upload is not None:
        key = layout.upload_key(entity.account, entity.kind, entity.name, src.upload.sha256)
        return key, src.upload.sha256, src.upload.size_bytes
    assert src.uri is not None and src.uri.sha256 is not None
    own = layout.account_prefix(entity.account) + "/"
    uri = src.uri.uri
    key = blobs.key_of(uri) or ""
    if not key.startswith(own):
        raise WorkloadFailed(
            UNSUPPORTED_SOURCE,
            f"uri {uri!r} is not a blob of this account in the platform's blob store "
            f"({blobs.uri(own.rstrip('/'))}/…); upload it or copy it there",
        )
    return key, src.uri.sha256, src.uri.size_bytes


def fetch_source(entity: Model | Dataset, blobs: BlobStore, dest: Path) -> Path:
    """Copy the source to `dest`, verifying its declared sha256 and size."""
    key, sha256, size = source_key(entity, blobs)
    digest = hashlib.sha256()
    n = 0
    try:
        stream = blobs.open(key)
    except NotFound:
        raise WorkloadFailed(SOURCE_NOT_FOUND, f"source blob {key!r} not found") from None
    with stream, open(dest, "wb") as out:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            n += len(chunk)
            if size is not None and n > size:
                break
            out.write(chunk)
    if size is not None and n != size:
        raise WorkloadFailed(SOURCE_MISMATCH, f"source is not the declared {size} bytes")
    if digest.hexdigest() != sha256:
        raise WorkloadFailed(
            SOURCE_MISMATCH, f"source sha256 is {digest.hexdigest()}, declared {sha256}"
        )
    return dest


def report(
    records: RecordStore,
    kind: type[Model] | type[Dataset],
    account: str,
    name: str,
    generation: int,
    *,
    ready: bool,
    reason: str,
    message: str,
    results: dict[str, Any],
) -> bool:
    """Write an ingestion's outcome on its entity: its kind's success or failure phase,
    the Ready condition and observedGeneration for `generation` (`dyff.lifecycle.settle`),
    and the result fields (all None on failure, so nothing of a result is left). False
    when the entity is gone, or is being deleted and the outcome is a success (its bytes
    are about to go)."""
    life = lifecycle(kind.kind_name)

    def change(entity: Model | Dataset) -> None:
        if ready and entity.metadata.deletion_timestamp is not None:
            raise NotFound(f"{kind.kind_name} {name!r} is being deleted")
        status = entity.status
        for field, value in results.items():
            setattr(status, field, value)
        if ready:
            # A success carries a message only if the results give one (a summary).
            summary = results.get("message")
            settle(status, life.succeeded, "True", reason, message, generation, summary=summary)
        else:
            settle(status, life.failed, "False", reason, message, generation)

    try:
        records.mutate(kind, account, name, change)
    except NotFound:
        return False
    return True


@dataclass(frozen=True)
class IngestReport:
    """A successful ingestion: the Ready condition's reason and message, and the status
    fields to set (`message` among them sets the status message, a summary)."""

    reason: str
    message: str
    results: dict[str, Any]


def run_ingestion(
    config: WorkloadConfig,
    kind: type[Model] | type[Dataset],
    ingest: Callable[[Any, BlobStore, Path], IngestReport],
    discard: Callable[[RecordStore, BlobStore], None],
    result_fields: tuple[str, ...],
) -> None:
    """The frame every ingestion shares: read the entity (nothing to do while it is being
    deleted), run `ingest` in a scratch folder, report the outcome for the generation read.
    Bad input (WorkloadFailed) is reported as the kind's failure, with every result field
    cleared, and re-raised; on any failure, and when the entity went away meanwhile,
    `discard` removes what the ingestion stored."""
    records, blobs = config.stores()
    account, name = config.account, config.name
    entity = records.get(kind, account, name)
    if entity.metadata.deletion_timestamp is not None:
        log.info("%s/%s is being deleted; nothing to do", account, name)
        return
    generation = entity.metadata.generation
    if config.scratch_dir:
        Path(config.scratch_dir).mkdir(parents=True, exist_ok=True)
    prefix = f"ingest-{kind.kind_name.lower()}-"
    try:
        with tempfile.TemporaryDirectory(dir=config.scratch_dir, prefix=prefix) as tmp:
            done = ingest(entity, blobs, Path(tmp))
        check_labels_fit(done.results.get("labels"))
    except WorkloadFailed as exc:
        discard(records, blobs)
        cleared = dict.fromkeys(result_fields)
        if not report(records, kind, account, name, generation, ready=False,
                      reason=exc.reason, message=exc.message, results=cleared):  # fmt: skip
            log.info("%s/%s was deleted during ingestion", account, name)
        raise
    except BaseException:
        # A crash (ours, not the user's): the controller retries; leave nothing behind.
        discard(records, blobs)
        raise
    if not report(records, kind, account, name, generation, ready=True,
                  reason=done.reason, message=done.message, results=done.results):  # fmt: skip
        # Deleted while we worked: whatever we stored is nobody's.
        discard(records, blobs)
        log.info("%s/%s was deleted during ingestion; discarded what it stored", account, name)


def run_main(run: Callable[[WorkloadConfig], None], argv: list[str] | None = None) -> int:
    """Parse `--config FILE`, run, and exit 0 (done), 2 (bad input, reported) or 1 (crash)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = WorkloadConfig.model_validate(json.loads(args.config.read_text()))
    try:
        run(config)
    except WorkloadFailed as exc:
        log.error("failed: %s: %s", exc.reason, exc.message)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run a workload module, e.g. python -m dyff.workloads.evaluate --config FILE")
