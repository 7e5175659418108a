"""The blob store: one interface for `file://` and `gs://`, writes atomic and verifiable."""

from __future__ import annotations

import hashlib
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dyff.errors import IntegrityError, Invalid

CHUNK = 8 * 1024 * 1024
# Keys are relative, slash-separated, and never climb out of the store.
_KEY_PART = re.compile(r"^[A-Za-z0-9._=+-]+$")


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    sha256: str | None = None


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise Invalid(f"bad blob key {key!r}", field="key")
    return key


def check_prefix(prefix: str) -> str:
    if prefix:
        check_key(prefix.rstrip("/"))
    return prefix


class HashingReader(io.RawIOBase):
    """Wraps a stream, hashing and counting what is read through it."""

    def __init__(self, stream: BinaryIO, limit: int | None = None) -> None:
        self._stream = stream
        self._limit = limit
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        # Uploaders ask where the stream stands; it stands where reading has got to.
        return self.size

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha.update(data)
        self.size += n
        if self._limit is not None and self.size > self._limit:
            raise IntegrityError(f"more than the declared {self._limit} bytes", field="sizeBytes")
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(CHUNK):
                chunks.append(chunk)
            return b"".join(chunks)
        buf = bytearray(size)
        n = self.readinto(memoryview(buf))
        return bytes(buf[:n])


def verify(reader: HashingReader, sha256: str | None, size: int | None) -> str:
    """Raise IntegrityError unless what was read matches the declaration; return the digest."""
    digest = reader.sha.hexdigest()
    if size is not None and reader.size != size:
        raise IntegrityError(
            f"size mismatch: declared {size} bytes, received {reader.size}", field="sizeBytes"
        )
    if sha256 is not None and digest != sha256:
        raise IntegrityError(
            f"sha256 mismatch: declared {sha256}, received {digest}", field="sha256"
        )
    return digest


def as_stream(data: bytes | BinaryIO) -> BinaryIO:
    return io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data


class BlobStore(ABC):
    """Objects by key. `put` is atomic: readers see the whole object or none of it."""

    url: str

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        sha256: str | None = None,
        size: int | None = None,
    ) -> BlobInfo:
        """Store `data` under `key`. With `sha256`/`size`, a mismatch raises
        IntegrityError and leaves nothing behind (an old object stays as it was)."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A stream of the object's bytes (NotFound if absent)."""

    @abstractmethod
    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object."""

    @abstractmethod
    def stat(self, key: str) -> BlobInfo | None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Objects whose key starts with `prefix`, in key order."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete one object; False if it was absent."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """The object's URI as users see it (statuses, `uri` sources): gs://BUCKET/… on
        GCS, local:///KEY for the file store (never a path on the server)."""

    def key_of(self, uri: str) -> str | None:
        """The key of a URI that `uri` made (this store's), else None."""
        root = self.uri("accounts")[: -len("accounts")]
        key = uri[len(root) :] if uri.startswith(root) else ""
        try:
            return check_key(key)
        except Invalid:
            return None

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many."""
        check_prefix(prefix)
        if not prefix.endswith("/"):
            prefix += "/"
        return sum(self.delete(info.key) for info in list(self.list(prefix)))

    def download(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.open(key) as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        return dest

    def close(self) -> None:  # noqa: B027 - optional for backends
        pass
