"""Upload tickets: a URL and a one-time token to upload one declared file.

In production the URL is a GCS V4-signed resumable upload, so large files go
straight to Cloud Storage (Cloud Run caps HTTP/1 request bodies at 32 MiB);
the controller checks the object's sha256 when it ingests it. With the file
backend or a GCS emulator the URL is the shim's own upload endpoint, which
accepts the token once, streams to the blob store and checks size and sha256
before the object appears.
"""

from __future__ import annotations

import hmac
import secrets
import tempfile
from collections.abc import Iterable
from datetime import timedelta
from typing import Literal

from pydantic import Field

from dyff import layout
from dyff.accounts import Unauthorized, hash_secret
from dyff.errors import Conflict, DyffError
from dyff.schema import (
    Dataset,
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


def open_ticket(
    records: RecordStore,
    blobs: BlobStore,
    entity: Model | Dataset,
    base_url: str,
    ttl: timedelta = DEFAULT_TTL,
) -> UploadInfo | None:
    """An upload URL for an entity whose source is `upload`; None for other sources."""
    source = upload_source(entity)
    if source is None:
        return None
    key = layout.upload_key(entity.account, entity.kind, entity.name, source.sha256)
    expires = utcnow() + ttl
    signed = getattr(blobs, "signed_upload_url", None)
    if signed is not None:
        url = signed(key, ttl)
        if url is not None:
            return UploadInfo(
                method="POST",
                url=url,
                headers={"x-goog-resumable": "start"},
                expires=expires.isoformat(),
            )
    token = secrets.token_urlsafe(32)
    ticket_id = "u" + secrets.token_hex(12)
    ticket = UploadTicket(
        metadata=ObjectMeta(name=ticket_id, namespace=entity.account),
        spec=UploadTicketSpec(
            target_kind=entity.kind_name,
            target_name=entity.name,
            key=key,
            sha256=source.sha256,
            size_bytes=source.size_bytes,
            token_hash=hash_secret(token),
            expires=expires,
        ),
    )
    records.create(ticket)  # a new ticket has no phase yet: it is open
    return UploadInfo(
        method="PUT",
        url=f"{base_url.rstrip('/')}/v1/uploads/{entity.account}/{ticket_id}",
        token=token,
        expires=expires.isoformat(),
    )


def _set_phase(ticket: UploadTicket, phase: str) -> None:
    ticket.status.phase = phase


def _claim(records: RecordStore, account: str, ticket_id: str, token: str) -> UploadTicket:
    ticket = records.find(UploadTicket, account, ticket_id)
    expected = ticket.spec.token_hash if ticket else "0" * 64
    if not hmac.compare_digest(expected, hash_secret(token)) or ticket is None:
        # A forged token and an unknown ticket look the same.
        raise Unauthorized("invalid upload token")
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
        ok = True
        return info
    finally:
        # Used on success; on failure the ticket opens again for a correct retry.
        records.mutate(
            UploadTicket, account, ticket_id, lambda t: _set_phase(t, "Used" if ok else "Open")
        )


def upload_present(blobs: BlobStore, entity: Model | Dataset) -> bool:
    source = upload_source(entity)
    if source is None:
        return False
    info = blobs.stat(layout.upload_key(entity.account, entity.kind, entity.name, source.sha256))
    return info is not None and info.size == source.size_bytes
