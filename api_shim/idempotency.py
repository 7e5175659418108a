"""`Idempotency-Key`: a create runs once per key; a retry gets the first answer."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from typing import TypeVar

from dyff.errors import AlreadyExists, Invalid
from dyff.schema import Entity, IdempotencyRecord, IdempotencySpec, ObjectMeta, Schema
from dyff.stores.records import RecordStore

E = TypeVar("E", bound=Entity)


def idempotent(
    records: RecordStore,
    account: str,
    key: str | None,
    body: Schema,
    kind: type[E],
    create: Callable[[], tuple[E, int]],
) -> tuple[E, int]:
    """Run `create` once per Idempotency-Key; a retry gets the first answer."""
    if key is None:
        return create()
    request_hash = hashlib.sha256(
        json.dumps({"kind": kind.kind_name, "body": body.wire()}, sort_keys=True).encode()
    ).hexdigest()
    record_name = "i" + hashlib.sha256(key.encode()).hexdigest()[:40]
    seen = records.find(IdempotencyRecord, account, record_name)
    if seen is not None:
        if seen.spec.request_hash != request_hash:
            raise Invalid(
                "Idempotency-Key was used with a different request", field="Idempotency-Key"
            )
        return records.get(kind, account, seen.spec.target_name), seen.spec.status_code
    entity, status = create()
    with contextlib.suppress(AlreadyExists):  # a concurrent retry recorded the same answer
        records.create(
            IdempotencyRecord(
                metadata=ObjectMeta(name=record_name, namespace=account),
                spec=IdempotencySpec(
                    request_hash=request_hash,
                    target_kind=kind.kind_name,
                    target_name=entity.name,
                    status_code=status,
                ),
            )
        )
    return entity, status
