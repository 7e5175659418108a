"""Record store backend: SQLite, the embedded default for one machine (`sqlite:///PATH`).

The file shrinks: new files are made with `auto_vacuum = INCREMENTAL`, every delete
is followed by `PRAGMA incremental_vacuum` (free pages go back to the file system once
the WAL is checkpointed), and `compact()` (run by `dyff up` at start, when no other
process has the file open) converts an older file once with a VACUUM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dyff.stores.records import (
    DELETE,
    Query,
    RecordStore,
    StoredDoc,
    TxResult,
    label_pairs,
    phase_of,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    phase TEXT,
    labels TEXT NOT NULL,
    body TEXT NOT NULL,
    updated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, account, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_phase ON records (kind, account, phase, name);
-- The change feed: one sequence for every write, taken inside the write transaction,
-- so positions are in commit order.
CREATE TABLE IF NOT EXISTS feed_sequence (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER);
INSERT OR IGNORE INTO feed_sequence VALUES (0, 0);
"""
log = logging.getLogger("dyff.stores.sqlite")

# `compact()` converts files whose live data is at most this large (VACUUM copies it).
COMPACT_MAX_BYTES = 1 << 30
AUTO_VACUUM_INCREMENTAL = 2
FEED_INDEX = "CREATE INDEX IF NOT EXISTS records_updated ON records (kind, updated)"


class SqliteRecordStore(RecordStore):
    """One file, one connection per thread, writes serialised by `BEGIN IMMEDIATE`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            # Takes effect on a new file only (before its first table); see `compact`.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Files written before the change feed lack `updated`: add it and number the
        existing records, so a feed from position 0 sees them too."""
        with self._write_tx() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
            if "updated" not in columns:
                conn.execute("ALTER TABLE records ADD COLUMN updated INTEGER NOT NULL DEFAULT 0")
                keys = conn.execute("SELECT kind, account, name FROM records").fetchall()
                for n, key in enumerate(keys, start=1):
                    conn.execute(
                        "UPDATE records SET updated=? WHERE kind=? AND account=? AND name=?",
                        (n, *key),
                    )
                conn.execute("UPDATE feed_sequence SET value=? WHERE id=0", (len(keys),))
            conn.execute(FEED_INDEX)

    def compact(self, max_bytes: int = COMPACT_MAX_BYTES) -> bool:
        """Give free pages back: a file made without incremental auto-vacuum is converted
        with one VACUUM (when its live data is at most `max_bytes`; it needs the file to
        itself, so it is skipped while another connection holds it), then free pages are
        released. Returns whether the file was converted."""
        conn = self._conn()
        converted = False
        (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
        if mode != AUTO_VACUUM_INCREMENTAL:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            (free,) = conn.execute("PRAGMA freelist_count").fetchone()
            (size,) = conn.execute("PRAGMA page_size").fetchone()
            if (pages - free) * size <= max_bytes:
                conn.execute("PRAGMA busy_timeout=0")
                try:
                    # The mode of a file in WAL mode cannot change: leave WAL for the VACUUM.
                    conn.execute("PRAGMA journal_mode=DELETE")
                    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    conn.execute("VACUUM")
                    converted = True
                except sqlite3.OperationalError as exc:
                    log.warning("not compacting %s: %s", self.path, exc)
                finally:
                    with contextlib.suppress(sqlite3.OperationalError):
                        conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA busy_timeout=30000")
        self._release_free_pages()
        return converted

    def _release_free_pages(self) -> None:
        conn = self._conn()
        try:
            # executescript steps the pragma to the end (execute frees one page per call).
            conn.executescript("PRAGMA incremental_vacuum;")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.OperationalError as exc:  # busy: the next delete tries again
            log.debug("incremental vacuum of %s: %s", self.path, exc)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write_tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        for attempt in range(50):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:  # database is locked past busy_timeout
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.05)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _transact(
        self, kind: str, account: str, name: str, body: Callable[[StoredDoc | None], TxResult]
    ) -> StoredDoc | None:
        deleted: list[bool] = []
        try:
            return self._transact_once(kind, account, name, body, deleted)
        finally:
            if deleted:
                self._release_free_pages()

    def _transact_once(
        self,
        kind: str,
        account: str,
        name: str,
        body: Callable[[StoredDoc | None], TxResult],
        deleted: list[bool],
    ) -> StoredDoc | None:
        with self._write_tx() as conn:
            current = self._select(conn, kind, account, name)
            result = body(current)
            if result is None:
                return current
            if result is DELETE:
                conn.execute(
                    "DELETE FROM records WHERE kind=? AND account=? AND name=?",
                    (kind, account, name),
                )
                deleted.append(True)
                return None
            assert isinstance(result, dict)
            version = (current.version if current else 0) + 1
            labels = result.get("metadata", {}).get("labels", {})
            (position,) = conn.execute(
                "UPDATE feed_sequence SET value = value + 1 WHERE id=0 RETURNING value"
            ).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO records"
                " (kind, account, name, version, phase, labels, body, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    account,
                    name,
                    version,
                    phase_of(result),
                    json.dumps(label_pairs(labels)),
                    json.dumps(result),
                    position,
                ),
            )
            return StoredDoc(result, version)

    @staticmethod
    def _select(conn: sqlite3.Connection, kind: str, account: str, name: str) -> StoredDoc | None:
        row = conn.execute(
            "SELECT body, version FROM records WHERE kind=? AND account=? AND name=?",
            (kind, account, name),
        ).fetchone()
        return None if row is None else StoredDoc(json.loads(row[0]), row[1])

    def _read(self, kind: str, account: str, name: str) -> StoredDoc | None:
        return self._select(self._conn(), kind, account, name)

    def _scan(self, kind: str) -> list[StoredDoc]:
        rows = (
            self._conn()
            .execute(
                "SELECT body, version FROM records WHERE kind=? ORDER BY account, name", (kind,)
            )
            .fetchall()
        )
        return [StoredDoc(json.loads(body), version) for body, version in rows]

    def _changed_heads(self, kind: str, position: int, limit: int) -> list[tuple[int, str, str]]:
        rows = (
            self._conn()
            .execute(
                "SELECT updated, account, name FROM records WHERE kind=? AND updated > ?"
                " ORDER BY updated LIMIT ?",
                (kind, position, limit),
            )
            .fetchall()
        )
        return [(int(u), a, n) for u, a, n in rows]

    def _query(self, query: Query) -> list[StoredDoc]:
        sql = "SELECT body, version FROM records WHERE kind=? AND account=?"
        args: list[object] = [query.kind, query.account]
        if query.phase is not None:
            sql += " AND phase=?"
            args.append(query.phase)
        for pair in label_pairs(query.labels):
            sql += " AND EXISTS (SELECT 1 FROM json_each(records.labels) WHERE value=?)"
            args.append(pair)
        if query.name_prefix:
            sql += " AND name >= ? AND name < ?"
            args += [query.name_prefix, query.name_prefix + "\uffff"]
        if query.after_name is not None:
            sql += " AND name > ?"
            args.append(query.after_name)
        sql += " ORDER BY name LIMIT ?"
        args.append(query.limit)
        rows = self._conn().execute(sql, args).fetchall()
        return [StoredDoc(json.loads(body), version) for body, version in rows]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
