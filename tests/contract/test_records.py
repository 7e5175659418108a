"""One contract for every record store backend (the `record_store` fixture runs each)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dyff.errors import AlreadyExists, Conflict, Invalid, NotFound
from dyff.schema import Dataset, Evaluation, Model, UriSource
from dyff.stores.records import RecordStore
from tests import factories


def test_create_then_get_round_trips(record_store: RecordStore) -> None:
    created, outcome = record_store.create(factories.model("m1", labels={"team": "vision"}))
    assert outcome == "created"
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    got = record_store.get(Model, "acme", "m1")
    assert got == created
    assert got.spec.source.upload is not None and got.spec.source.upload.size_bytes == 10
    assert got.metadata.labels == {"team": "vision"}


def test_creation_is_stamped_to_the_microsecond(record_store: RecordStore) -> None:
    """The order time of a sub-second evaluation (`status.timings.queuedS`) needs more
    than a CR's one-second creationTimestamp."""
    before = datetime.now(UTC)
    created, _ = record_store.create(factories.evaluation("e1"))
    after = datetime.now(UTC)
    stamped = created.metadata.creation_timestamp
    assert stamped is not None and before <= stamped <= after
    assert record_store.get(Evaluation, "acme", "e1").metadata.creation_timestamp == stamped


def test_second_create_of_same_key_is_refused(record_store: RecordStore) -> None:
    record_store.create(factories.model("m1"))
    with pytest.raises(AlreadyExists) as exc:
        record_store.create(factories.model("m1"))
    assert exc.value.field == "metadata.name"


def test_create_over_failed_record_restarts_it(record_store: RecordStore) -> None:
    first, _ = record_store.create(factories.evaluation("e1"))

    def fail(e: Evaluation) -> None:
        e.status.phase = "Failed"
        e.status.message = "boom"

    record_store.mutate(Evaluation, "acme", "e1", fail)
    again, outcome = record_store.create(factories.evaluation("e1"))
    assert outcome == "restarted"
    assert again.metadata.uid == first.metadata.uid
    assert again.metadata.generation == first.metadata.generation + 1
    assert again.status.phase is None and again.status.message is None


def test_stale_update_is_refused_not_lost(record_store: RecordStore) -> None:
    created, _ = record_store.create(factories.model("m1"))
    a = record_store.get(Model, "acme", "m1")
    b = record_store.get(Model, "acme", "m1")
    a.status.phase = "Packaging"
    a = record_store.update(a)
    assert a.metadata.resource_version != created.metadata.resource_version
    b.status.phase = "Failed"
    with pytest.raises(Conflict) as exc:
        record_store.update(b)
    assert exc.value.field == "metadata.resourceVersion"
    assert record_store.get(Model, "acme", "m1").status.phase == "Packaging"


def test_spec_change_bumps_generation_status_change_does_not(record_store: RecordStore) -> None:
    record_store.create(factories.evaluation("e1"))
    e = record_store.get(Evaluation, "acme", "e1")
    e.status.phase = "Running"
    e = record_store.update(e)
    assert e.metadata.generation == 1
    e.spec.inference.top_k = 3
    e = record_store.update(e)
    assert e.metadata.generation == 2


def test_immutable_fields_cannot_change(record_store: RecordStore) -> None:
    record_store.create(factories.evaluation("e1"))
    e = record_store.get(Evaluation, "acme", "e1")
    e.spec.model.name = "other"
    with pytest.raises(Invalid, match="model is immutable"):
        record_store.update(e)
    m, _ = record_store.create(factories.model("m1"))
    m.spec.source.upload = None
    m.spec.source.uri = UriSource(uri="gs://b/x", sha256="0" * 64)
    with pytest.raises(Invalid, match="source is immutable"):
        record_store.update(m)


def test_accounts_are_isolated(record_store: RecordStore) -> None:
    record_store.create(factories.model("shared-name", account="acme"))
    record_store.create(factories.model("shared-name", account="globex"))
    record_store.create(factories.model("only-globex", account="globex"))
    names = [m.name for m in record_store.list(Model, "acme").items]
    assert names == ["shared-name"]
    assert all(m.account == "acme" for m in record_store.list(Model, "acme").items)
    with pytest.raises(NotFound):
        record_store.get(Model, "acme", "only-globex")
    with pytest.raises(NotFound):
        record_store.delete(Model, "acme", "only-globex")
    assert record_store.get(Model, "globex", "only-globex").account == "globex"


def test_kinds_are_isolated(record_store: RecordStore) -> None:
    record_store.create(factories.model("x"))
    assert record_store.list(Dataset, "acme").items == []
    with pytest.raises(NotFound):
        record_store.get(Dataset, "acme", "x")


