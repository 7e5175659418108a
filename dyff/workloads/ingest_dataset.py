"""Ingest a Dataset: `python -m dyff.workloads.ingest_dataset --config FILE`.

Reads the Dataset record, fetches its source into scratch space (checking the
declared sha256 and size), cuts it into content-addressed Parquet shards
(`dyff.datasets`), stores the shards that are not stored yet and each shard's
attribute file (`layout.attributes_key`) and the shard list (`dyff.shard_lists`),
and reports on the record: phase Ready with rows, the shard list's digest and
count, labels and the attribute columns (and a status message
summing them up: "450 rows in 10 shards, 10 classes (split test)"), or phase Failed with
Ready=False and the reason. A failed ingestion leaves no shard behind that it
wrote itself (shards that were already stored, shared with other datasets,
stay).

Where the source comes from:
- `upload`: the blob `layout.upload_key(account, "Dataset", name, sha256)`.
- `uri`: only objects of the account inside the configured blob store are read,
  through the store: the URI is one the store gives out (`blobs.uri(key)`, e.g.
  `local:///accounts/acme/…` or `gs://bucket/prefix/accounts/acme/…`). Any
  other URI is refused (reason
  `UnsupportedSource`): a workload must not read files of its host or buckets
  its service account happens to reach on a user's behalf.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from dyff import layout, shard_lists
from dyff.datasets import DatasetInput, iter_shards, open_dataset
from dyff.schema import Dataset, Shard, ShardList
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore
from dyff.workloads.common import (
    IngestReport,
    WorkloadConfig,
    fetch_source,
    run_ingestion,
    run_main,
)

log = logging.getLogger("dyff.workloads.ingest_dataset")


def referenced_shards(
    records: RecordStore, blobs: BlobStore, account: str, exclude: str
) -> set[str]:
    """sha256 of every shard list, shard and attribute file some other Dataset of the
    account names."""
    others = [ds for ds in records.list_all(Dataset, account) if ds.name != exclude]
    out = {ds.status.shard_list.sha256 for ds in others if ds.status.shard_list}
    for s in shard_lists.listed_shards(blobs, others):
        out.add(s.sha256)
        if s.attributes:
            out.add(s.attributes)
    return out


def discard(
    records: RecordStore, blobs: BlobStore, account: str, name: str, keys: dict[str, str]
) -> None:
    """Delete the shards, attribute files and shard list this run wrote (sha256 -> key)
    unless another dataset names them."""
    if not keys:
        return
    keep = referenced_shards(records, blobs, account, exclude=name)
    for sha, key in keys.items():
        if sha not in keep:
            blobs.delete(key)


def ingest(
    dataset: Dataset, blobs: BlobStore, scratch: Path, written: dict[str, str]
) -> tuple[DatasetInput, list[Shard], ShardList]:
    """Ingest into the blob store; record each newly stored blob in `written`."""
    source = fetch_source(dataset, blobs, scratch / "source")
    opened = open_dataset(dataset.spec.source.form, source, scratch, split=dataset.spec.split)
    shards = []
    for shard in iter_shards(opened, dataset.spec.shard_rows):
        key = layout.shard_key(dataset.account, shard.sha256)
        if blobs.stat(key) is None:
            blobs.put(key, shard.data, sha256=shard.sha256)
            written[shard.sha256] = key
        if shard.attributes is not None and shard.attributes_sha256 is not None:
            akey = layout.attributes_key(dataset.account, shard.sha256, shard.attributes_sha256)
            if blobs.stat(akey) is None:
                blobs.put(akey, shard.attributes, sha256=shard.attributes_sha256)
                written[shard.attributes_sha256] = akey
        shards.append(shard.shard())
    listed, wrote = shard_lists.store(blobs, dataset.account, shards)
    if wrote:
        written[listed.sha256] = layout.shard_list_key(dataset.account, listed.sha256)
    log.info(
        "%s/%s: %d rows, %d shards (%d new); attributes %s",
        dataset.account,
        dataset.name,
        opened.rows,
        len(shards),
        new_shards(dataset.account, written),
        ", ".join(opened.attributes),
    )
    return opened, shards, listed


def new_shards(account: str, written: dict[str, str]) -> int:
    """How many of the blobs written are shards (the rest are attribute files)."""
    return sum(1 for sha, key in written.items() if key == layout.shard_key(account, sha))


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def summary(opened: DatasetInput, shards: list[Shard], new: int | None = None) -> str:
    """`450 rows in 10 shards, 10 classes (split test)`; with `new`, how many shards were new."""
    fresh = f" ({new} new)" if new is not None else ""
    split = f" (split {opened.split})" if opened.split else ""
    return (
        f"{_count(opened.rows, 'row', 'rows')} in {_count(len(shards), 'shard', 'shards')}{fresh},"
        f" {_count(len(opened.labels), 'class', 'classes')}{split}"
    )


def run(config: WorkloadConfig) -> None:
    written: dict[str, str] = {}

    def ingested(dataset: Dataset, blobs: BlobStore, scratch: Path) -> IngestReport:
        opened, shards, listed = ingest(dataset, blobs, scratch, written)
        results = {
            "rows": opened.rows,
            "shard_list": listed,
            "labels": opened.labels,
            "attributes": opened.attributes,
            "message": summary(opened, shards),
        }
        new = new_shards(config.account, written)
        return IngestReport("Ingested", summary(opened, shards, new), results)

    def discard_written(records: RecordStore, blobs: BlobStore) -> None:
        discard(records, blobs, config.account, config.name, written)

    run_ingestion(
        config, Dataset, ingested, discard_written, ("rows", "shard_list", "labels", "attributes")
    )


def main(argv: list[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
