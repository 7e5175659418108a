"""The record store: one interface, the semantics written once, backends that only store.

A backend supplies four primitives — an atomic read-modify-write of one key
(`_transact`), a read, a scoped query and close — and this module gives every
backend the same create-if-absent, optimistic-concurrency, validation and
paging behaviour. Records are entity documents (`Entity.wire()`); the version
used for optimistic concurrency is kept beside the document and surfaces as
`metadata.resourceVersion`.
"""

from __future__ import annotations

import base64
import builtins
import logging
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import ValidationError

from dyff.errors import AlreadyExists, Conflict, Invalid, NotFound, invalid_from_validation
from dyff.schema import Entity, immutable_violations, is_name, utcnow

log = logging.getLogger("dyff.stores")

E = TypeVar("E", bound=Entity)

MAX_PAGE = 500
CreateOutcome = Literal["created", "restarted"]


@dataclass
class StoredDoc:
    """A record as a backend keeps it: the document and its version."""

    doc: dict[str, Any]
    version: int


# What a transaction body returns: the new document, or DELETE, or None for no change.
DELETE = object()
TxResult = dict[str, Any] | object | None


@dataclass
class Query:
    """A scoped, filtered listing; backends translate it to their query language."""

    kind: str
    account: str
    phase: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    name_prefix: str | None = None
    after_name: str | None = None
    limit: int = 50


@dataclass
class Page(Generic[E]):
    items: list[E]
    next_page_token: str | None


def encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        name = raw.decode()
    except (ValueError, UnicodeDecodeError):
        name = ""
    if not is_name(name):  # `$` at the very end: "name\n" is no name
        raise Invalid("malformed page token", field="pageToken")
    return name


def label_pairs(labels: dict[str, str]) -> list[str]:
    """Labels as `key=value` strings: one indexed, multi-valued property per record."""
    return sorted(f"{k}={v}" for k, v in labels.items())


