"""The change feed's reads: the records it has not seen are fetched in one batch (one
round trip on Datastore), never one by one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dyff.schema import Evaluation
from dyff.stores.records import ChangeFeed, Query, RecordStore, StoredDoc, TxResult
from tests import factories


class ClockStore(RecordStore):
    """Records at positions the test chooses (a writer's clock), with the reads counted."""

    url = "memory://"
    feed_overlap = 10  # as Datastore's: the window before the cursor is read again

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], tuple[int, StoredDoc]] = {}
        self.batches: list[int] = []  # how many records each batched read fetched
        self.single_reads = 0

    def put(self, name: str, position: int) -> None:
        doc = factories.evaluation(name).wire()
        doc["metadata"]["uid"] = f"uid-{name}"
        self.docs[("acme", name)] = (position, StoredDoc(doc, 1))

    def _changed_heads(self, kind: str, position: int, limit: int) -> list[tuple[int, str, str]]:
        heads = sorted((at, a, n) for (a, n), (at, _) in self.docs.items() if at > position)
        return heads[:limit]

    def _read_many(self, keys: list[tuple[str, str, str]]) -> list[StoredDoc | None]:
        self.batches.append(len(keys))
        return [self.docs[(a, n)][1] if (a, n) in self.docs else None for _, a, n in keys]

    def _read(self, kind: str, account: str, name: str) -> StoredDoc | None:
        self.single_reads += 1
        found = self.docs.get((account, name))
        return None if found is None else found[1]

    def _transact(
        self, kind: str, account: str, name: str, body: Callable[[StoredDoc | None], TxResult]
    ) -> StoredDoc | None:
        raise NotImplementedError

    def _scan(self, kind: str) -> list[StoredDoc]:
        raise NotImplementedError

    def _query(self, query: Query) -> list[StoredDoc]:
        raise NotImplementedError


def names(entities: list[Any]) -> list[str]:
    return [e.name for e in entities]


def test_records_not_seen_yet_are_fetched_in_one_batch() -> None:
    store = ClockStore()
    for i in range(5):
        store.put(f"e{i}", 100 + i)
    feed = ChangeFeed(store, Evaluation)
    assert names(feed.poll()) == [f"e{i}" for i in range(5)]
    assert store.batches == [5] and store.single_reads == 0
    store.put("e5", 110)
    assert names(feed.poll()) == ["e5"]
    assert store.batches == [5, 1]  # what was seen already is not fetched again


class RecentClockStore(ClockStore):
    """As Datastore: the recent part of the window on every poll, all of it at most
    every second."""

    feed_recent_overlap = 3
    feed_overlap_every_s = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.reads_from: list[int] = []

    def _changed_heads(self, kind: str, position: int, limit: int) -> list[tuple[int, str, str]]:
        self.reads_from.append(position)
        return super()._changed_heads(kind, position, limit)


def test_polls_reread_the_recent_window_and_the_whole_one_every_so_often() -> None:
    store = RecentClockStore()
    now = [0.0]
    feed = ChangeFeed(store, Evaluation, clock=lambda: now[0])
    store.put("e0", 100)
    assert names(feed.poll()) == ["e0"]
    assert store.reads_from == [0]  # the first poll: all of it
    store.put("e1", 120)
    now[0] = 0.25
    assert names(feed.poll()) == ["e1"]
    assert store.reads_from[-1] == 100 - 3  # recent window only

    # Committed late: stamped inside the whole window, outside the recent one.
    store.put("late", 112)
    now[0] = 0.5
    assert names(feed.poll()) == []  # not seen by a recent-window poll ...
    assert store.reads_from[-1] == 120 - 3
    now[0] = 1.0
    assert names(feed.poll()) == ["late"]  # ... but by the next whole re-read
    assert store.reads_from[-1] == 120 - 10
    now[0] = 1.25
    assert names(feed.poll()) == []  # and only once
    assert store.reads_from[-1] == 120 - 3


def test_a_store_without_a_recent_window_rereads_the_whole_one_every_poll() -> None:
    store = ClockStore()
    feed = ChangeFeed(store, Evaluation, clock=lambda: 0.0)
    store.put("e0", 100)
    assert names(feed.poll()) == ["e0"]
    store.put("late", 95)
    assert names(feed.poll()) == ["late"]  # at once: inside the window of 10
