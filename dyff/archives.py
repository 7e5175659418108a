"""Extracting user archives (.tar, .tar.gz/.tgz, .zip) without trusting them.

Every member is checked before a single byte is written: no absolute paths,
no `..`, no links of any kind (symlinks and hardlinks are refused outright,
whatever their target: the simplest policy that cannot be talked around), no
devices, FIFOs or other special members, no duplicate or conflicting paths,
and limits on the number of members, their total size and the compression
ratio. Sizes declared in headers are then enforced while extracting, and for
gzip the decompressed stream itself is metered, because headers can lie.

Extraction goes into a fresh folder beside `dest` that is renamed onto `dest`
only when everything is out; on any failure it is removed, so `dest` is never
left half-written. Files are written 0644 and folders 0755 whatever the
archive says (no setuid, no executables, no ownership).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from dyff.errors import WorkloadFailed

CHUNK = 1024 * 1024
ArchiveFormat = Literal["tar", "tar.gz", "zip"]


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may expand to."""

    max_total_bytes: int = 10 * 1024**3
    max_files: int = 100_000
    # Uncompressed bytes per archive byte (zip bombs); the first `ratio_grace_bytes`
    # are free so that tiny archives (tar pads to 10 KiB) never trip it.
    max_ratio: float = 200.0
    ratio_grace_bytes: int = 1024 * 1024
    max_name_bytes: int = 4096
    max_component_bytes: int = 255


DEFAULT_LIMITS = ArchiveLimits()


class UnsafeArchive(WorkloadFailed):
    """The archive breaks a rule; the message names the member and the rule."""

    def __init__(self, message: str) -> None:
        super().__init__("UnsafeArchive", message)


class BadArchive(WorkloadFailed):
    """Not a readable archive of a supported format (damaged, or something else)."""

    def __init__(self, message: str) -> None:
        super().__init__("BadArchive", message)


@dataclass(frozen=True)
class _Entry:
    """One checked member: `rel` is None for entries naming the root itself (`./`)."""

    name: str
    rel: PurePosixPath | None
    is_dir: bool
    size: int