class RecordStore(ABC):
    """Typed, account-scoped storage of entities with the semantics every backend shares."""

    url: str

    # ---- primitives a backend implements

    @abstractmethod
    def _transact(
        self, kind: str, account: str, name: str, body: Callable[[StoredDoc | None], TxResult]
    ) -> StoredDoc | None:
        """Run `body` on the current record atomically; write what it returns.

        Backends retry `body` on contention with a fresh transaction, so
        `body` must be a pure function of its argument. Returns the stored
        record afterwards (None when deleted or absent and unchanged).
        """

    @abstractmethod
    def _read(self, kind: str, account: str, name: str) -> StoredDoc | None: ...

    @abstractmethod
    def _scan(self, kind: str) -> list[StoredDoc]:
        """Every record of a kind, across accounts (for controllers, never for users)."""

    def _read_many(self, keys: list[tuple[str, str, str]]) -> list[StoredDoc | None]:
        """Several (kind, account, name) records at once; backends may batch this."""
        return [self._read(*key) for key in keys]

    @abstractmethod
    def _query(self, query: Query) -> list[StoredDoc]:
        """Records of one kind and account matching the filters, ordered by name,
        strictly after `after_name`, at most `limit`."""

    # How far back (in feed positions) a ChangeFeed re-reads. Positions that are
    # commit-ordered (SQLite's sequence) need none; positions taken from writers' clocks
    # (Datastore) do: a write stamped before another may commit after it. The whole
    # window is re-read at most every `feed_overlap_every_s`; the polls between re-read
    # only `feed_recent_overlap` (what an ordinary commit is late by), so a feed polled
    # often does not read the same index entries many times over.
    feed_overlap: int = 0
    feed_recent_overlap: int | None = None  # None: the whole window, every poll
    feed_overlap_every_s: float = 0.0

    def _changed_heads(self, kind: str, position: int, limit: int) -> list[tuple[int, str, str]]:
        """(position, account, name) of the records of a kind (every account) whose last
        write is positioned after `position`, oldest first, at most `limit`. Only the
        index is read: a feed fetches just the records it has not seen yet."""
        raise NotImplementedError(f"{type(self).__name__} has no change feed")

    def _insert(self, kind: str, account: str, name: str, doc: dict[str, Any]) -> StoredDoc | None:
        """Write `doc` atomically if no record has the key; None if one does. Backends
        with a native insert override this (it is create's fast path)."""
        exists = False

        def body(current: StoredDoc | None) -> TxResult:
            nonlocal exists
            exists = current is not None
            return None if exists else doc

        stored = self._transact(kind, account, name, body)
        return None if exists else stored

    def close(self) -> None:  # noqa: B027 - optional for backends
        pass

    def on_write(self, listener: Callable[[str, str, str], None]) -> None:
        """Call `listener(kind, account, name)` after every write through this object
        (in this process): how `dyff up`'s controller wakes when the shim writes."""
        self.__dict__.setdefault("_listeners", []).append(listener)

    def _wrote(self, kind: str, account: str, name: str) -> None:
        for listener in self.__dict__.get("_listeners", ()):
            try:
                listener(kind, account, name)
            except Exception:  # a listener's failure is never the writer's
                log.exception("write listener failed")

    # ---- the shared semantics

    def create(self, entity: E) -> tuple[E, CreateOutcome]:
        """Create if absent; a record in a restartable phase (Failed) is restarted.

        Restarting keeps the uid and creation time, takes the new spec and
        labels, resets status and bumps the generation.
        """
        entity = _revalidate(entity)
        kind = type(entity)
        fresh = entity.model_copy(deep=True)
        fresh.status = kind.status_type()
        fresh.metadata.uid = str(uuid.uuid4())
        # To the microsecond (a CR's own has seconds): `status.timings.queuedS` of a
        # sub-second evaluation is measured from it.
        fresh.metadata.creation_timestamp = datetime.now(UTC)
        fresh.metadata.generation = 1
        fresh.metadata.deletion_timestamp = None
        stored = self._insert(entity.kind, entity.account, entity.name, _doc(fresh))
        if stored is not None:
            # `fresh` is what was written (validated above): no need to parse it back.
            fresh.metadata.resource_version = str(stored.version)
            self._wrote(entity.kind, entity.account, entity.name)
            return fresh, "created"

        # The key exists: restart it if it failed, refuse otherwise.
        outcome: list[CreateOutcome] = []

        def body(current: StoredDoc | None) -> TxResult:
            outcome.clear()
            if current is None:  # deleted since the insert failed
                outcome.append("created")
                return _doc(fresh)
            old = _parse(kind, current)
            if old.phase not in kind.restartable_phases or old.metadata.deletion_timestamp:
                raise AlreadyExists(
                    f"{entity.kind} {entity.name!r} already exists (phase {old.phase or 'new'})",
                    field="metadata.name",
                )
            restarted = fresh.model_copy(deep=True)
            restarted.metadata.uid = old.metadata.uid
            restarted.metadata.creation_timestamp = old.metadata.creation_timestamp
            restarted.metadata.generation = old.metadata.generation + 1
            outcome.append("restarted")
            return _doc(restarted)

        stored = self._transact(entity.kind, entity.account, entity.name, body)
        assert stored is not None
        self._wrote(entity.kind, entity.account, entity.name)
        return _parse(kind, stored), outcome[0]

    def get(self, kind: type[E], account: str, name: str) -> E:
        stored = self._read(kind.kind_name, account, name)
        if stored is None:
            raise NotFound(f"{kind.kind_name} {name!r} not found")
        return _parse(kind, stored)

    def find(self, kind: type[E], account: str, name: str) -> E | None:
        stored = self._read(kind.kind_name, account, name)
        return None if stored is None else _parse(kind, stored)

    def find_many(self, refs: list[tuple[type[Entity], str, str]]) -> list[Entity | None]:
        """Several entities by (kind, account, name) in one round trip where the backend
        can; None for each that does not exist."""
        stored = self._read_many([(kind.kind_name, account, name) for kind, account, name in refs])
        return [
            None if doc is None else _parse(kind, doc)
            for (kind, _, _), doc in zip(refs, stored, strict=True)
        ]

    def update(self, entity: E) -> E:
        """Write `entity` if nobody wrote since it was read (its resourceVersion).

        A change of spec bumps the generation and must keep immutable fields.
        """
        entity = _revalidate(entity)
        expected = entity.metadata.resource_version
        if expected is None:
            raise Conflict(
                "update needs metadata.resourceVersion", field="metadata.resourceVersion"
            )
        kind = type(entity)

        def body(current: StoredDoc | None) -> TxResult:
            if current is None:
                raise NotFound(f"{entity.kind} {entity.name!r} not found")
            if str(current.version) != expected:
                raise Conflict(
                    f"{entity.kind} {entity.name!r} was modified (version {current.version}, "
                    f"write based on {expected}); read it again",
                    field="metadata.resourceVersion",
                )
            old = _parse(kind, current)
            new = entity.model_copy(deep=True)
            new.metadata.uid = old.metadata.uid
            new.metadata.creation_timestamp = old.metadata.creation_timestamp
            if new.spec != old.spec:
                broken = immutable_violations(kind.spec_type, old.spec, new.spec)
                if broken:
                    raise Invalid("; ".join(broken), field=broken[0].split(":")[0])
                new.metadata.generation = old.metadata.generation + 1
            else:
                new.metadata.generation = old.metadata.generation
            return _doc(new)

        stored = self._transact(entity.kind, entity.account, entity.name, body)
        assert stored is not None
        self._wrote(entity.kind, entity.account, entity.name)
        return _parse(kind, stored)

    def mutate(self, kind: type[E], account: str, name: str, change: Callable[[E], None]) -> E:
        """Read, apply `change`, write; retried on conflict. For writers that own
        the fields they change (the controller's status, a deletion mark)."""
        for attempt in range(100):
            current = self.get(kind, account, name)
            change(current)
            try:
                return self.update(current)
            except Conflict as exc:
                if exc.field != "metadata.resourceVersion":
                    raise
                time.sleep(random.uniform(0, 0.002 * min(attempt, 25)))
        raise Conflict(f"{kind.kind_name} {name!r} kept changing; gave up")

    def mark_deleting(self, kind: type[E], account: str, name: str) -> E:
        """Set the deletion mark (deletionTimestamp) once; the controller finishes the
        deletion. NotFound when there is no such record."""

        def mark(entity: E) -> None:
            if entity.metadata.deletion_timestamp is None:
                entity.metadata.deletion_timestamp = utcnow()

        return self.mutate(kind, account, name, mark)

    def delete(
        self, kind: type[Entity], account: str, name: str, *, resource_version: str | None = None
    ) -> None:
        def body(current: StoredDoc | None) -> TxResult:
            if current is None:
                raise NotFound(f"{kind.kind_name} {name!r} not found")
            if resource_version is not None and str(current.version) != resource_version:
                raise Conflict(
                    f"{kind.kind_name} {name!r} was modified; read it again",
                    field="metadata.resourceVersion",
                )
            return DELETE

        self._transact(kind.kind_name, account, name, body)
        self._wrote(kind.kind_name, account, name)

    def list(
        self,
        kind: type[E],
        account: str,
        *,
        phase: str | None = None,
        labels: dict[str, str] | None = None,
        name_prefix: str | None = None,
        limit: int = 50,
        page_token: str | None = None,
    ) -> Page[E]:
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid(f"limit must be between 1 and {MAX_PAGE}", field="limit")
        query = Query(
            kind=kind.kind_name,
            account=account,
            phase=phase,
            labels=dict(labels or {}),
            name_prefix=name_prefix,
            after_name=decode_token(page_token) if page_token else None,
            limit=limit + 1,
        )
        rows = self._query(query)
        items = [_parse(kind, r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items=items, next_page_token=encode_token(items[-1].name) if more else None)

    def scan(self, kind: type[E]) -> builtins.list[E]:
        """Every record of a kind in every account. For controllers: users only ever see
        their own account's records through `list`."""
        return [_parse(kind, doc) for doc in self._scan(kind.kind_name)]

    def list_all(self, kind: type[E], account: str, **filters: Any) -> builtins.list[E]:
        """Every matching record, following pages."""
        out: builtins.list[E] = []
        token = None
        while True:
            page = self.list(kind, account, limit=MAX_PAGE, page_token=token, **filters)
            out.extend(page.items)
            token = page.next_page_token
            if token is None:
                return out


class ChangeFeed(Generic[E]):
    """Follows the writes to one kind: each `poll` returns every record (its current
    state) written since the previous poll, once per version, oldest first.

    Polls re-read positions before the cursor, so a write that committed late (or was
    stamped by a slow clock) is still seen: `store.feed_recent_overlap` of them on every
    poll, all `store.feed_overlap` at least every `store.feed_overlap_every_s` (a write
    later than the recent window is seen by the next whole re-read, at most that much
    later). The re-read is of the index only (position and key); records are fetched only
    at a position not seen before, and returned only at a (uid, version) not returned
    before. A record deleted and created again has a new uid, so it is returned even at
    a lower version.
    """

    def __init__(
        self,
        store: RecordStore,
        kind: type[E],
        cursor: int = 0,
        page: int = MAX_PAGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.kind = kind
        self.cursor = cursor  # position of the newest write seen
        self.page = page
        self.clock = clock
        self._whole_due = 0.0  # when the whole overlap window is re-read next
        # (account, name) -> (position, uid, version), for the overlap window only.
        self._seen: dict[tuple[str, str], tuple[int, str | None, int]] = {}

    def poll(self) -> builtins.list[E]:
        overlap = self.store.feed_overlap
        back, recent = overlap, self.store.feed_recent_overlap
        if recent is not None and recent < overlap:
            now = self.clock()
            if now < self._whole_due:
                back = recent
            else:
                self._whole_due = now + self.store.feed_overlap_every_s
        position = max(0, self.cursor - back)
        kind = self.kind.kind_name
        out: builtins.list[E] = []
        while True:
            heads = self.store._changed_heads(kind, position, self.page)
            fresh = [h for h in heads if (self._seen.get((h[1], h[2])) or (None,))[0] != h[0]]
            docs = self.store._read_many([(kind, account, name) for _, account, name in fresh])
            for (at, account, name), stored in zip(fresh, docs, strict=True):
                prev = self._seen.get((account, name))
                if stored is None:  # deleted since its head was read
                    continue
                uid = stored.doc.get("metadata", {}).get("uid")
                if prev is None or prev[1] != uid or prev[2] < stored.version:
                    out.append(_parse(self.kind, stored))
                    prev = (at, uid, stored.version)
                self._seen[(account, name)] = (max(at, prev[0]), prev[1], prev[2])
            if heads:
                self.cursor = max(self.cursor, heads[-1][0])
            if len(heads) < self.page:
                break
            # Positions may tie (clock stamps): step back one so that a tie cut by the
            # page boundary is read again (and deduplicated) rather than skipped.
            last = heads[-1][0]
            position = last - 1 if heads[0][0] != last else last
        horizon = self.cursor - overlap
        if any(v[0] < horizon for v in self._seen.values()):
            self._seen = {k: v for k, v in self._seen.items() if v[0] >= horizon}
        return out


def _revalidate(entity: E) -> E:
    """Validate again at the store's edge: a record that fails the schema is never written."""
    try:
        return type(entity).model_validate(entity.wire())
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def _doc(entity: Entity) -> dict[str, Any]:
    doc = entity.wire()
    doc["metadata"].pop("resourceVersion", None)
    return doc


def _parse(kind: type[E], stored: StoredDoc) -> E:
    doc = dict(stored.doc)
    doc["metadata"] = {**doc["metadata"], "resourceVersion": str(stored.version)}
    return kind.model_validate(doc)


def phase_of(doc: dict[str, Any]) -> str | None:
    status = doc.get("status") or {}
    phase = status.get("phase")
    return phase if isinstance(phase, str) else None
