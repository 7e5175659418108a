"""safe_extract: good archives come out whole; the bad-input corpus is refused, by name and
rule, before anything is written, and `dest` is left as it was."""

from __future__ import annotations

import bz2
import gzip
import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dyff.archives import (
    ArchiveLimits,
    BadArchive,
    UnsafeArchive,
    archive_format,
    safe_extract,
)
from dyff.errors import WorkloadFailed

# ------------------------------------------------------------------ builders


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    if type_ in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info, None


def make_tar(
    path: Path,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    mode: str = "w:gz",
    fmt: int = tarfile.GNU_FORMAT,
) -> Path:
    with tarfile.open(path, mode, format=fmt) as tf:  # type: ignore[call-overload]
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def make_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: external_attr's high half is st_mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


GOOD = [("a/1.txt", b"one"), ("a/b/2.txt", b"two"), ("3.txt", b"three")]


def refused(tmp_path: Path, archive: Path, limits: ArchiveLimits | None = None) -> UnsafeArchive:
    """Extract, expect refusal, and check that nothing at all was left behind."""
    dest = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnsafeArchive) as exc_info:
        safe_extract(archive, dest, *([limits] if limits else []))
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no staging left
    exc = exc_info.value
    assert isinstance(exc, WorkloadFailed) and exc.reason == "UnsafeArchive"
    return exc


# --------------------------------------------------------------- good input


@pytest.mark.parametrize("mode", ["w:gz", "w", "zip"])
def test_extracts_good_archive(tmp_path: Path, mode: str) -> None:
    if mode == "zip":
        archive = make_zip(tmp_path / "in.zip", list(GOOD))
    else:
        members = [_file("./" + n, d) for n, d in GOOD]
        archive = make_tar(tmp_path / "in.tar", members, mode=mode)
    dest = tmp_path / "out"
    files = safe_extract(archive, dest)
    assert [p.relative_to(dest).as_posix() for p in files] == [n for n, _ in GOOD]
    for name, data in GOOD:
        p = dest / name
        assert p.read_bytes() == data
        assert stat.S_IMODE(p.stat().st_mode) & 0o111 == 0  # never executable
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_format_by_magic_not_extension(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "looks.zip", [_file("a.txt", b"hi")])
    assert archive_format(archive) == "tar.gz"
    assert safe_extract(archive, tmp_path / "out")[0].read_bytes() == b"hi"


def test_mode_bits_not_kept(tmp_path: Path) -> None:
    info, data = _file("run.sh", b"#!/bin/sh\n")
    info.mode = 0o4777  # setuid, world-writable
    out = safe_extract(make_tar(tmp_path / "a.tgz", [(info, data)]), tmp_path / "out")
    assert stat.S_IMODE(out[0].stat().st_mode) == 0o644


def test_empty_dest_folder_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    safe_extract(make_zip(tmp_path / "a.zip", list(GOOD)), tmp_path / "out")
    assert (tmp_path / "out" / "3.txt").read_bytes() == b"three"