def test_filtered_paginated_listing(record_store: RecordStore) -> None:
    for i in range(7):
        labels = {"team": "a" if i % 2 == 0 else "b", "tier": "gold" if i < 3 else "silver"}
        record_store.create(factories.model(f"m{i}", labels=labels))
    for name in ("m0", "m1"):
        record_store.mutate(Model, "acme", name, lambda m: setattr(m.status, "phase", "Ready"))

    seen, token, pages = [], None, 0
    while True:
        page = record_store.list(Model, "acme", limit=3, page_token=token)
        seen += [m.name for m in page.items]
        pages += 1
        token = page.next_page_token
        if token is None:
            break
    assert seen == [f"m{i}" for i in range(7)] and pages == 3

    ready = record_store.list(Model, "acme", phase="Ready")
    assert [m.name for m in ready.items] == ["m0", "m1"]
    team_a = record_store.list(Model, "acme", labels={"team": "a"})
    assert [m.name for m in team_a.items] == ["m0", "m2", "m4", "m6"]
    both = record_store.list(Model, "acme", labels={"team": "a", "tier": "gold"})
    assert [m.name for m in both.items] == ["m0", "m2"]
    combined = record_store.list(Model, "acme", labels={"team": "b"}, phase="Ready")
    assert [m.name for m in combined.items] == ["m1"]
    prefixed = record_store.list(Model, "acme", name_prefix="m1")
    assert [m.name for m in prefixed.items] == ["m1"]
    assert len(record_store.list_all(Model, "acme", labels={"tier": "silver"})) == 4


def test_bad_page_token_and_limit_are_invalid(record_store: RecordStore) -> None:
    with pytest.raises(Invalid) as exc:
        record_store.list(Model, "acme", page_token="%%%")
    assert exc.value.field == "pageToken"
    with pytest.raises(Invalid) as exc:
        record_store.list(Model, "acme", limit=0)
    assert exc.value.field == "limit"


def test_delete(record_store: RecordStore) -> None:
    created, _ = record_store.create(factories.model("m1"))
    with pytest.raises(Conflict):
        record_store.delete(Model, "acme", "m1", resource_version="999")
    record_store.delete(Model, "acme", "m1", resource_version=created.metadata.resource_version)
    with pytest.raises(NotFound):
        record_store.get(Model, "acme", "m1")
    with pytest.raises(NotFound):
        record_store.delete(Model, "acme", "m1")
    assert record_store.create(factories.model("m1"))[1] == "created"


def test_invalid_record_is_never_written_and_names_the_field(record_store: RecordStore) -> None:
    bad = factories.model("m1")
    # Bypass validation on assignment, as a buggy caller could.
    bad.spec.source.upload.sha256 = "not-a-sha"  # type: ignore[union-attr]
    with pytest.raises(Invalid) as exc:
        record_store.create(bad)
    assert exc.value.field == "spec.source.upload.sha256"
    assert record_store.find(Model, "acme", "m1") is None

    good, _ = record_store.create(factories.model("m2"))
    good.status.observed_generation = -1
    with pytest.raises(Invalid) as exc:
        record_store.update(good)
    assert exc.value.field == "status.observedGeneration"
    assert record_store.get(Model, "acme", "m2").status.observed_generation == 0


def test_hundred_concurrent_creates_yield_exactly_one_record(record_store: RecordStore) -> None:
    def attempt(_: int) -> str:
        try:
            return record_store.create(factories.evaluation("race"))[1]
        except AlreadyExists:
            return "refused"

    with ThreadPoolExecutor(max_workers=100) as pool:
        outcomes = list(pool.map(attempt, range(100)))
    assert outcomes.count("created") == 1, outcomes
    assert outcomes.count("refused") == 99
    assert [e.name for e in record_store.list(Evaluation, "acme").items] == ["race"]
    assert record_store.get(Evaluation, "acme", "race").metadata.generation == 1


def test_concurrent_mutations_lose_no_write(record_store: RecordStore) -> None:
    record_store.create(factories.model("m1"))

    def add_label(i: int) -> None:
        record_store.mutate(Model, "acme", "m1", lambda m: m.metadata.labels.update({f"k{i}": "v"}))

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(add_label, range(20)))
    assert len(record_store.get(Model, "acme", "m1").metadata.labels) == 20


def test_scan_sees_every_account_for_controllers(record_store: RecordStore) -> None:
    record_store.create(factories.model("a", account="acme"))
    record_store.create(factories.model("b", account="globex"))
    record_store.create(factories.dataset("c", account="acme"))
    found = {(m.account, m.name) for m in record_store.scan(Model)}
    assert found == {("acme", "a"), ("globex", "b")}


