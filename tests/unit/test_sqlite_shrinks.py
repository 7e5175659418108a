"""The SQLite record store gives the space of deleted records back to the file system,
and `compact()` converts a file made without incremental auto-vacuum once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dyff.schema import Model
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories

N = 150
BIG = 64 * 1024


def _size(path: Path) -> int:
    return path.stat().st_size


def _set_message(m: Model) -> None:
    m.status.message = "z" * BIG


def test_deleting_many_large_records_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    store = SqliteRecordStore(path)
    for i in range(N):
        store.create(factories.model(f"m{i}"))
        store.mutate(Model, "acme", f"m{i}", _set_message)
    store.compact()  # checkpoints the WAL into the file
    full = _size(path)
    assert full > N * BIG
    for i in range(N):
        store.delete(Model, "acme", f"m{i}")
    assert _size(path) < full / 10, (_size(path), full)
    store.close()


def test_compact_converts_an_old_file_once(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    # A file as older versions made it: no auto-vacuum.
    old = sqlite3.connect(path)
    old.execute("PRAGMA auto_vacuum=NONE")
    old.execute("CREATE TABLE padding (x)")
    old.commit()
    old.close()
    store = SqliteRecordStore(path)
    for i in range(N):
        store.create(factories.model(f"m{i}"))
        store.mutate(Model, "acme", f"m{i}", _set_message)
    for i in range(N):
        store.delete(Model, "acme", f"m{i}")
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    bloated = _size(path)
    assert bloated > N * BIG  # without auto-vacuum nothing came back
    assert store.compact() is True
    assert _size(path) < bloated / 10
    assert store.compact() is False  # converted already
    store.create(factories.model("again"))
    assert store.get(Model, "acme", "again").name == "again"
    store.close()
