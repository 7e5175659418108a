"""Blob store backend: Google Cloud Storage (`gs://BUCKET[/PREFIX]`).

A put streams (resumable, in chunks) to a staging object while hashing, and
only a verified staging object is copied server-side to its key: GCS objects
appear whole when finalised, so readers never see half an object, and a
mismatch never replaces what was there.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, BinaryIO, cast

import google.auth.transport.requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials, Signing
from google.cloud import storage  # type: ignore[attr-defined]

from dyff.errors import NotFound
from dyff.stores.blobs import (
    BlobInfo,
    BlobStore,
    HashingReader,
    as_stream,
    check_key,
    check_prefix,
    verify,
)

STAGING = ".staging"
# Resumable uploads go in chunks of this size (a multiple of 256 KiB).
UPLOAD_CHUNK = 8 * 1024 * 1024


def make_client(project: str | None = None) -> storage.Client:
    """A client; against an emulator (STORAGE_EMULATOR_HOST) with anonymous credentials."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project=project or "dyff-test", credentials=AnonymousCredentials())
    return storage.Client(project=project)


class GcsBlobStore(BlobStore):
    def __init__(
        self, bucket: str, *, prefix: str = "", client: storage.Client | None = None
    ) -> None:
        self.client = client or make_client()
        self.bucket = self.client.bucket(bucket)
        self.prefix = prefix.strip("/")
        self.url = f"gs://{bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        sha256: str | None = None,
        size: int | None = None,
    ) -> BlobInfo:
        target = self._name(key)
        staging = self.bucket.blob(self._name(f"{STAGING}/{uuid.uuid4().hex}"))
        staging.chunk_size = UPLOAD_CHUNK
        reader = HashingReader(as_stream(data), limit=size)
        try:
            staging.upload_from_file(cast(BinaryIO, reader), rewind=False)
            digest = verify(reader, sha256, size)
            staging.metadata = {"sha256": digest}
            staging.patch()
            self.bucket.copy_blob(staging, self.bucket, target)
        finally:
            with contextlib.suppress(gexc.NotFound):
                staging.delete()
        return BlobInfo(key=key, size=reader.size, sha256=digest)

    def open(self, key: str) -> BinaryIO:
        blob = self.bucket.get_blob(self._name(key))
        if blob is None:
            raise NotFound(f"blob {key!r} not found")
        # Pin the generation so a concurrent overwrite cannot mix two versions.
        pinned = self.bucket.blob(blob.name, generation=blob.generation)
        return cast(BinaryIO, pinned.open("rb", chunk_size=UPLOAD_CHUNK))

    def get(self, key: str) -> bytes:
        try:
            return cast(bytes, self.bucket.blob(self._name(key)).download_as_bytes())
        except gexc.NotFound:
            raise NotFound(f"blob {key!r} not found") from None

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        try:
            blob = self.bucket.blob(self._name(key))
            return cast(bytes, blob.download_as_bytes(start=start, end=end - 1))
        except gexc.NotFound:
            raise NotFound(f"blob {key!r} not found") from None

    def stat(self, key: str) -> BlobInfo | None:
        blob = self.bucket.get_blob(self._name(key))
        if blob is None:
            return None
        return BlobInfo(
            key=key, size=int(blob.size or 0), sha256=(blob.metadata or {}).get("sha256")
        )

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        check_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        staging = self._name(STAGING) + "/"
        for blob in self.client.list_blobs(self.bucket, prefix=full):
            if blob.name.startswith(staging):
                continue
            yield BlobInfo(
                key=self._key(blob.name),
                size=int(blob.size or 0),
                sha256=(blob.metadata or {}).get("sha256"),
            )

    def delete(self, key: str) -> bool:
        try:
            self.bucket.blob(self._name(key)).delete()
        except gexc.NotFound:
            return False
        return True

    def signed_upload_url(self, key: str, ttl: timedelta) -> str | None:
        """A V4-signed URL that starts a resumable upload of `key` (POST with
        `x-goog-resumable: start`), so large files bypass the shim. None against an
        emulator, which cannot check signatures: the shim's own endpoint is used there."""
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            return None
        blob = self.bucket.blob(self._name(key))
        credentials = self.client._credentials
        extra: dict[str, Any] = {}
        if not isinstance(credentials, Signing):
            # Metadata-server credentials (Cloud Run, GKE) sign through the IAM API.
            credentials.refresh(google.auth.transport.requests.Request())
            extra = {
                "service_account_email": credentials.service_account_email,
                "access_token": credentials.token,
            }
        url: str = blob.generate_signed_url(
            version="v4",
            expiration=ttl,
            method="POST",
            headers={"x-goog-resumable": "start"},
            **extra,
        )
        return url

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket.name}/{self._name(key)}"

    def close(self) -> None:
        self.client.close()
