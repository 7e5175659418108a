"""Deleting an object deletes every stored byte it owns, and no byte another object
of the account still uses (packages, shards and prediction caches are shared by
content)."""

from __future__ import annotations

import contextlib
import json

from dyff import layout, shard_lists, uploads
from dyff.errors import DyffError, NotFound
from dyff.lifecycle import EVALUATION
from dyff.schema import Dataset, Entity, Evaluation, Model, UploadTicket
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore


def _uploads_prefix(entity: Entity) -> str:
    return f"{layout.account_prefix(entity.account)}/uploads/{entity.kind.lower()}s/{entity.name}/"


def _predictions_prefix(account: str) -> str:
    return f"{layout.account_prefix(account)}/predictions/"


def _manifest_files(blobs: BlobStore, evaluation: Evaluation) -> set[str]:
    key = layout.manifest_key(evaluation.account, evaluation.name, evaluation.metadata.uid or "")
    try:
        return layout.manifest_files(json.loads(blobs.get(key)))
    except NotFound:
        return set()


def _planned_files(records: RecordStore, blobs: BlobStore, evaluation: Evaluation) -> set[str]:
    """The prediction files an unfinished evaluation will list in its manifest (it writes
    the manifest only when it completes, and may already be reusing them)."""
    if evaluation.status.phase in EVALUATION.final or evaluation.metadata.deletion_timestamp:
        return set()
    from dyff.evaluation import resolve  # polars/pyarrow: only when an evaluation is deleted

    try:
        inputs = resolve(records, blobs, evaluation)
    except DyffError:  # its model or dataset is not there or not Ready: it reuses nothing
        return set()
    from dyff.evaluation import CLEAN, perturbed_variants

    variants = [CLEAN, *perturbed_variants(evaluation)]
    return {inputs.prediction_key(shard, v) for v in variants for shard in inputs.shards}


def cleanup(records: RecordStore, blobs: BlobStore, entity: Entity) -> int:
    """Delete what `entity` owns (its upload tickets included); returns how many objects
    were deleted."""
    account = entity.account
    deleted = 0
    if isinstance(entity, Model | Dataset):
        # Tickets first, so no upload starts while the uploads are deleted (one already
        # running checks its entity again after storing and removes what it stored).
        for ticket in uploads.tickets_of(records, entity):
            with contextlib.suppress(NotFound):
                records.delete(UploadTicket, account, ticket.name)
                deleted += 1
    deleted += blobs.delete_prefix(_uploads_prefix(entity))
    if isinstance(entity, Model):
        digest = entity.status.digest
        others = {
            m.status.digest for m in records.list_all(Model, account) if m.name != entity.name
        }
        if digest and digest not in others:
            deleted += blobs.delete(layout.bento_key(account, digest))
            deleted += blobs.delete_prefix(f"{_predictions_prefix(account)}{digest}")
    elif isinstance(entity, Dataset):
        datasets = [d for d in records.list_all(Dataset, account) if d.name != entity.name]
        own_shards = shard_lists.listed_shards(blobs, [entity])
        theirs = shard_lists.listed_shards(blobs, datasets)
        mine = {s.sha256 for s in own_shards}
        used = {s.sha256 for s in theirs}
        for sha in mine - used:
            deleted += blobs.delete(layout.shard_key(account, sha))
        # Attribute files are per (shard, content): another dataset may share the shard
        # with other metadata, or the same file.
        attributes = {(s.sha256, s.attributes) for s in own_shards if s.attributes}
        kept = {(s.sha256, s.attributes) for s in theirs}
        for sha, attrs in attributes - kept:
            deleted += blobs.delete(layout.attributes_key(account, sha, attrs))
        listed = entity.status.shard_list
        if listed and all(d.status.shard_list != listed for d in datasets):
            deleted += blobs.delete(layout.shard_list_key(account, listed.sha256))
        orphans = {f"/{sha}.parquet" for sha in mine - used}
        for info in list(blobs.list(_predictions_prefix(account))):
            if any(info.key.endswith(suffix) for suffix in orphans):
                deleted += blobs.delete(info.key)
    elif isinstance(entity, Evaluation):
        mine = _manifest_files(blobs, entity)
        for other in records.list_all(Evaluation, account):
            if other.name != entity.name:
                mine -= _manifest_files(blobs, other) | _planned_files(records, blobs, other)
        for key in mine:
            deleted += blobs.delete(key)
        deleted += blobs.delete_prefix(
            f"{layout.account_prefix(account)}/evaluations/{entity.name}"
        )
    return deleted
