"""One contract for every blob store backend (the `blob_store` fixture runs each)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pytest

from dyff.errors import IntegrityError, Invalid, NotFound
from dyff.stores.blobs import BlobStore


def test_put_get_stat_round_trip(blob_store: BlobStore) -> None:
    data = b"hello dyff"
    info = blob_store.put("a/b/c.txt", data)
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    assert blob_store.get("a/b/c.txt") == data
    stat = blob_store.stat("a/b/c.txt")
    assert stat is not None and stat.size == len(data)
    assert blob_store.exists("a/b/c.txt") and not blob_store.exists("a/b/missing")
    assert blob_store.uri("a/b/c.txt").endswith("a/b/c.txt")


def test_uris_name_keys_and_never_a_server_path(blob_store: BlobStore, tmp_path: Path) -> None:
    uri = blob_store.uri("accounts/acme/x.parquet")
    assert blob_store.key_of(uri) == "accounts/acme/x.parquet"
    assert str(tmp_path) not in uri and "/tmp/" not in uri
    for foreign in ("file:///etc/passwd", "gs://elsewhere/accounts/acme/x", uri + "/../../k", ""):
        assert blob_store.key_of(foreign) is None, foreign


def test_missing_object_is_not_found(blob_store: BlobStore) -> None:
    with pytest.raises(NotFound):
        blob_store.get("nope")
    assert blob_store.stat("nope") is None
    assert blob_store.delete("nope") is False


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/b/", "sp ace"])
def test_bad_keys_are_refused(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(Invalid):
        blob_store.put(key, b"x")


def test_ranged_reads(blob_store: BlobStore) -> None:
    data = bytes(range(256)) * 40
    blob_store.put("r/bin", data)
    assert blob_store.read_range("r/bin", 0, 10) == data[:10]
    assert blob_store.read_range("r/bin", 1000, 5000) == data[1000:5000]
    assert blob_store.read_range("r/bin", len(data) - 3, len(data)) == data[-3:]


def test_prefix_listing_and_delete_prefix(blob_store: BlobStore) -> None:
    for key in ["p/x/1", "p/x/2", "p/y/1", "p/xz", "q/1"]:
        blob_store.put(key, key.encode())
    assert [i.key for i in blob_store.list("p/x/")] == ["p/x/1", "p/x/2"]
    assert [i.key for i in blob_store.list("p/x")] == ["p/x/1", "p/x/2", "p/xz"]
    assert [i.key for i in blob_store.list("p/")] == ["p/x/1", "p/x/2", "p/xz", "p/y/1"]
    assert blob_store.delete_prefix("p/x") == 2
    assert [i.key for i in blob_store.list("p/")] == ["p/xz", "p/y/1"]
    assert blob_store.delete("q/1") is True
    assert list(blob_store.list("q/")) == []


def test_verified_put_accepts_matching_declaration(blob_store: BlobStore) -> None:
    data = os.urandom(1000)
    digest = hashlib.sha256(data).hexdigest()
    info = blob_store.put("v/ok", io.BytesIO(data), sha256=digest, size=len(data))
    assert info.sha256 == digest and blob_store.get("v/ok") == data


@pytest.mark.parametrize(
    ("declared_sha", "declared_size", "field"),
    [("0" * 64, 1000, "sha256"), (None, 999, "sizeBytes"), (None, 1001, "sizeBytes")],
)
def test_mismatch_is_refused_and_leaves_nothing(
    blob_store: BlobStore, declared_sha: str | None, declared_size: int, field: str
) -> None:
    data = os.urandom(1000)
    with pytest.raises(IntegrityError) as exc:
        blob_store.put("v/bad", io.BytesIO(data), sha256=declared_sha, size=declared_size)
    assert exc.value.field == field
    assert not blob_store.exists("v/bad")
    assert [i.key for i in blob_store.list("")] == []


def test_mismatch_keeps_the_previous_object(blob_store: BlobStore) -> None:
    blob_store.put("v/keep", b"original")
    with pytest.raises(IntegrityError):
        blob_store.put("v/keep", b"replacement", sha256="0" * 64)
    assert blob_store.get("v/keep") == b"original"


def test_readers_never_see_half_an_object(blob_store: BlobStore) -> None:
    old, new = b"a" * 3_000_000, b"b" * 3_000_000
    blob_store.put("atomic", old)
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = blob_store.get("atomic")
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(3):
            blob_store.put("atomic", new)
            blob_store.put("atomic", old)
    finally:
        stop.set()
        t.join()
    assert seen <= {b"aa3000000", b"bb3000000"}, seen


def test_large_streamed_upload(blob_store: BlobStore) -> None:
    """50 MB, streamed (resumable on GCS), verified, read back by ranges."""
    size = 50 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    data = chunk * 50
    digest = hashlib.sha256(data).hexdigest()
    info = blob_store.put("big/obj", io.BytesIO(data), sha256=digest, size=size)
    assert info.size == size
    stat = blob_store.stat("big/obj")
    assert stat is not None and stat.size == size
    assert blob_store.read_range("big/obj", size - 100, size) == data[-100:]
    with blob_store.open("big/obj") as stream:
        h = hashlib.sha256()
        while part := stream.read(4 * 1024 * 1024):
            h.update(part)
    assert h.hexdigest() == digest
    assert blob_store.delete("big/obj")
