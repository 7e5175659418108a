"""Blob store backend: a local folder (`file:///PATH`), the embedded default."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dyff.errors import NotFound
from dyff.stores.blobs import (
    CHUNK,
    BlobInfo,
    BlobStore,
    HashingReader,
    as_stream,
    check_key,
    check_prefix,
    verify,
)

STAGING = ".staging"
# What users see of a blob here: its key, not the server path it lives at.
LOCAL_SCHEME = "local:///"


class FileBlobStore(BlobStore):
    """Objects are files under `root`; a write lands in `.staging/` and is renamed into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"
        (self.root / STAGING).mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        sha256: str | None = None,
        size: int | None = None,
    ) -> BlobInfo:
        target = self.path(key)
        staging = self.root / STAGING / uuid.uuid4().hex
        reader = HashingReader(as_stream(data), limit=size)
        try:
            with open(staging, "wb") as out:
                if isinstance(data, bytes | bytearray | memoryview):
                    # In memory already: checked before a byte is written, then written
                    # as it is (no copy through a buffer).
                    reader.sha.update(data)
                    reader.size = memoryview(data).nbytes
                    digest = verify(reader, sha256, size)
                    out.write(data)
                else:
                    buffer = memoryview(bytearray(CHUNK))  # one buffer for the whole copy
                    while n := reader.readinto(buffer):
                        out.write(buffer[:n])
                    digest = verify(reader, sha256, size)
                out.flush()
                os.fsync(out.fileno())  # the bytes are on disk before the name is
            try:
                os.replace(staging, target)  # atomic on one filesystem
            except FileNotFoundError:  # a first blob in its folder (staging is there)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, target)
        finally:
            staging.unlink(missing_ok=True)
        return BlobInfo(key=key, size=reader.size, sha256=digest)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"blob {key!r} not found") from None

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with self.open(key) as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def stat(self, key: str) -> BlobInfo | None:
        p = self.path(key)
        return BlobInfo(key=key, size=p.stat().st_size) if p.is_file() else None

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        check_prefix(prefix)
        # Walk only the deepest folder the prefix names.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != STAGING]
            for fn in filenames:
                key = (Path(dirpath) / fn).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        for key in sorted(keys):
            info = self.stat(key)
            if info is not None:
                yield info

    def delete(self, key: str) -> bool:
        p = self.path(key)
        try:
            p.unlink()
        except FileNotFoundError:
            return False
        # Prune folders left empty, up to the root.
        parent = p.parent
        while parent != self.root:
            with contextlib.suppress(OSError):
                parent.rmdir()
            if parent.exists():
                break
            parent = parent.parent
        return True

    def uri(self, key: str) -> str:
        return f"{LOCAL_SCHEME}{check_key(key)}"
