"""Upload tickets: a URL and a one-time token to upload one declared file.

In production the URL is a GCS V4-signed resumable upload, so large files go
straight to Cloud Storage (Cloud Run caps HTTP/1 request bodies at 32 MiB);
the controller checks the object's sha256 when it ingests it. With the file
backend or a GCS emulator the URL is the shim's own upload endpoint, which
accepts the token once, streams to the blob store and checks size and sha256
before the object appears.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import tempfile
from collections.abc import Iterable
from datetime import timedelta
from typing import Literal

from pydantic import Field

from dyff import layout
from dyff.accounts import Unauthorized, hash_secret
from dyff.errors import AlreadyExists, Conflict, DyffError, NotFound
from dyff.schema import (
    Dataset,
    Entity,
    Model,
    ObjectMeta,
    Schema,
    UploadSource,
    UploadTicket,
    UploadTicketSpec,
    utcnow,
)
from dyff.stores.blobs import BlobInfo, BlobStore
from dyff.stores.records import RecordStore

DEFAULT_TTL = timedelta(hours=1)
SPOOL_IN_MEMORY = 8 * 1024 * 1024


class TooLarge(DyffError):
    status, title = 413, "Payload too large"


class UploadInfo(Schema):
    """Where and how to upload the declared file."""

    method: Literal["PUT", "POST"] = Field(description="HTTP method to use.")
    url: str = Field(description="Upload URL.")
    token: str | None = Field(
        default=None, description="Send as the X-Dyff-Upload-Token header; valid once."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Headers to send.")
    expires: str = Field(description="When the URL and token stop working (RFC 3339).")


def upload_source(entity: Model | Dataset) -> UploadSource | None:
    return entity.spec.source.upload


def ticket_name(entity: Model | Dataset) -> str:
    """The one ticket of an entity's upload: named by kind, name and uid, so a retry or a
    renewal rewrites it (the old token stops working) and an entity made again under the
    same name never meets its predecessor's ticket."""
    ident = f"{entity.kind_name}/{entity.name}/{entity.metadata.uid or ''}"
    return "u" + hashlib.sha256(ident.encode()).hexdigest()[:24]


def open_ticket(
    records: RecordStore,
    blobs: BlobStore,
    entity: Model | Dataset,
    base_url: str,
    ttl: timedelta = DEFAULT_TTL,
) -> UploadInfo | None:
    """An upload URL for an entity whose source is `upload`; None for other sources.
    The entity has one ticket: opening it again issues a new token (the old one stops)."""
    source = upload_source(entity)
    if source is None:
        return None
    key = layout.upload_key(entity.account, entity.kind, entity.name, source.sha256)
    expires = utcnow() + ttl
    signed = getattr(blobs, "signed_upload_url", None)
    url = signed(key, ttl) if signed is not None else None
    # A signed URL needs no token; its ticket (with a token no one is given) is still
    # written: the one record of the upload, which `announce_landed` marks Used.
    token = secrets.token_urlsafe(32)
    name = ticket_name(entity)
    spec = UploadTicketSpec(
        target_kind=entity.kind_name,
        target_name=entity.name,
        key=key,
        sha256=source.sha256,
        size_bytes=source.size_bytes,
        token_hash=hash_secret(token),
        expires=expires,
    )
    try:  # a new ticket has no phase yet: it is open
        records.create(
            UploadTicket(metadata=ObjectMeta(name=name, namespace=entity.account), spec=spec)
        )
    except AlreadyExists:

        def reissue(ticket: UploadTicket) -> None:
            if ticket.status.phase == "Claimed" and ticket.spec.expires > utcnow():
                raise Conflict("an upload for this ticket is in progress", field="upload")
            ticket.spec = spec
            ticket.status.phase = None

        records.mutate(UploadTicket, entity.account, name, reissue)
    if url is not None:
        return UploadInfo(
            method="POST",
            url=url,
            headers={"x-goog-resumable": "start"},
            expires=expires.isoformat(),
        )
    return UploadInfo(
        method="PUT",
        url=f"{base_url.rstrip('/')}/v1/uploads/{entity.account}/{name}",
        token=token,
        expires=expires.isoformat(),
    )


def tickets_of(records: RecordStore, entity: Entity) -> list[UploadTicket]:
    """The upload tickets of an entity (any incarnation of its name)."""
    return [
        t
        for t in records.list_all(UploadTicket, entity.account)
        if t.spec.target_kind == entity.kind_name and t.spec.target_name == entity.name
    ]


def _set_phase(ticket: UploadTicket, phase: str) -> None:
    ticket.status.phase = phase


