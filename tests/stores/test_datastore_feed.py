"""Datastore's change-feed index read (`_changed_heads`), against the emulator: what the
client library's query would return, read from the protobuf, page after page."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dyff import emulators
from dyff.schema import Evaluation
from dyff.stores.records import ChangeFeed
from tests import factories

pytestmark = pytest.mark.usefixtures("datastore_emulator")


@pytest.fixture
def store() -> Iterator[Any]:
    from dyff.stores.datastore import DatastoreRecordStore

    store = DatastoreRecordStore("dyff-test", namespace=f"t{uuid.uuid4().hex}")
    yield store
    store.close()


def library_heads(store: Any, kind: str, position: int, limit: int) -> list[tuple[int, str, str]]:
    """The same read through the client library's Query (Entity and Key objects)."""
    from google.cloud.datastore.query import PropertyFilter

    q = store.client.query(kind=kind, projection=["updated"])
    q.add_filter(filter=PropertyFilter("updated", ">", position))
    q.order = ["updated"]
    return [
        (int(e["updated"]), str(e.key.parent.name), str(e.key.name)) for e in q.fetch(limit=limit)
    ]


def test_heads_are_what_the_library_query_returns(store: Any) -> None:
    assert emulators.datastore_emulator_missing() is None
    for i in range(12):
        store.create(factories.evaluation(f"e{i}", account=f"a{i % 3}"))
    store.create(factories.model("m1"))  # another kind: not in the Evaluation feed
    heads = store._changed_heads("Evaluation", 0, 100)
    assert len(heads) == 12
    assert heads == library_heads(store, "Evaluation", 0, 100)
    assert [h[0] for h in heads] == sorted(h[0] for h in heads)
    assert {(a, n) for _, a, n in heads} == {(f"a{i % 3}", f"e{i}") for i in range(12)}
    # After a position, and up to a limit.
    assert store._changed_heads("Evaluation", heads[4][0], 5) == heads[5:10]
    assert store._changed_heads("Evaluation", heads[-1][0], 100) == []


def test_heads_beyond_one_batch_are_read_page_after_page(store: Any) -> None:
    """The emulator (and Datastore) answers a query in batches: NOT_FINISHED, then the
    next batch from its end cursor, until the limit."""
    from google.cloud.datastore_v1.types import query as query_pb2

    api = store.client._datastore_api
    original = api.run_query
    batches: list[int] = []

    def small_batches(request: dict[str, Any], **kwargs: Any) -> Any:
        asked = request["query"].limit
        request["query"].limit = min(asked, 4)  # as if the server cut the batch at 4
        response = original(request=request, **kwargs)
        batch = response._pb.batch
        batches.append(len(batch.entity_results))
        if len(batch.entity_results) == 4 and asked > 4:
            batch.more_results = query_pb2.QueryResultBatch.MoreResultsType.NOT_FINISHED
        return response

    for i in range(10):
        store.create(factories.evaluation(f"e{i}"))
    expected = library_heads(store, "Evaluation", 0, 100)
    api.run_query = small_batches
    try:
        assert store._changed_heads("Evaluation", 0, 100) == expected
        assert batches == [4, 4, 2]
        batches.clear()
        assert store._changed_heads("Evaluation", 0, 6) == expected[:6]
        assert batches == [4, 2]
    finally:
        api.run_query = original

    feed = ChangeFeed(store, Evaluation, page=3)
    assert [e.name for e in feed.poll()] == [n for _, _, n in expected]
