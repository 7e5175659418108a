"""A Dataset's shard list is a blob, and its status stays the same size however many
shards it has (a status is copied into the CR, and etcd refuses objects over 1.5 MiB)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dyff import layout, shard_lists
from dyff.errors import NotFound, WorkloadFailed
from dyff.evaluation import DEPENDENCY_NOT_READY, dataset_shards
from dyff.workloads import common
from tests.workloads.dataset_fixtures import digits
from tests.workloads.test_datasets import ACCOUNT, Platform, parquet_bytes


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform(tmp_path)
    yield p
    p.records.close()


def test_the_status_does_not_grow_with_the_shards(platform: Platform, tmp_path: Path) -> None:
    data = parquet_bytes(tmp_path, digits(240))
    platform.upload("one", "parquet", data, shard_rows=240)
    platform.upload("many", "parquet", data, shard_rows=1)
    sizes = {}
    for name, count in (("one", 1), ("many", 240)):
        rc, ds = platform.ingest(name)
        assert rc == 0 and ds.status.phase == "Ready" and ds.status.rows == 240
        assert ds.status.shard_list is not None and ds.status.shard_list.count == count
        shards = shard_lists.shards_of(platform.blobs, ds)
        assert [s.first_row for s in shards] == list(range(0, 240, 240 // count))
        assert sum(s.rows for s in shards) == 240
        assert all(platform.blobs.exists(layout.shard_key(ACCOUNT, s.sha256)) for s in shards)
        sizes[name] = len(json.dumps(ds.status.wire()))
    # The same fields, only the digest, the count and the message's numbers differ.
    assert abs(sizes["many"] - sizes["one"]) < 16, sizes
    assert sizes["many"] < 4096


def test_a_list_that_is_gone_or_altered_is_refused(platform: Platform, tmp_path: Path) -> None:
    platform.upload("d", "parquet", parquet_bytes(tmp_path, digits(30)), shard_rows=10)
    rc, ds = platform.ingest("d")
    assert rc == 0 and ds.status.shard_list is not None
    key = layout.shard_list_key(ACCOUNT, ds.status.shard_list.sha256)
    shard_lists._cache.clear()
    platform.blobs.put(key, shard_lists.encode(shard_lists.shards_of(platform.blobs, ds)[:2]))
    shard_lists._cache.clear()
    with pytest.raises(ValueError, match="does not match its digest"):
        shard_lists.shards_of(platform.blobs, ds)
    platform.blobs.delete(key)
    with pytest.raises(NotFound):
        shard_lists.shards_of(platform.blobs, ds)
    with pytest.raises(WorkloadFailed) as info:
        dataset_shards(platform.blobs, ds)  # what an evaluation of it reports
    assert info.value.reason == DEPENDENCY_NOT_READY and "shard list" in info.value.message
    assert shard_lists.listed_shards(platform.blobs, [ds]) == []  # cleanup, fsck: nothing


def test_two_datasets_with_the_same_shards_share_one_list(
    platform: Platform, tmp_path: Path
) -> None:
    data = parquet_bytes(tmp_path, digits(50))
    for name in ("a", "b"):
        platform.upload(name, "parquet", data, shard_rows=20)
        assert platform.ingest(name)[0] == 0
    lists = list(platform.blobs.list(f"{layout.account_prefix(ACCOUNT)}/shard-lists/"))
    assert len(lists) == 1


def test_labels_too_big_for_a_status_fail_the_ingestion_and_leave_nothing(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "MAX_LABEL_BYTES", 20)  # ten digit names take 50 bytes
    platform.upload("d", "parquet", parquet_bytes(tmp_path, digits(30)), shard_rows=10)
    rc, ds = platform.ingest("d")
    ready = ds.status.condition("Ready")
    assert rc == 2 and ds.status.phase == "Failed"
    assert ready is not None and ready.reason == common.TOO_MANY_LABELS
    assert "50 bytes" in ready.message and ds.status.shard_list is None
    assert platform.shard_keys() == set()
    assert list(platform.blobs.list(f"{layout.account_prefix(ACCOUNT)}/shard-lists/")) == []


def test_label_budget_holds_imagenet_21k_sized_names() -> None:
    common.check_labels_fit([f"n{i:08d} some wordnet synonym, another" for i in range(21_841)])
    with pytest.raises(WorkloadFailed) as info:
        common.check_labels_fit(["x" * 1000] * 2000)
    assert info.value.reason == common.TOO_MANY_LABELS
