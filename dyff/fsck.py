"""`dyff admin fsck`: find what the stores hold that belongs to nothing, and remove it.

Run against the stores directly, like `dyff admin bootstrap`. What counts as an orphan:

- records: models, datasets and evaluations, API keys and idempotency records of an
  account whose record is gone; upload tickets whose entity is gone (or is another
  entity made again under its name); Idempotency-Keys older than their 24 h;
- work: work folders (one machine) and Jobs (a cluster) of entities that are gone;
- blobs: anything under an account that is gone; uploads of an entity that is gone or
  declared other bytes; an evaluation's results without its record (name and uid);
  bentos, shard lists, shards, shards' attribute files and cached predictions that no
  model (digest), dataset (shard list) or evaluation (manifest) of the account refers to.

An account with a model, dataset or evaluation at work (packaging, ingesting, running)
is skipped for the content-addressed blobs (bentos, shards, predictions): its workload
writes them before its record names them. `fix` deletes orphaned records and blobs,
except entities (models, datasets, evaluations), which it marks deleting so the
controller stops their work and deletes their bytes as for any deletion.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dyff import layout, shard_lists, uploads
from dyff.errors import NotFound
from dyff.lifecycle import DatasetPhase, EvaluationPhase, ModelPhase
from dyff.schema import (
    IDEMPOTENCY_TTL,
    RESOURCE_TYPES,
    Account,
    ApiKey,
    Dataset,
    Entity,
    Evaluation,
    IdempotencyRecord,
    Model,
    UploadTicket,
    entity_type,
    utcnow,
)
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

WORKING = {ModelPhase.PACKAGING, DatasetPhase.INGESTING, EvaluationPhase.RUNNING}


class Workplace(Protocol):
    """Where work runs outside the stores (controller/workplaces.py): its keys are
    (kind, account, name); `stop` ends that work and removes what it left."""

    what: str

    def work_keys(self) -> list[tuple[str, str, str]]: ...

    def stop(self, key: tuple[str, str, str]) -> None: ...


@dataclass(frozen=True)
class Orphan:
    store: str  # "records", "blobs" or "work"
    kind: str  # a record kind, or "blob"
    account: str
    name: str  # the record's name or the blob's key
    reason: str


def find_orphans(
    records: RecordStore, blobs: BlobStore, workplaces: Sequence[Workplace] = ()
) -> list[Orphan]:
    accounts = {a.name for a in records.scan(Account)}
    entities: dict[type[Entity], list[Entity]] = {k: list(records.scan(k)) for k in RESOURCE_TYPES}
    out: list[Orphan] = []

    kinds: tuple[type[Entity], ...] = (*RESOURCE_TYPES, ApiKey, IdempotencyRecord)
    for kind in kinds:
        found = entities[kind] if kind in entities else records.scan(kind)
        for e in found:
            # An entity marked deleting is already on its way out (the controller's).
            if e.account not in accounts and e.metadata.deletion_timestamp is None:
                out.append(Orphan("records", kind.kind_name, e.account, e.name, "account gone"))

    expired_before = utcnow() - IDEMPOTENCY_TTL
    for record in records.scan(IdempotencyRecord):
        created = record.metadata.creation_timestamp
        if record.account in accounts and created is not None and created < expired_before:
            old = f"Idempotency-Key older than {IDEMPOTENCY_TTL}"
            out.append(Orphan("records", "Idempotency", record.account, record.name, old))

    by_key = {(type(e).kind_name, e.account, e.name): e for es in entities.values() for e in es}
    for place in workplaces:
        for kind_name, account, name in place.work_keys():
            if (kind_name, account, name) not in by_key:
                gone = f"work of {kind_name} {name!r}, gone"
                out.append(Orphan("work", place.what, account, f"{kind_name}/{name}", gone))
    for ticket in records.scan(UploadTicket):
        owner = by_key.get((ticket.spec.target_kind, ticket.account, ticket.spec.target_name))
        assert owner is None or isinstance(owner, Model | Dataset)
        if owner is None or uploads.ticket_name(owner) != ticket.name:
            reason = f"ticket of {ticket.spec.target_kind} {ticket.spec.target_name!r}, gone"
            out.append(Orphan("records", "UploadTicket", ticket.account, ticket.name, reason))

    busy = {e.account for es in entities.values() for e in es if e.phase in WORKING}
    models = [m for m in entities[Model] if isinstance(m, Model)]
    datasets = [d for d in entities[Dataset] if isinstance(d, Dataset)]
    evaluations = [e for e in entities[Evaluation] if isinstance(e, Evaluation)]
    named = Named(
        bentos={(m.account, m.status.digest) for m in models if m.status.digest},
        evaluations={(e.account, e.name, e.metadata.uid) for e in evaluations},
    )
    for d in datasets:
        if d.status.shard_list is not None:
            named.shard_lists.add((d.account, d.status.shard_list.sha256))
        for s in shard_lists.listed_shards(blobs, [d]):
            named.shards.add((d.account, s.sha256))
            if s.attributes:
                named.attributes.add((d.account, s.sha256, s.attributes))
    manifests: set[str] = set()
    for ev in evaluations:
        manifest = layout.manifest_key(ev.account, ev.name, ev.metadata.uid or "")
        with contextlib.suppress(NotFound, ValueError):
            manifests.update(layout.manifest_files(json.loads(blobs.get(manifest))))

    for info in blobs.list("accounts/"):
        parts = info.key.split("/")
        account = parts[1] if len(parts) > 1 else ""
        why = _blob_reason(parts, account, accounts, busy, by_key, named)
        if why and info.key not in manifests:
            out.append(Orphan("blobs", "blob", account, info.key, why))
    return out


@dataclass
class Named:
    """What the records name, by account: the blobs to keep."""

    bentos: set[tuple[str, str]] = field(default_factory=set)  # (account, digest)
    evaluations: set[tuple[str, str, str | None]] = field(default_factory=set)  # +name, uid
    shard_lists: set[tuple[str, str]] = field(default_factory=set)  # (account, sha256)
    shards: set[tuple[str, str]] = field(default_factory=set)  # (account, sha256)
    attributes: set[tuple[str, str, str]] = field(default_factory=set)  # +shard, own sha256


def _blob_reason(
    parts: list[str],
    account: str,
    accounts: set[str],
    busy: set[str],
    by_key: dict[tuple[str, str, str], Entity],
    named: Named,
) -> str | None:
    if account not in accounts:
        return "account gone"
    area = parts[2] if len(parts) > 2 else ""
    if area == "uploads" and len(parts) == 6:
        kind = {"models": "Model", "datasets": "Dataset"}.get(parts[3], "")
        owner = by_key.get((kind, account, parts[4]))
        source = getattr(getattr(getattr(owner, "spec", None), "source", None), "upload", None)
        if source is None or source.sha256 != parts[5]:
            return f"upload of {kind or parts[3]} {parts[4]!r}, gone"
        return None
    if area == "evaluations" and len(parts) >= 5:
        if (account, parts[3], parts[4]) not in named.evaluations:
            return f"results of evaluation {parts[3]!r}, gone"
        return None
    if account in busy:
        return None  # a workload may be writing what its record does not name yet
    if area == "bentos" and len(parts) == 4:
        digest = parts[3].removesuffix(".bento")
        return None if (account, digest) in named.bentos else "bento of no model"
    if area == "shard-lists" and len(parts) == 4:
        sha = parts[3].removesuffix(".json")
        return None if (account, sha) in named.shard_lists else "shard list of no dataset"
    if area == "shards" and len(parts) == 4:
        sha = parts[3].removesuffix(".parquet")
        return None if (account, sha) in named.shards else "shard of no dataset"
    if area == "attributes" and len(parts) == 5:
        listed = (account, parts[3], parts[4].removesuffix(".parquet"))
        return None if listed in named.attributes else "attributes of no dataset"
    if area == "predictions" and len(parts) == 6:
        if (account, parts[3]) not in named.bentos:
            return "predictions of a model gone"
        if (account, parts[5].removesuffix(".parquet")) not in named.shards:
            return "predictions of a dataset gone"
    return None


def fix(
    records: RecordStore,
    blobs: BlobStore,
    orphans: list[Orphan],
    workplaces: Sequence[Workplace] = (),
) -> int:
    """Remove the orphans (entities: mark them deleting); returns how many were handled."""
    places = {p.what: p for p in workplaces}
    done = 0
    for o in orphans:
        with contextlib.suppress(NotFound):
            if o.store == "work":
                kind_name, name = o.name.split("/", 1)
                places[o.kind].stop((kind_name, o.account, name))
                done += 1
                continue
            if o.store == "blobs":
                done += blobs.delete(o.name)
                continue
            kind = entity_type(o.kind)
            if kind in RESOURCE_TYPES:
                records.mark_deleting(kind, o.account, o.name)
            else:
                records.delete(kind, o.account, o.name)
            done += 1
    return done