def _claim(records: RecordStore, account: str, ticket_id: str, token: str) -> UploadTicket:
    ticket = records.find(UploadTicket, account, ticket_id)
    if ticket is None:
        # Ticket names say nothing secret (the token is the secret).
        raise NotFound(
            "upload ticket not found: its entity was deleted, or it was never issued",
            field="ticket",
        )
    if not hmac.compare_digest(ticket.spec.token_hash, hash_secret(token)):
        raise Unauthorized("invalid upload token (a renewed ticket's old token stops working)")
    if ticket.spec.expires <= utcnow():
        raise Unauthorized("upload token expired")
    if ticket.status.phase not in (None, "Open"):
        raise Conflict("upload token already used", field="token")
    ticket.status.phase = "Claimed"
    try:
        return records.update(ticket)  # only one concurrent claimant wins
    except Conflict:
        raise Conflict("upload token already used", field="token") from None


def receive(
    records: RecordStore,
    blobs: BlobStore,
    account: str,
    ticket_id: str,
    token: str,
    chunks: Iterable[bytes],
    content_length: int | None = None,
) -> BlobInfo:
    """Accept an upload for a ticket: once, verified, all or nothing."""
    ticket = _claim(records, account, ticket_id, token)
    spec = ticket.spec
    ok = False
    try:
        _check_owner(records, ticket)
        if content_length is not None and content_length > spec.size_bytes:
            raise TooLarge(
                f"upload of {content_length} bytes exceeds the declared {spec.size_bytes}",
                field="sizeBytes",
            )
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            received = 0
            for chunk in chunks:
                received += len(chunk)
                if received > spec.size_bytes:
                    raise TooLarge(
                        f"upload exceeds the declared {spec.size_bytes} bytes", field="sizeBytes"
                    )
                spool.write(chunk)
            spool.seek(0)
            info = blobs.put(spec.key, spool, sha256=spec.sha256, size=spec.size_bytes)  # type: ignore[arg-type]
        try:
            # Deleted while the bytes came: the cleanup may have run already, so the
            # bytes go here (a deletion marked after this check cleans them up itself).
            _check_owner(records, ticket)
        except DyffError:
            blobs.delete(spec.key)
            raise
        ok = True
        return info
    finally:
        # Used on success; on failure the ticket opens again for a correct retry. A
        # ticket deleted with its entity meanwhile stays deleted.
        with contextlib.suppress(NotFound):
            records.mutate(
                UploadTicket, account, ticket_id, lambda t: _set_phase(t, "Used" if ok else "Open")
            )


def _check_owner(records: RecordStore, ticket: UploadTicket) -> None:
    """The ticket's entity still exists (the same one, not one made again under its name)
    and is not being deleted; otherwise nothing may be stored for it."""
    kind: type[Model] | type[Dataset] = Model if ticket.spec.target_kind == "Model" else Dataset
    name = ticket.spec.target_name
    entity = records.find(kind, ticket.account, name)
    if entity is None or ticket_name(entity) != ticket.name:
        raise NotFound(
            f"{kind.kind_name.lower()} {name!r} no longer exists; its upload ticket is void",
            field="token",
        )
    if entity.metadata.deletion_timestamp is not None:
        raise Conflict(
            f"{kind.kind_name.lower()} {name!r} is being deleted; uploads are refused",
            field="token",
        )


def upload_present(blobs: BlobStore, entity: Model | Dataset) -> bool:
    source = upload_source(entity)
    if source is None:
        return False
    info = blobs.stat(layout.upload_key(entity.account, entity.kind, entity.name, source.sha256))
    return info is not None and info.size == source.size_bytes


def announce_landed(records: RecordStore, blobs: BlobStore, entity: Model | Dataset) -> None:
    """The client's word that its upload to a signed URL is complete (Cloud Storage tells
    no one). If the bytes are there, the upload's ticket becomes Used: a record write, which
    the controller's feed turns into a pass of the entity now rather than at its next
    timer. Bytes not there (yet): Conflict, and nothing is written."""
    what = f"{entity.kind_name.lower()} {entity.name!r}"
    if entity.spec.source.upload is None:
        raise Conflict(f"{what} has no upload source", field="spec.source")
    if not upload_present(blobs, entity):
        raise Conflict(f"no upload of the declared size has landed for {what}", field="upload")
    try:
        records.mutate(
            UploadTicket, entity.account, ticket_name(entity), lambda t: _set_phase(t, "Used")
        )
    except NotFound:
        raise Conflict(f"{what} has no open upload ticket", field="upload") from None
