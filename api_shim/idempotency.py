"""`Idempotency-Key`: a create runs once per key; every retry gets the first answer (the
same status and the same body, upload ticket included).

The key is claimed before anything runs: the first request writes a pending record
(status 0) under the key's hash, runs, and writes its answer into the record. A
concurrent retry that finds the record pending waits for the answer; one that finds it
answered replays it. A request that fails releases its claim, so a retry runs again.
A claim older than `STALE` (its request died) is taken over. An answer is kept for
`IDEMPOTENCY_TTL` (24 h): the key used again after that runs anew.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from dyff.errors import AlreadyExists, Conflict, Invalid, NotFound
from dyff.schema import (
    IDEMPOTENCY_TTL,
    IdempotencyRecord,
    IdempotencySpec,
    ObjectMeta,
    Schema,
    entity_type,
    utcnow,
)
from dyff.stores.records import RecordStore

Answer = tuple[dict[str, Any], int]

PENDING = 0
WAIT_SECONDS = 30.0
STALE = timedelta(minutes=2)


def record_name(key: str) -> str:
    return "i" + hashlib.sha256(key.encode()).hexdigest()[:40]


def idempotent(
    records: RecordStore,
    account: str,
    key: str | None,
    body: Schema,
    kind: str,
    target_name: str,
    create: Callable[[], Answer],
) -> Answer:
    """Run `create` (which returns the answer's body and status) once per Idempotency-Key;
    a retry, concurrent or later, gets the first answer."""
    if key is None:
        return create()
    request_hash = hashlib.sha256(
        json.dumps({"kind": kind, "body": body.wire()}, sort_keys=True).encode()
    ).hexdigest()
    name = record_name(key)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        claim = IdempotencyRecord(
            metadata=ObjectMeta(name=name, namespace=account),
            spec=IdempotencySpec(
                request_hash=request_hash,
                target_kind=kind,
                target_name=target_name,
                status_code=PENDING,
            ),
        )
        try:
            records.create(claim)
            break  # ours: run it
        except AlreadyExists:
            pass
        seen = records.find(IdempotencyRecord, account, name)
        if seen is None:
            continue  # released meanwhile: claim it again
        created = seen.metadata.creation_timestamp
        age = utcnow() - created if created is not None else timedelta(0)
        if age > (STALE if seen.spec.status_code == PENDING else IDEMPOTENCY_TTL):
            # Its request died, or its answer expired: the key is free again.
            with contextlib.suppress(NotFound, Conflict):
                records.delete(
                    IdempotencyRecord,
                    account,
                    name,
                    resource_version=seen.metadata.resource_version,
                )
            continue
        if seen.spec.request_hash != request_hash:
            raise Invalid(
                "Idempotency-Key was used with a different request", field="Idempotency-Key"
            )
        if seen.spec.status_code != PENDING:
            return _replay(records, account, seen)
        if time.monotonic() > deadline:
            raise Conflict(
                "a request with this Idempotency-Key is still running; retry later",
                field="Idempotency-Key",
            )
        time.sleep(0.05)

    try:
        answer, status = create()
    except BaseException:
        with contextlib.suppress(NotFound, Conflict):
            records.delete(IdempotencyRecord, account, name)
        raise

    def answered(record: IdempotencyRecord) -> None:
        record.spec.status_code = status
        record.spec.response = answer

    records.mutate(IdempotencyRecord, account, name, answered)
    return answer, status


def _replay(records: RecordStore, account: str, seen: IdempotencyRecord) -> Answer:
    if seen.spec.response is not None:
        return seen.spec.response, seen.spec.status_code
    # Recorded before answers were kept: the entity as it is now.
    entity = records.get(entity_type(seen.spec.target_kind), account, seen.spec.target_name)
    doc = entity.wire()
    return (doc if seen.spec.target_kind == "Evaluation" else {"item": doc}), seen.spec.status_code
