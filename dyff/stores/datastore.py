"""Record store backend: Google Cloud Datastore (`datastore://PROJECT[?namespace=&database=]`).

Each record is an entity whose key is `Tenant(account) / Kind(name)`: the
account is the ancestor, so every query is an ancestor query (strongly
consistent, and unable to reach another account). The document is kept as
unindexed JSON; `phase`, `labels` (as `key=value` strings) and `version` are
indexed beside it. The composite indexes the queries need are listed in
`config/datastore/index.yaml`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

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
MAX_ATTEMPTS = 60
MAX_BACKOFF_S = 1.0


class DatastoreRecordStore(RecordStore):
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
        for attempt in range(MAX_ATTEMPTS):
            try:
                with self.client.transaction() as tx:
                    current = self._stored(self.client.get(key, transaction=tx))
                    result = body(current)
                    if result is None:
                        return current
                    if result is DELETE:
                        tx.delete(key)
                        return None
                    assert isinstance(result, dict)
                    version = (current.version if current else 0) + 1
                    entity = datastore.Entity(key=key, exclude_from_indexes=("body",))
                    entity.update(
                        {
                            "body": json.dumps(result),
                            "version": version,
                            "phase": phase_of(result),
                            "labels": label_pairs(result.get("metadata", {}).get("labels", {})),
                        }
                    )
                    tx.put(entity)
                return StoredDoc(result, version)
            except RETRYABLE:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
                # Full jitter: contenders spread out instead of colliding again.
                time.sleep(random.uniform(0, min(MAX_BACKOFF_S, 0.01 * 2**attempt)))
        raise AssertionError("unreachable")

    def _read(self, kind: str, account: str, name: str) -> StoredDoc | None:
        return self._stored(self.client.get(self._key(kind, account, name)))

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