def test_nonempty_dest_is_not_touched(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        safe_extract(make_zip(tmp_path / "a.zip", list(GOOD)), tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "mine"


# ------------------------------------------------------- the bad-input corpus

TarCase = Callable[[], list[tuple[tarfile.TarInfo, bytes | None]]]

TAR_CORPUS: dict[str, tuple[TarCase, str, str]] = {
    # id: (members, member named in the message, rule in the message)
    "tar-slip": (lambda: [_file("ok.txt"), _file("../evil.txt")], "../evil.txt", "'..'"),
    "tar-slip-nested": (lambda: [_file("a/../../evil.txt")], "a/../../evil.txt", "'..'"),
    "absolute": (lambda: [_file("/etc/cron.d/evil")], "/etc/cron.d/evil", "absolute"),
    "symlink-escaping": (
        lambda: [_special("link", tarfile.SYMTYPE, "../../etc/passwd")],
        "link",
        "symbolic link",
    ),
    "symlink-then-write-through": (
        lambda: [_special("d", tarfile.SYMTYPE, "/tmp"), _file("d/evil.txt")],
        "'d'",
        "symbolic link",
    ),
    "symlink-inside": (
        lambda: [_file("a.txt"), _special("b", tarfile.SYMTYPE, "a.txt")],
        "b",
        "symbolic link",
    ),
    "hardlink": (
        lambda: [_special("h", tarfile.LNKTYPE, "/etc/shadow")],
        "h",
        "hard link",
    ),
    "char-device": (lambda: [_special("null", tarfile.CHRTYPE)], "null", "device"),
    "block-device": (lambda: [_special("sda", tarfile.BLKTYPE)], "sda", "device"),
    "fifo": (lambda: [_special("pipe", tarfile.FIFOTYPE)], "pipe", "FIFO"),
    "duplicate": (lambda: [_file("a.txt", b"1"), _file("./a.txt", b"2")], "./a.txt", "duplicate"),
    "file-and-folder": (lambda: [_file("a", b"1"), _file("a/b", b"2")], "'a'", "both a file"),
    "control-char": (lambda: [_file("a\nb.txt")], "a\\nb.txt", "control character"),
    "backslash": (lambda: [_file("..\\evil.txt")], "evil.txt", "backslash"),
}


@pytest.mark.parametrize("case", list(TAR_CORPUS))
@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_tar_corpus_refused(tmp_path: Path, case: str, mode: str) -> None:
    members, member, rule = TAR_CORPUS[case]
    # A good member first: refusal must come before even that one is written.
    archive = make_tar(tmp_path / "bad.tar", [_file("first.txt"), *members()], mode=mode)
    exc = refused(tmp_path, archive)
    assert member in exc.message and rule in exc.message


ZIP_CORPUS: dict[str, tuple[Callable[[], list[tuple[str | zipfile.ZipInfo, bytes]]], str, str]] = {
    "zip-slip": (lambda: [("../evil.txt", b"x")], "../evil.txt", "'..'"),
    "absolute": (lambda: [("/etc/evil", b"x")], "/etc/evil", "absolute"),
    "symlink": (lambda: [zip_symlink("link", "../../etc/passwd")], "link", "symbolic link"),
    "duplicate": (lambda: [("a.txt", b"1"), ("a.txt", b"2")], "a.txt", "duplicate"),
}


@pytest.mark.parametrize("case", list(ZIP_CORPUS))
def test_zip_corpus_refused(tmp_path: Path, case: str) -> None:
    members, member, rule = ZIP_CORPUS[case]
    with pytest.warns(UserWarning) if case == "duplicate" else _no_warning():
        archive = make_zip(tmp_path / "bad.zip", [("first.txt", b"x"), *members()])
    exc = refused(tmp_path, archive)
    assert member in exc.message and rule in exc.message


class _no_warning:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def test_zip_bomb_refused(tmp_path: Path) -> None:
    # 20 MB of zeros deflate to ~20 KB: a ratio of ~1000.
    archive = make_zip(tmp_path / "bomb.zip", [("ok.txt", b"x"), ("zeros.bin", bytes(20_000_000))])
    exc = refused(tmp_path, archive)
    assert "zeros.bin" in exc.message and "compression ratio" in exc.message


def test_zip_lying_sizes_refused(tmp_path: Path) -> None:
    """A central directory that understates a member's size: extraction stops at the
    declared size and the member is refused (CRC or size), nothing kept."""
    archive = make_zip(tmp_path / "lie.zip", [("a.bin", bytes(5000))])
    raw = bytearray(archive.read_bytes())
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (100).to_bytes(4, "little")  # uncompressed size: 100
    archive.write_bytes(bytes(raw))
    dest = tmp_path / "out"
    with pytest.raises(WorkloadFailed):
        safe_extract(archive, dest)
    assert not dest.exists()


def test_targz_bomb_refused(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "bomb.tgz", [_file("ok.txt"), _file("zeros.bin", bytes(20_000_000))]
    )
    exc = refused(tmp_path, archive)
    # Refused from its header, before tarfile inflates a byte of its data.
    assert "zeros.bin" in exc.message and "compression ratio" in exc.message


def test_targz_stream_metered_when_headers_lie(tmp_path: Path) -> None:
    """Member sizes are tiny, but pax headers inflate the decompressed stream far beyond
    the ratio: the meter on the gzip stream stops it while reading headers."""
    members = []
    for i in range(30):
        info, data = _file(f"f{i}.txt")
        info.pax_headers = {"comment": "a" * 900_000}
        members.append((info, data))
    archive = make_tar(tmp_path / "pax.tgz", members, fmt=tarfile.PAX_FORMAT)
    assert archive.stat().st_size < 100_000
    exc = refused(tmp_path, archive)
    assert "decompresses to more than" in exc.message and "member 'f" in exc.message


def test_huge_long_name_refused_before_it_is_read(tmp_path: Path) -> None:
    # A GNU long-name record of 50 MB: tarfile would read it into memory whole.
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, 50_000_000
    raw = header.tobuf(format=tarfile.USTAR_FORMAT) + bytes(50_000_000 + 512 * 4)
    archive = tmp_path / "long.tgz"
    archive.write_bytes(gzip.compress(raw, compresslevel=1))
    exc = refused(tmp_path, archive)
    assert "extended header" in exc.message or "decompresses" in exc.message


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_too_many_files_refused(tmp_path: Path, fmt: str) -> None:
    names = [f"f{i}.txt" for i in range(6)]
    if fmt == "zip":
        archive = make_zip(tmp_path / "many.zip", [(n, b"x") for n in names])
    else:
        archive = make_tar(tmp_path / "many.tgz", [_file(n) for n in names])
    exc = refused(tmp_path, archive, ArchiveLimits(max_files=5))
    assert "more than 5 members" in exc.message


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_total_size_refused(tmp_path: Path, fmt: str) -> None:
    data = bytes(range(256)) * 4
    if fmt == "zip":
        archive = make_zip(tmp_path / "big.zip", [("a.bin", data), ("b.bin", data)])
    else:
        archive = make_tar(tmp_path / "big.tgz", [_file("a.bin", data), _file("b.bin", data)])
    exc = refused(tmp_path, archive, ArchiveLimits(max_total_bytes=1500))
    assert "b.bin" in exc.message and "total uncompressed size" in exc.message


# ----------------------------------------------------------- not an archive


@pytest.mark.parametrize(
    "content",
    [
        b"just some text, not an archive" * 20,
        gzip.compress(b"not a tar" * 100),
        bz2.compress(b"a .tar.bz2 is not supported" * 100),
        b"",
    ],
    ids=["text", "gzip-of-text", "bzip2", "empty"],
)
def test_not_an_archive(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.tgz"
    path.write_bytes(content)
    with pytest.raises(BadArchive) as exc_info:
        safe_extract(path, tmp_path / "out")
    assert exc_info.value.reason == "BadArchive"
    assert not (tmp_path / "out").exists()


def test_truncated_targz(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "t.tgz", [_file(f"f{i}.bin", bytes(range(256)) * 40) for i in range(5)]
    )
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(WorkloadFailed):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["t.tgz"]
