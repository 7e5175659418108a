"""`dyff admin fsck` on stores seeded with orphans, against each backend."""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from dyff import accounts, fsck, layout, uploads
from dyff.schema import Account, ApiKey, Model, Shard
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore
from tests import factories

SHA = "ab" * 32
DIGEST, GONE_DIGEST = "cd" * 32, "ef" * 32
SHARD, GONE_SHARD = "12" * 32, "34" * 32
ATTRS = "ee" * 32


def seed(records: RecordStore, blobs: BlobStore) -> set[str]:
    """A live account with what it uses, and orphans of every sort; returns the orphans'
    names (record names and blob keys)."""
    accounts.create_account(records, "acme")
    model, _ = records.create(factories.model("m1"))
    model.status.digest = DIGEST
    records.update(model)
    dataset, _ = records.create(factories.dataset("d1"))
    factories.list_shards(
        blobs, dataset, [Shard(sha256=SHARD, rows=1, first_row=0, attributes=ATTRS)]
    )
    records.update(dataset)
    assert dataset.status.shard_list is not None
    listed = layout.shard_list_key("acme", dataset.status.shard_list.sha256)
    keep = [
        layout.bento_key("acme", DIGEST),
        layout.shard_key("acme", SHARD),
        layout.attributes_key("acme", SHARD, ATTRS),
        layout.prediction_key("acme", DIGEST, "cfg", SHARD),
        layout.upload_key("acme", "Model", "m1", factories.SHA),
    ]
    uploads.open_ticket(records, blobs, model, "http://shim")

    gone, _ = records.create(factories.model("gone"))
    orphan_ticket = uploads.ticket_name(gone)
    uploads.open_ticket(records, blobs, gone, "http://shim")
    records.delete(Model, "acme", "gone")
    records.create(factories.model("ghost-model", account="ghost"))
    _, key = accounts.mint_key(records, "acme")
    records.create(
        key.model_copy(update={"metadata": key.metadata.model_copy(update={"namespace": "ghost"})})
    )
    orphan_blobs = [
        layout.upload_key("acme", "Model", "gone", SHA),
        layout.bento_key("acme", GONE_DIGEST),
        layout.shard_key("acme", GONE_SHARD),
        layout.attributes_key("acme", GONE_SHARD, ATTRS),
        layout.attributes_key("acme", SHARD, "f0" * 32),  # the shard's, other metadata
        layout.prediction_key("acme", GONE_DIGEST, "cfg", SHARD),
        layout.prediction_key("acme", DIGEST, "cfg", GONE_SHARD),
        layout.metrics_key("acme", "e1", "some-uid"),
        layout.shard_key("ghost", SHARD),
    ]
    for blob in keep + orphan_blobs:
        blobs.put(blob, b"x")
    orphan_blobs.append(layout.shard_list_key("acme", GONE_SHARD))  # a list of no dataset
    blobs.put(orphan_blobs[-1], b"{}")
    assert blobs.exists(listed)  # the dataset's own list, kept
    return {orphan_ticket, "ghost-model", key.name, *orphan_blobs}


def test_fsck_finds_every_orphan_and_fix_removes_them(
    record_store: RecordStore, blob_store: BlobStore
) -> None:
    expected = seed(record_store, blob_store)
    found = fsck.find_orphans(record_store, blob_store)
    assert {o.name for o in found} == expected
    assert all(o.reason for o in found)
    assert fsck.fix(record_store, blob_store, found) == len(expected)
    assert fsck.find_orphans(record_store, blob_store) == []
    ghost = record_store.get(Model, "ghost", "ghost-model")  # left to the controller
    assert ghost.metadata.deletion_timestamp is not None
    assert record_store.list_all(ApiKey, "ghost") == []
    assert blob_store.exists(layout.bento_key("acme", DIGEST))
    assert blob_store.exists(layout.prediction_key("acme", DIGEST, "cfg", SHARD))
    assert record_store.find(Account, "acme", "acme") is not None
    assert len(uploads.tickets_of(record_store, record_store.get(Model, "acme", "m1"))) == 1


def test_the_cli_lists_and_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dyff import cli
    from dyff.stores.file import FileBlobStore
    from dyff.stores.sqlite import SqliteRecordStore

    records, blobs = SqliteRecordStore(tmp_path / "records.db"), FileBlobStore(tmp_path / "blobs")
    expected = seed(records, blobs)
    # Work folders as `dyff up` leaves them: one of a live model, two of entities gone.
    work = tmp_path / "work"
    for folder in ("model/acme/m1", "model/acme/gone", "evaluation/ghost/e1"):
        (work / folder / "scratch").mkdir(parents=True)
        (work / folder / "log.txt").write_text("...")
    expected |= {"Model/gone", "Evaluation/e1"}
    monkeypatch.setenv("DYFF_DATA_DIR", str(tmp_path))

    def dyff(*args: str) -> list[dict[str, str]]:
        monkeypatch.setattr(sys, "argv", ["dyff", "--json", "admin", "fsck", *args])
        capsys.readouterr()
        with contextlib.suppress(SystemExit):
            cli.main()
        found: list[dict[str, str]] = json.loads(capsys.readouterr().out)
        return found

    found = dyff()
    assert {o["name"] for o in found} == expected
    assert {o["kind"] for o in found if o["store"] == "work"} == {"work folder"}
    assert {o["name"] for o in dyff("--fix")} == expected
    assert dyff() == []
    assert [p.relative_to(work).as_posix() for p in work.glob("*/*/*")] == ["model/acme/m1"]


def test_fsck_lists_idempotency_keys_past_their_day(
    record_store: RecordStore, blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dyff.schema import IDEMPOTENCY_TTL, IdempotencyRecord, IdempotencySpec, ObjectMeta, utcnow

    accounts.create_account(record_store, "acme")
    spec = IdempotencySpec(request_hash=SHA, target_kind="Model", target_name="m1", status_code=201)
    record_store.create(
        IdempotencyRecord(metadata=ObjectMeta(name="i1", namespace="acme"), spec=spec)
    )
    assert fsck.find_orphans(record_store, blob_store) == []
    later = utcnow() + IDEMPOTENCY_TTL + timedelta(seconds=1)
    monkeypatch.setattr(fsck, "utcnow", lambda: later)
    found = fsck.find_orphans(record_store, blob_store)
    assert [(o.kind, o.name) for o in found] == [("Idempotency", "i1")]
    assert fsck.fix(record_store, blob_store, found) == 1
    assert record_store.find(IdempotencyRecord, "acme", "i1") is None