# ------------------------------------------------------------------ change feed


def test_change_feed_pages_through_writes_in_write_order(record_store: RecordStore) -> None:
    from dyff.stores.records import ChangeFeed

    record_store.create(factories.model("a", account="acme"))
    record_store.create(factories.model("b", account="globex"))
    record_store.create(factories.dataset("not-a-model"))
    record_store.create(factories.model("c", account="acme"))
    record_store.mutate(Model, "acme", "a", lambda m: setattr(m.status, "phase", "Ready"))

    feed = ChangeFeed(record_store, Model, page=2)  # page=2: paging is exercised
    found = feed.poll()
    assert [(m.name, m.status.phase) for m in found] == [("b", None), ("c", None), ("a", "Ready")]
    current = record_store.get(Model, "acme", "a")
    assert found[-1].metadata.resource_version == current.metadata.resource_version
    cursor = feed.cursor
    assert cursor > 0
    assert feed.poll() == [] and feed.cursor == cursor


def test_change_feed_returns_each_version_once(record_store: RecordStore) -> None:
    from dyff.stores.records import ChangeFeed

    record_store.create(factories.evaluation("e1"))
    record_store.create(factories.evaluation("e2", account="globex"))
    feed = ChangeFeed(record_store, Evaluation, page=1)  # page=1: paging is exercised
    assert {(e.account, e.name) for e in feed.poll()} == {("acme", "e1"), ("globex", "e2")}
    assert feed.poll() == []  # the overlap window is read again, but nothing is new

    record_store.mutate(Evaluation, "acme", "e1", lambda e: setattr(e.status, "phase", "Running"))
    changed = feed.poll()
    assert [(e.name, e.status.phase) for e in changed] == [("e1", "Running")]
    assert feed.poll() == []

    # Deleted and created again: a new uid, so it is news even at version 1.
    record_store.delete(Evaluation, "globex", "e2")
    record_store.create(factories.evaluation("e2", account="globex"))
    again = feed.poll()
    assert [(e.name, e.metadata.resource_version) for e in again] == [("e2", "1")]


def test_change_feed_sees_every_write_under_concurrency(record_store: RecordStore) -> None:
    from dyff.stores.records import ChangeFeed

    feed = ChangeFeed(record_store, Model)
    seen: dict[str, str | None] = {}

    def write(i: int) -> None:
        record_store.create(factories.model(f"m{i}"))
        record_store.mutate(Model, "acme", f"m{i}", lambda m: setattr(m.status, "phase", "Ready"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(write, i) for i in range(16)]
        while not all(f.done() for f in futures):
            seen.update({m.name: m.status.phase for m in feed.poll()})
        for f in futures:
            f.result()
    seen.update({m.name: m.status.phase for m in feed.poll()})
    assert seen == {f"m{i}": "Ready" for i in range(16)}


def test_sqlite_file_from_before_the_feed_is_migrated(tmp_path: Path) -> None:
    """A records.db written before the change feed: its records get positions on open."""
    import json
    import sqlite3

    from dyff.stores.records import ChangeFeed
    from dyff.stores.sqlite import SqliteRecordStore

    path = tmp_path / "records.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE records (kind TEXT NOT NULL, account TEXT NOT NULL, name TEXT NOT NULL,"
            " version INTEGER NOT NULL, phase TEXT, labels TEXT NOT NULL, body TEXT NOT NULL,"
            " PRIMARY KEY (kind, account, name)) WITHOUT ROWID"
        )
        for name in ("old1", "old2"):
            doc = factories.model(name).wire()
            conn.execute(
                "INSERT INTO records VALUES ('Model', 'acme', ?, 1, NULL, '[]', ?)",
                (name, json.dumps(doc)),
            )
    store = SqliteRecordStore(path)
    feed = ChangeFeed(store, Model)
    assert sorted(m.name for m in feed.poll()) == ["old1", "old2"]
    store.create(factories.model("new"))
    assert [m.name for m in feed.poll()] == ["new"]
    store.close()


def test_mark_deleting_marks_once(record_store: RecordStore) -> None:
    record_store.create(factories.model("m1"))
    first = record_store.mark_deleting(Model, "acme", "m1")
    assert first.metadata.deletion_timestamp is not None
    again = record_store.mark_deleting(Model, "acme", "m1")
    assert again.metadata.deletion_timestamp == first.metadata.deletion_timestamp
    assert record_store.get(Model, "acme", "m1").metadata.deletion_timestamp is not None
    with pytest.raises(NotFound):
        record_store.mark_deleting(Model, "acme", "nothing")