def archive_format(path: Path) -> ArchiveFormat:
    """The format by magic bytes (the extension is not trusted)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    if head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        raise BadArchive(f"{path.name}: bzip2/xz compression is not supported; use .tar.gz or .zip")
    try:  # an old v7 tar carries no magic, but its first header has a valid checksum
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        return "tar"
    except (tarfile.HeaderError, ValueError):
        pass
    raise BadArchive(f"{path.name}: not a .tar, .tar.gz or .zip archive")


def safe_extract(archive: Path, dest: Path, limits: ArchiveLimits = DEFAULT_LIMITS) -> list[Path]:
    """Check every member of `archive`, then extract it to `dest`; return the files written.

    `dest` must not exist or be an empty folder. Raises UnsafeArchive (a rule is
    broken) or BadArchive (unreadable); either way `dest` is left as it was.
    Returned paths are the regular files, in archive order, under `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty folder")
    fmt = archive_format(archive)
    size = archive.stat().st_size
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.extract-{uuid.uuid4().hex}"
    try:
        if fmt == "zip":
            files = _zip(archive, size, staging, limits)
        else:
            files = _tar(archive, fmt, size, staging, limits)
        os.replace(staging, dest)  # replaces an empty folder atomically
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise BadArchive(f"{archive.name}: damaged {fmt} archive: {exc}") from None
    except NotImplementedError as exc:  # e.g. a zip compression method we cannot read
        raise BadArchive(f"{archive.name}: unsupported {fmt} archive: {exc}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return [dest / rel for rel in files]


# ------------------------------------------------------------------ checks


def _check_name(name: str, limits: ArchiveLimits) -> PurePosixPath | None:
    """The member's relative path, or None for the root itself; raises on a bad name."""
    if not name:
        raise UnsafeArchive("member with an empty name")
    if len(name.encode("utf-8", "surrogateescape")) > limits.max_name_bytes:
        raise UnsafeArchive(f"member {name[:80]!r}…: name longer than {limits.max_name_bytes}")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise UnsafeArchive(f"member {name!r}: control character in name")
    if "\\" in name:
        # A separator on Windows: refuse rather than guess what was meant.
        raise UnsafeArchive(f"member {name!r}: backslash in name")
    if name.startswith("/") or (len(name) > 1 and name[0].isalpha() and name[1] == ":"):
        raise UnsafeArchive(f"member {name!r}: absolute path")
    parts = []
    for part in name.split("/"):
        if part == "..":
            raise UnsafeArchive(f"member {name!r}: '..' in path")
        if part in ("", "."):
            continue
        if len(part.encode("utf-8", "surrogateescape")) > limits.max_component_bytes:
            raise UnsafeArchive(f"member {name!r}: path component too long")
        parts.append(part)
    return PurePosixPath(*parts) if parts else None


def _check_plan(entries: list[_Entry], archive_size: int, limits: ArchiveLimits) -> None:
    """Rules about the whole archive: sizes, ratio, duplicates, file-vs-folder conflicts."""
    total = 0
    files: set[PurePosixPath] = set()
    dirs: set[PurePosixPath] = set()
    for e in entries:
        if e.rel is None:
            continue
        dirs.update(e.rel.parents)
        if e.is_dir:
            dirs.add(e.rel)
            continue
        if e.rel in files:
            raise UnsafeArchive(f"member {e.name!r}: duplicate path")
        files.add(e.rel)
        total += e.size
        _check_total(total, archive_size, limits, e.name)
    for e in entries:
        if e.rel is not None and not e.is_dir and e.rel in dirs:
            raise UnsafeArchive(f"member {e.name!r}: path is both a file and a folder")


def _check_total(total: int, archive_size: int, limits: ArchiveLimits, name: str) -> None:
    if total > limits.max_total_bytes:
        raise UnsafeArchive(
            f"member {name!r}: total uncompressed size exceeds {limits.max_total_bytes} bytes"
        )
    if total > limits.max_ratio * archive_size + limits.ratio_grace_bytes:
        raise UnsafeArchive(
            f"member {name!r}: compression ratio above {limits.max_ratio:g} "
            f"({total} bytes from a {archive_size}-byte archive)"
        )


def _count(n: int, limits: ArchiveLimits) -> None:
    if n > limits.max_files:
        raise UnsafeArchive(f"more than {limits.max_files} members")


def _write(src: IO[bytes], target: Path, entry: _Entry, budget: list[int]) -> None:
    """Copy one member, refusing more bytes than its header declared."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL|O_NOFOLLOW: never write through anything already there.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            budget[0] -= len(chunk)
            if written > entry.size or budget[0] < 0:
                raise UnsafeArchive(f"member {entry.name!r}: more data than its declared size")
            out.write(chunk)
    if written != entry.size:
        raise BadArchive(f"member {entry.name!r}: {written} bytes, header says {entry.size}")


# --------------------------------------------------------------------- zip


def _zip(path: Path, size: int, staging: Path, limits: ArchiveLimits) -> list[PurePosixPath]:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        _count(len(infos), limits)
        entries = [_zip_entry(info, limits) for info in infos]
        _check_plan(entries, size, limits)
        staging.mkdir(mode=0o755)
        budget = [limits.max_total_bytes]
        files = []
        for info, entry in zip(infos, entries, strict=True):
            if entry.rel is None:
                continue
            target = staging / entry.rel
            if entry.is_dir:
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            # zipfile stops at the declared size and checks the CRC; _write counts too.
            with zf.open(info) as src:
                _write(src, target, entry, budget)
            files.append(entry.rel)
    return files


def _zip_entry(info: zipfile.ZipInfo, limits: ArchiveLimits) -> _Entry:
    name = info.filename
    rel = _check_name(name, limits)
    mode = info.external_attr >> 16  # Unix st_mode, when the creator stored one
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise UnsafeArchive(f"member {name!r}: symbolic links are not allowed")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(f"member {name!r}: device, FIFO or socket files are not allowed")
    if info.flag_bits & 0x1:
        raise UnsafeArchive(f"member {name!r}: encrypted members are not supported")
    is_dir = info.is_dir() or kind == stat.S_IFDIR
    if rel is None and not is_dir:
        raise UnsafeArchive(f"member {name!r}: a file cannot name the archive root")
    if info.file_size < 0 or info.compress_size < 0:
        raise UnsafeArchive(f"member {name!r}: negative size")
    return _Entry(name=name, rel=rel, is_dir=is_dir, size=0 if is_dir else info.file_size)


# --------------------------------------------------------------------- tar


class _Metered:
    """A read-only stream that refuses to yield more than `limit` bytes in all."""

    def __init__(self, raw: IO[bytes], limit: int, what: str) -> None:
        self._raw = raw
        self._limit = limit
        self._what = what
        self.count = 0
        self.after = ""  # the last member seen, to name in the message

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n if n is not None and n >= 0 else CHUNK)
        self.count += len(data)
        if self.count > self._limit:
            where = f"member {self.after!r}" if self.after else self._what
            raise UnsafeArchive(
                f"{where}: archive decompresses to more than {self._limit} bytes "
                "(compression ratio or total size limit)"
            )
        return data


# Long names and pax headers are read into memory whole by tarfile: cap them first.
MAX_META_BYTES = 1024 * 1024
_META_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _CheckedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > MAX_META_BYTES:
            raise UnsafeArchive(
                f"member {self.name!r}: extended header of {self.size} bytes "
                f"(limit {MAX_META_BYTES})"
            )
        return super()._proc_member(tf)  # type: ignore[misc]


@contextlib.contextmanager
def _tar_stream(
    path: Path, fmt: ArchiveFormat, size: int, limits: ArchiveLimits
) -> Iterator[tuple[tarfile.TarFile, _Metered]]:
    """A tar opened for one sequential pass, with the decompressed bytes metered."""
    # Headers, padding and long-name records count too: bound the raw stream by the
    # ratio and by the size limit plus generous per-member overhead.
    limit = min(
        int(limits.max_ratio * size) + limits.ratio_grace_bytes,
        limits.max_total_bytes + 4096 * (limits.max_files + 1) + limits.ratio_grace_bytes,
    )
    with contextlib.ExitStack() as stack:
        src: Any = stack.enter_context(open(path, "rb"))
        if fmt == "tar.gz":
            src = stack.enter_context(gzip.GzipFile(fileobj=src, mode="rb"))
        metered = _Metered(src, limit, path.name)
        # "r|": a pure stream, so every byte tarfile sees goes through the meter.
        tf = stack.enter_context(
            tarfile.open(fileobj=metered, mode="r|", tarinfo=_CheckedTarInfo)  # type: ignore[call-overload]
        )
        yield tf, metered


def _tar(
    path: Path, fmt: ArchiveFormat, size: int, staging: Path, limits: ArchiveLimits
) -> list[PurePosixPath]:
    # Pass 1: read every header (skipping data) and check all rules before writing.
    entries: list[_Entry] = []
    total = 0
    with _tar_stream(path, fmt, size, limits) as (tf, meter):
        for member in tf:
            entry = _tar_entry(member, limits)
            entries.append(entry)
            _count(len(entries), limits)
            # Check sizes as each header arrives, before tarfile reads past the data.
            total += entry.size
            _check_total(total, size, limits, entry.name)
            meter.after = member.name
    _check_plan(entries, size, limits)
    # Pass 2: the same stream again, writing what pass 1 approved.
    staging.mkdir(mode=0o755)
    budget = [limits.max_total_bytes]
    files = []
    with _tar_stream(path, fmt, size, limits) as (tf, meter):
        for i, member in enumerate(tf):
            planned = entries[i] if i < len(entries) else None
            if planned is None or planned.name != member.name or _tar_size(member) != planned.size:
                raise UnsafeArchive(f"member {member.name!r}: archive changed while extracting")
            meter.after = member.name
            if planned.rel is None:
                continue
            target = staging / planned.rel
            if planned.is_dir:
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            src = tf.extractfile(member)
            if src is None:
                raise BadArchive(f"member {member.name!r}: no data")
            _write(src, target, planned, budget)
            files.append(planned.rel)
    return files


def _tar_size(member: tarfile.TarInfo) -> int:
    return member.size if member.isreg() else 0


def _tar_entry(member: tarfile.TarInfo, limits: ArchiveLimits) -> _Entry:
    name = member.name
    rel = _check_name(name, limits)
    if member.issym():
        raise UnsafeArchive(f"member {name!r}: symbolic links are not allowed")
    if member.islnk():
        raise UnsafeArchive(f"member {name!r}: hard links are not allowed")
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeArchive(f"member {name!r}: device or FIFO files are not allowed")
    if member.issparse():
        raise UnsafeArchive(f"member {name!r}: sparse files are not supported")
    if member.isdir():
        return _Entry(name=name, rel=rel, is_dir=True, size=0)
    if not member.isreg():
        raise UnsafeArchive(f"member {name!r}: unsupported member type {member.type!r}")
    if rel is None:
        raise UnsafeArchive(f"member {name!r}: a file cannot name the archive root")
    return _Entry(name=name, rel=rel, is_dir=False, size=member.size)
