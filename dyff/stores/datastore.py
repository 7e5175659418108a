"""Record store backend: Google Cloud Datastore (`datastore://PROJECT[?namespace=&database=]`).

Each record is an entity whose key is `Tenant(account) / Kind(name)`: the
account is the ancestor, so every query is an ancestor query (strongly
consistent, and unable to reach another account). The document is kept as
unindexed JSON; `phase`, `labels` (as `key=value` strings) and `version` are
indexed beside it. The composite indexes the queries need are listed in
`config/datastore/index.yaml`.

The change feed orders records by `updated`, the writer's clock (ns) when it wrote:
an inequality and an order on that one property use its built-in index. Clocks
differ and commits land late, so feeds re-read `FEED_OVERLAP_NS` (ChangeFeed), the
recent `FEED_RECENT_OVERLAP_NS` of it on every poll.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore import helpers
from google.cloud.datastore.query import PropertyFilter
from google.cloud.datastore_v1.types import entity as entity_pb2
from google.cloud.datastore_v1.types import query as query_pb2
from google.cloud.datastore_v1.types.datastore import CommitRequest

from dyff.stores.records import (
    DELETE,
    Query,
    RecordStore,
    StoredDoc,
    TxResult,
    label_pairs,
    phase_of,
)

TENANT = "Tenant"
# Contention shows up as ABORTED on Datastore; some emulator versions say UNKNOWN
# or answer 409 CONFLICT ("too much contention").
RETRYABLE = (
    gexc.Aborted,
    gexc.Conflict,
    gexc.Unknown,
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
)
# Writers' clock skew plus the longest commit we expect to be late by: re-read whole
# every FEED_OVERLAP_EVERY_S; the polls between re-read what an ordinary commit is late
# by. (Re-reading 2 s of writes four times a second read each index entry 8 times: at
# 200 writes/s, 400 entries per poll, most of a poll's time.)
FEED_OVERLAP_NS = 2_000_000_000
FEED_RECENT_OVERLAP_NS = 500_000_000
FEED_OVERLAP_EVERY_S = 1.0
MAX_ATTEMPTS = 60
MAX_BACKOFF_S = 1.0
# The property the change feed orders by: the writer's clock (ns) at its write.
UPDATED = "updated"
NOT_FINISHED = query_pb2.QueryResultBatch.MoreResultsType.NOT_FINISHED


T = TypeVar("T")


def retry_on_contention(attempt: Callable[[], T]) -> T:
    """Run a transaction, again with a fresh one when Datastore reports contention,
    after a jittered exponential backoff; bounded, so a hot key fails rather than hangs."""
    for n in range(MAX_ATTEMPTS):
        try:
            return attempt()
        except RETRYABLE:
            if n == MAX_ATTEMPTS - 1:
                raise
            # Full jitter: contenders spread out instead of colliding again.
            time.sleep(random.uniform(0, min(MAX_BACKOFF_S, 0.01 * 2**n)))
    raise AssertionError("unreachable")


class DatastoreRecordStore(RecordStore):
    feed_overlap = FEED_OVERLAP_NS
    feed_recent_overlap = FEED_RECENT_OVERLAP_NS
    feed_overlap_every_s = FEED_OVERLAP_EVERY_S

    def __init__(
        self,
        project: str,
        *,
        namespace: str | None = None,
        database: str | None = None,
        client: datastore.Client | None = None,
    ) -> None:
        self.project = project
        self.namespace = namespace
        self.url = f"datastore://{project}" + (f"?namespace={namespace}" if namespace else "")
        kwargs: dict[str, Any] = {"project": project, "namespace": namespace}
        if database:
            kwargs["database"] = database
        self.client = client or datastore.Client(**kwargs)

    def _key(self, kind: str, account: str, name: str) -> datastore.Key:
        return self.client.key(TENANT, account, kind, name)

    @staticmethod
    def _stored(entity: datastore.Entity | None) -> StoredDoc | None:
        if entity is None:
            return None
        return StoredDoc(json.loads(entity["body"]), int(entity["version"]))

    def _transact(
        self, kind: str, account: str, name: str, body: Callable[[StoredDoc | None], TxResult]
    ) -> StoredDoc | None:
        key = self._key(kind, account, name)

        def attempt() -> StoredDoc | None:
            # begin_later: the transaction begins with its first read (one round trip
            # fewer than BeginTransaction, then Lookup, then Commit).
            with self.client.transaction(begin_later=True) as tx:
                current = self._stored(self.client.get(key, transaction=tx))
                result = body(current)
                if result is None:
                    return current
                if result is DELETE:
                    tx.delete(key)
                    return None
                assert isinstance(result, dict)
                version = (current.version if current else 0) + 1
                tx.put(self._entity(key, result, version))
            return StoredDoc(result, version)

        return retry_on_contention(attempt)

    def _insert(self, kind: str, account: str, name: str, doc: dict[str, Any]) -> StoredDoc | None:
        """One commit with an `insert` mutation in a single-use transaction: it fails if
        the key exists, so no read is needed and concurrent creates in one account (one
        entity group) do not invalidate each other's reads."""
        key = self._key(kind, account, name)

        def attempt() -> StoredDoc | None:
            # Built per attempt, so a retried insert is stamped (`updated`) when it is sent.
            entity = self._entity(key, doc, 1)
            request: dict[str, Any] = {
                "project_id": self.client.project,
                "database_id": self.client.database or "",
                "mode": CommitRequest.Mode.TRANSACTIONAL,
                "single_use_transaction": {"read_write": {}},
                "mutations": [{"insert": helpers.entity_to_protobuf(entity)._pb}],
            }
            try:
                self.client._datastore_api.commit(request=request)
            except gexc.AlreadyExists:
                return None
            return StoredDoc(doc, 1)

        return retry_on_contention(attempt)

    @staticmethod
    def _entity(key: datastore.Key, doc: dict[str, Any], version: int) -> datastore.Entity:
        entity = datastore.Entity(key=key, exclude_from_indexes=("body",))
        entity.update(
            {
                "body": json.dumps(doc),
                "version": version,
                "phase": phase_of(doc),
                "labels": label_pairs(doc.get("metadata", {}).get("labels", {})),
                # Taken per attempt: a retried transaction is stamped when it is retried.
                "updated": time.time_ns(),
            }
        )
        return entity

    def _read(self, kind: str, account: str, name: str) -> StoredDoc | None:
        return self._stored(self.client.get(self._key(kind, account, name)))

    def _read_many(self, keys: list[tuple[str, str, str]]) -> list[StoredDoc | None]:
        ds_keys = [self._key(*key) for key in keys]
        found = {e.key: e for e in self.client.get_multi(ds_keys)}
        return [self._stored(found.get(k)) for k in ds_keys]

    def _scan(self, kind: str) -> list[StoredDoc]:
        # Not an ancestor query: eventually consistent in production, which a level-based
        # controller tolerates (the next pass sees what this one missed).
        out = []
        for entity in self.client.query(kind=kind).fetch():
            stored = self._stored(entity)
            assert stored is not None
            out.append(stored)
        return out

    def _changed_heads(self, kind: str, position: int, limit: int) -> list[tuple[int, str, str]]:
        # Across accounts, like _scan. A projection on `updated` with an inequality and
        # an order on it too reads only that property's built-in index: no composite
        # index, and no document bodies. Every poll re-reads the feed's overlap (seconds
        # of writes: hundreds of heads at a hundred writes a second), so the answer is
        # read straight from the protobuf: the client's Entity and Key objects cost the
        # controller 25-60 ms of CPU per 500 heads (under 5 ms this way).
        query = query_pb2.Query(
            kind=[query_pb2.KindExpression(name=kind)],
            projection=[query_pb2.Projection(property=query_pb2.PropertyReference(name=UPDATED))],
            filter=query_pb2.Filter(
                property_filter=query_pb2.PropertyFilter(
                    property=query_pb2.PropertyReference(name=UPDATED),
                    op=query_pb2.PropertyFilter.Operator.GREATER_THAN,
                    value=entity_pb2.Value(integer_value=position),
                )
            ),
            order=[
                query_pb2.PropertyOrder(
                    property=query_pb2.PropertyReference(name=UPDATED),
                    direction=query_pb2.PropertyOrder.Direction.ASCENDING,
                )
            ],
        )
        partition = entity_pb2.PartitionId(
            project_id=self.client.project,
            database_id=self.client.database or "",
            namespace_id=self.client.namespace or "",
        )
        out: list[tuple[int, str, str]] = []
        while True:
            query.limit = limit - len(out)
            request: dict[str, Any] = {
                "project_id": self.client.project,
                "partition_id": partition,
                "query": query,
            }
            helpers.set_database_id_to_request(request, self.client.database)
            batch = self.client._datastore_api.run_query(request=request)._pb.batch
            for result in batch.entity_results:
                path = result.entity.key.path
                updated = result.entity.properties[UPDATED].integer_value
                out.append((updated, path[0].name, path[-1].name))
            if batch.more_results != NOT_FINISHED or len(out) >= limit:
                return out
            query.start_cursor = batch.end_cursor

    def _query(self, query: Query) -> list[StoredDoc]:
        parent = self.client.key(TENANT, query.account)
        q = self.client.query(kind=query.kind, ancestor=parent)
        if query.phase is not None:
            q.add_filter(filter=PropertyFilter("phase", "=", query.phase))
        for pair in label_pairs(query.labels):
            q.add_filter(filter=PropertyFilter("labels", "=", pair))
        if query.name_prefix:
            q.add_filter(
                filter=PropertyFilter(
                    "__key__", ">=", self._key(query.kind, query.account, query.name_prefix)
                )
            )
            q.add_filter(
                filter=PropertyFilter(
                    "__key__",
                    "<",
                    self._key(query.kind, query.account, query.name_prefix + "\uffff"),
                )
            )
        if query.after_name is not None:
            q.add_filter(
                filter=PropertyFilter(
                    "__key__", ">", self._key(query.kind, query.account, query.after_name)
                )
            )
        q.order = ["__key__"]
        out = []
        for entity in q.fetch(limit=query.limit):
            stored = self._stored(entity)
            assert stored is not None
            out.append(stored)
        return out

    def close(self) -> None:
        self.client.close()
