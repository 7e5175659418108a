"""Dataset ingestion: both forms to the same deterministic shards, every bad input named,
and the workload end to end against SQLite records and a folder of blobs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from dyff import crdgen, layout, shard_lists
from dyff.datasets import (
    SHARD_SCHEMA,
    DatasetInput,
    ShardFile,
    check_image,
    iter_shards,
    open_dataset,
    open_imagefolder,
    read_shard,
    scan_parquet_labels,
    write_shard,
)
from dyff.errors import WorkloadFailed
from dyff.schema import (
    Dataset,
    DatasetForm,
    DatasetSource,
    DatasetSpec,
    ObjectMeta,
    Shard,
    UploadSource,
    UriSource,
    immutable_violations,
)
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from dyff.workloads.ingest_dataset import main as ingest_main
from tests import crd_validation
from tests.workloads.dataset_fixtures import (
    DIGIT_NAMES,
    WORD_NAMES,
    Example,
    by_class,
    corrupt,
    digits,
    jpeg,
    pack,
    write_hf_parquet,
    write_hub_folder,
    write_imagefolder,
    write_parquet,
)

ROOT = Path(__file__).resolve().parents[2]


def shards_of(
    form: str, path: Path, scratch: Path, shard_rows: int
) -> tuple[DatasetInput, list[ShardFile]]:
    scratch.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(form, path, scratch)  # type: ignore[arg-type]
    return ds, list(iter_shards(ds, shard_rows))


def failure(form: str, path: Path, scratch: Path, shard_rows: int = 16) -> WorkloadFailed:
    with pytest.raises(WorkloadFailed) as exc_info:
        shards_of(form, path, scratch, shard_rows)
    return exc_info.value


def rows_of(shards: list[ShardFile]) -> list[tuple[int, bytes, int]]:
    out = []
    for s in shards:
        t = read_shard(s.data)
        assert t.schema.equals(SHARD_SCHEMA)
        out += list(
            zip(*(t.column(c).to_pylist() for c in ("row_id", "image", "label")), strict=True)
        )
    return out


# ------------------------------------------------------------------ both forms


def test_parquet_ingested_in_order(tmp_path: Path) -> None:
    examples = digits(100)
    path = write_parquet(tmp_path / "d.parquet", examples)
    ds, shards = shards_of("parquet", path, tmp_path / "s", shard_rows=30)
    assert ds.labels == DIGIT_NAMES and ds.rows == 100
    assert [(s.rows, s.first_row) for s in shards] == [(30, 0), (30, 30), (30, 60), (10, 90)]
    # Original bytes kept, global row ids, label indices.
    assert rows_of(shards) == [(i, b, t) for i, (b, t) in enumerate(examples)]
    for s in shards:
        assert s.shard().sha256 == s.sha256 and len(s.sha256) == 64


@pytest.mark.parametrize("fmt,wrap", [("tar.gz", None), ("zip", "digits"), ("tar.gz", "x")])
def test_imagefolder_gives_same_shards_as_parquet(
    tmp_path: Path, fmt: str, wrap: str | None
) -> None:
    examples = by_class(digits(90))
    pq_path = write_parquet(tmp_path / "d.parquet", examples)
    archive = write_imagefolder(tmp_path / f"d.{fmt}", examples, fmt=fmt, wrap=wrap)
    ds_a, a = shards_of("parquet", pq_path, tmp_path / "a", 25)
    ds_b, b = shards_of("imagefolder", archive, tmp_path / "b", 25)
    assert ds_b.labels == ds_a.labels == DIGIT_NAMES
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    assert [s.data for s in a] == [s.data for s in b]


def test_string_labels_with_declared_names_match_int_labels(tmp_path: Path) -> None:
    examples = digits(40)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    a = write_parquet(tmp_path / "a.parquet", examples, names)
    b = write_parquet(tmp_path / "b.parquet", examples, names, label_as="str")
    ds_a, sa = shards_of("parquet", a, tmp_path / "a", 16)
    ds_b, sb = shards_of("parquet", b, tmp_path / "b", 16)
    assert ds_a.labels == ds_b.labels == names  # declared order, not sorted
    assert [s.sha256 for s in sa] == [s.sha256 for s in sb]


def test_labels_inferred_without_metadata(tmp_path: Path) -> None:
    examples = [e for e in digits(60) if e[1] in (1, 3, 7)]
    ints = write_parquet(tmp_path / "i.parquet", examples, None)
    assert scan_parquet_labels(ints) == (["0", "1", "2", "3", "4", "5", "6", "7"], len(examples))
    strs = write_parquet(tmp_path / "s.parquet", examples, None, label_as="str")
    assert scan_parquet_labels(strs) == (["1", "3", "7"], len(examples))
    _, shards = shards_of("parquet", strs, tmp_path / "x", 100)
    assert [t for _, _, t in rows_of(shards)] == [
        ["1", "3", "7"].index(str(t)) for _, t in examples
    ]


def test_jpeg_and_png_both_kept_as_is(tmp_path: Path) -> None:
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    examples = [(jpeg(img), 0), *digits(3)]
    path = write_parquet(tmp_path / "d.parquet", examples)
    _, shards = shards_of("parquet", path, tmp_path / "s", 10)
    assert [b for _, b, _ in rows_of(shards)] == [b for b, _ in examples]


def test_non_image_files_and_hidden_entries_ignored(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel, data in [
        ("a/1.png", digits(1)[0][0]),
        ("a/notes.txt", b"hi"),
        ("a/.DS_Store", b"junk"),
        ("b/sub/2.PNG", digits(2)[1][0]),
        ("README.md", b"readme"),
        ("__MACOSX/a/._1.png", b"fork"),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    ds = open_imagefolder(root)
    assert ds.labels == ["a", "b"] and ds.rows == 2
    assert [(e.where, e.label) for e in ds.examples] == [("a/1.png", 0), ("b/sub/2.PNG", 1)]


# ------------------------------------------------------------------- bad input


def test_corrupt_image_named_by_row(tmp_path: Path) -> None:
    examples = digits(40)
    examples[23] = (corrupt(examples[23][0]), examples[23][1])
    exc = failure("parquet", write_parquet(tmp_path / "d.parquet", examples), tmp_path / "s")
    assert exc.reason == "CorruptImage" and exc.message.startswith("row 23:")


def test_corrupt_image_named_by_path(tmp_path: Path) -> None:
    examples = by_class(digits(40))
    examples[11] = (b"GIF89a not really", examples[11][1])
    archive = write_imagefolder(tmp_path / "d.zip", examples, fmt="zip", wrap="top")
    exc = failure("imagefolder", archive, tmp_path / "s")
    assert exc.reason == "CorruptImage"
    assert exc.message.startswith(f"top/{examples[11][1]}/00011.png:")


def test_image_without_bytes_is_corrupt(tmp_path: Path) -> None:
    examples = digits(5)
    path = write_parquet(tmp_path / "d.parquet", examples)
    t = pq.read_table(path)
    images = t.column("image").to_pylist()
    images[2] = {"bytes": None, "path": "/etc/passwd"}  # a path-only image is never read
    images[3] = None
    t = t.set_column(0, "image", pa.array(images, type=t.schema.field("image").type))
    pq.write_table(t, path)
    exc = failure("parquet", path, tmp_path / "s")
    assert exc.reason == "CorruptImage" and exc.message.startswith("row 2:")


def test_image_too_large() -> None:
    with pytest.raises(WorkloadFailed) as exc_info:
        check_image(digits(1)[0][0], "row 0", max_pixels=100)
    assert exc_info.value.reason == "ImageTooLarge" and "16x16" in exc_info.value.message


def test_empty_parquet(tmp_path: Path) -> None:
    exc = failure("parquet", write_parquet(tmp_path / "d.parquet", []), tmp_path / "s")
    assert exc.reason == "EmptyDataset"


def test_empty_imagefolder(tmp_path: Path) -> None:
    archive = write_imagefolder(tmp_path / "d.zip", [], fmt="zip")
    exc = failure("imagefolder", archive, tmp_path / "s")
    assert exc.reason == "EmptyDataset"


@pytest.mark.parametrize(
    "label,as_str,expected",
    [
        (10, False, "label 10 is outside 0..9"),
        (-1, False, "label -1 is outside"),
        ("eleven", True, "label 'eleven' is not declared"),
        (None, False, "label is missing"),
    ],
)
def test_label_outside_declared_set(
    tmp_path: Path, label: object, as_str: bool, expected: str
) -> None:
    path = write_parquet(tmp_path / "d.parquet", digits(30), label_as="str" if as_str else "int")
    t = pq.read_table(path)
    labels = t.column("label").to_pylist()
    labels[17] = label
    t = t.set_column(1, "label", pa.array(labels, type=t.schema.field("label").type))
    pq.write_table(t, path)
    exc = failure("parquet", path, tmp_path / "s")
    assert exc.reason == "UnknownLabel"
    assert exc.message.startswith("row 17:") and expected in exc.message


@pytest.mark.parametrize("column", ["image", "label"])
def test_missing_column(tmp_path: Path, column: str) -> None:
    path = write_parquet(tmp_path / "d.parquet", digits(5), drop=column)
    exc = failure("parquet", path, tmp_path / "s")
    assert exc.reason == "BadSchema" and repr(column) in exc.message


def test_wrong_column_types(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image": [1, 2], "label": [0, 1]}), tmp_path / "a.parquet")
    assert failure("parquet", tmp_path / "a.parquet", tmp_path / "s").reason == "BadSchema"
    pq.write_table(pa.table({"image": [b"x"], "label": [0.5]}), tmp_path / "b.parquet")
    exc = failure("parquet", tmp_path / "b.parquet", tmp_path / "s")
    assert exc.reason == "BadSchema" and "'label'" in exc.message


@pytest.mark.parametrize("form", ["parquet", "imagefolder"])
def test_not_a_parquet_file(tmp_path: Path, form: str) -> None:
    (tmp_path / "d.parquet").write_bytes(b"definitely not parquet")
    exc = failure(form, tmp_path / "d.parquet", tmp_path / "s")
    assert exc.reason == "BadFormat"
    # What was found, and what is accepted.
    assert "b'definite'" in exc.message and "PAR1" in exc.message
    assert "not a .tar, .tar.gz or .zip archive" in exc.message
    assert "data/<split>-NNNNN-of-NNNNN.parquet" in exc.message
    # Zip magic bytes, damaged: the archive's own complaint, not Parquet's.
    (tmp_path / "e.parquet").write_bytes(b"PK\x03\x04 definitely not parquet")
    exc = failure(form, tmp_path / "e.parquet", tmp_path / "t")
    assert exc.reason == "BadArchive" and "damaged zip archive" in exc.message
    assert "not a Parquet file" in exc.message


def test_unsafe_imagefolder_refused(tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        zf.writestr("0/1.png", digits(1)[0][0])
        zf.writestr("../../1.png", digits(1)[0][0])
    exc = failure("imagefolder", tmp_path / "d.zip", tmp_path / "s")
    assert exc.reason == "UnsafeArchive" and "../../1.png" in exc.message


# ---------------------------------------------------------- determinism, reuse


def test_shards_are_deterministic(tmp_path: Path) -> None:
    examples = digits(70)
    path = write_parquet(tmp_path / "d.parquet", examples)
    _, a = shards_of("parquet", path, tmp_path / "a", 32)
    # Different input row groups, same rows: same shards.
    other = write_parquet(tmp_path / "e.parquet", examples, row_group_rows=7)
    _, b = shards_of("parquet", other, tmp_path / "b", 32)
    assert [s.data for s in a] == [s.data for s in b]
    one = write_shard(5, [b for b, _ in examples[:3]], [1, 2, 3])
    assert one == write_shard(5, [b for b, _ in examples[:3]], [1, 2, 3])
    # No key-value metadata (nothing time-dependent can hide there).
    meta = pq.ParquetFile(io.BytesIO(a[0].data)).metadata
    assert meta.metadata is None
    assert meta.num_row_groups == 1 and meta.row_group(0).column(1).compression == "ZSTD"


@pytest.mark.parametrize("n,added", [(200, 20), (210, 21)])
def test_appended_rows_keep_leading_shards(tmp_path: Path, n: int, added: int) -> None:
    old = write_parquet(tmp_path / "old.parquet", digits(n))
    new = write_parquet(tmp_path / "new.parquet", digits(n + added))
    _, a = shards_of("parquet", old, tmp_path / "a", 50)
    _, b = shards_of("parquet", new, tmp_path / "b", 50)
    full = n // 50
    assert [s.sha256 for s in b[:full]] == [s.sha256 for s in a[:full]]
    assert not {s.sha256 for s in b[full:]} & {s.sha256 for s in a}
    assert sum(s.rows for s in b) == n + added


# ------------------------------------------------------------ the workload


ACCOUNT = "acme"


class Platform:
    """SQLite records and a folder of blobs, as `dyff up` has them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.records = SqliteRecordStore(tmp / "records.db")
        self.blobs = FileBlobStore(tmp / "blobs")

    def config(self, name: str) -> Path:
        path = self.tmp / f"{name}.json"
        path.write_text(
            json.dumps(
                {
                    "recordsUrl": f"sqlite://{self.tmp / 'records.db'}",
                    "blobsUrl": self.blobs.url,
                    "account": ACCOUNT,
                    "name": name,
                    "scratchDir": str(self.tmp),
                }
            )
        )
        return path

    def upload(
        self,
        name: str,
        form: DatasetForm,
        data: bytes,
        shard_rows: int = 40,
        split: str | None = None,
    ) -> Dataset:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        self.blobs.put(layout.upload_key(ACCOUNT, "Dataset", name, sha), data)
        source = DatasetSource(form=form, upload=UploadSource(sha256=sha, size_bytes=len(data)))
        return self.create(name, source, shard_rows, split)

    def create(
        self, name: str, source: DatasetSource, shard_rows: int = 40, split: str | None = None
    ) -> Dataset:
        ds = Dataset(
            metadata=ObjectMeta(name=name, namespace=ACCOUNT),
            spec=DatasetSpec(source=source, shard_rows=shard_rows, split=split),
        )
        return self.records.create(ds)[0]

    def ingest(self, name: str) -> tuple[int, Dataset]:
        rc = ingest_main(["--config", str(self.config(name))])
        return rc, self.records.get(Dataset, ACCOUNT, name)

    def shard_keys(self) -> set[str]:
        return {b.key for b in self.blobs.list(f"{layout.account_prefix(ACCOUNT)}/shards/")}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform(tmp_path)
    yield p
    p.records.close()


def shard_list(platform: Platform, ds: Dataset) -> list[Shard]:
    assert ds.status.shard_list is not None
    shards = shard_lists.shards_of(platform.blobs, ds)
    assert ds.status.shard_list.count == len(shards)
    return shards


def parquet_bytes(tmp: Path, examples: list[tuple[bytes, int]]) -> bytes:
    return write_parquet(tmp / "upload.parquet", examples).read_bytes()


def test_workload_ingests_upload(platform: Platform, tmp_path: Path) -> None:
    examples = digits(100)
    platform.upload("d1", "parquet", parquet_bytes(tmp_path, examples))
    rc, ds = platform.ingest("d1")
    assert rc == 0
    st = ds.status
    assert st.phase == "Ready" and st.rows == 100 and st.labels == DIGIT_NAMES
    ready = st.condition("Ready")
    assert ready is not None and ready.status == "True" and "(3 new)" in ready.message
    assert st.message == "100 rows in 3 shards, 10 classes"  # a single file: no split
    assert [(s.rows, s.first_row) for s in shard_list(platform, ds)] == [
        (40, 0),
        (40, 40),
        (20, 80),
    ]
    assert st.observed_generation == ds.metadata.generation
    keys = platform.shard_keys()
    assert keys == {layout.shard_key(ACCOUNT, s.sha256) for s in shard_list(platform, ds)}
    got = [r for s in shard_list(platform, ds) for r in rows_of([_load(platform, s.sha256)])]
    assert got == [(i, b, t) for i, (b, t) in enumerate(examples)]


def _load(platform: Platform, sha: str) -> ShardFile:
    import hashlib

    data = platform.blobs.get(layout.shard_key(ACCOUNT, sha))
    assert hashlib.sha256(data).hexdigest() == sha
    return ShardFile(sha, 0, 0, data)


def test_workload_imagefolder_and_reuse(platform: Platform, tmp_path: Path) -> None:
    examples = by_class(digits(80))
    platform.upload("p", "parquet", parquet_bytes(tmp_path, examples))
    folder = write_imagefolder(tmp_path / "f.tgz", examples).read_bytes()
    platform.upload("f", "imagefolder", folder)
    assert platform.ingest("p")[0] == 0
    rc, f = platform.ingest("f")
    assert rc == 0 and f.status.phase == "Ready"
    p = platform.records.get(Dataset, ACCOUNT, "p")
    assert f.status.shard_list == p.status.shard_list and f.status.labels == p.status.labels
    ready = f.status.condition("Ready")
    assert ready is not None and "(0 new)" in ready.message  # every shard reused


def test_workload_appended_rows_add_only_trailing_shards(
    platform: Platform, tmp_path: Path
) -> None:
    platform.upload("v1", "parquet", parquet_bytes(tmp_path, digits(200)), shard_rows=50)
    platform.upload("v2", "parquet", parquet_bytes(tmp_path, digits(220)), shard_rows=50)
    v1, v2 = platform.ingest("v1")[1], platform.ingest("v2")[1]
    assert shard_list(platform, v2)[:4] == shard_list(platform, v1)
    assert len(platform.shard_keys()) == 5


def test_workload_failure_leaves_no_shard(platform: Platform, tmp_path: Path) -> None:
    examples = digits(100)
    examples[90] = (corrupt(examples[90][0]), examples[90][1])
    platform.upload("bad", "parquet", parquet_bytes(tmp_path, examples))
    rc, ds = platform.ingest("bad")
    assert rc == 2
    st = ds.status
    assert st.phase == "Failed" and st.shard_list is None and st.rows is None
    ready = st.condition("Ready")
    assert ready is not None and ready.status == "False" and ready.reason == "CorruptImage"
    assert ready.message.startswith("row 90:")
    assert platform.shard_keys() == set()  # the two shards written before row 90 are gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ingest-")]  # scratch gone


def test_workload_failure_keeps_shards_of_other_datasets(
    platform: Platform, tmp_path: Path
) -> None:
    good = digits(80)
    platform.upload("good", "parquet", parquet_bytes(tmp_path, good))
    assert platform.ingest("good")[0] == 0
    before = platform.shard_keys()
    # Same first 80 rows (shared shards), 40 new good rows (a new shard), then a bad one.
    bad = digits(121)
    bad[120] = (corrupt(bad[120][0]), bad[120][1])
    platform.upload("bad", "parquet", parquet_bytes(tmp_path, bad))
    rc, ds = platform.ingest("bad")
    assert rc == 2 and ds.status.phase == "Failed"
    assert platform.shard_keys() == before


def test_workload_uri_source_inside_store(platform: Platform, tmp_path: Path) -> None:
    import hashlib

    data = parquet_bytes(tmp_path, digits(30))
    key = f"{layout.account_prefix(ACCOUNT)}/data/digits.parquet"
    platform.blobs.put(key, data)
    sha = hashlib.sha256(data).hexdigest()
    platform.create(
        "u", DatasetSource(form="parquet", uri=UriSource(uri=platform.blobs.uri(key), sha256=sha))
    )
    rc, ds = platform.ingest("u")
    assert rc == 0 and ds.status.rows == 30


@pytest.mark.parametrize(
    "uri,reason",
    [
        ("file:///etc/passwd", "UnsupportedSource"),
        ("gs://someone-elses-bucket/x", "UnsupportedSource"),
    ],
)
def test_workload_uri_outside_store_refused(platform: Platform, uri: str, reason: str) -> None:
    platform.create("u", DatasetSource(form="parquet", uri=UriSource(uri=uri, sha256="0" * 64)))
    rc, ds = platform.ingest("u")
    ready = ds.status.condition("Ready")
    assert rc == 2 and ready is not None and ready.reason == reason


def test_workload_source_digest_mismatch(platform: Platform, tmp_path: Path) -> None:
    data = parquet_bytes(tmp_path, digits(10))
    ds = platform.upload("m", "parquet", data)
    assert ds.spec.source.upload is not None
    # The blob under the declared key holds other bytes.
    platform.blobs.put(
        layout.upload_key(ACCOUNT, "Dataset", "m", ds.spec.source.upload.sha256), data + b"x"
    )
    rc, ds = platform.ingest("m")
    ready = ds.status.condition("Ready")
    assert rc == 2 and ready is not None and ready.reason == "SourceMismatch"


def test_workload_missing_upload(platform: Platform) -> None:
    source = DatasetSource(form="parquet", upload=UploadSource(sha256="a" * 64, size_bytes=5))
    platform.create("gone", source)
    rc, ds = platform.ingest("gone")
    ready = ds.status.condition("Ready")
    assert rc == 2 and ready is not None and ready.reason == "SourceNotFound"


def test_workload_as_a_process(platform: Platform, tmp_path: Path) -> None:
    """The real entry point, in a fresh interpreter: same shard digests as in-process."""
    examples = digits(50)
    data = parquet_bytes(tmp_path, examples)
    platform.upload("proc", "parquet", data)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dyff.workloads.ingest_dataset",
            "--config",
            str(platform.config("proc")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ds = platform.records.get(Dataset, ACCOUNT, "proc")
    _, local = shards_of("parquet", tmp_path / "upload.parquet", tmp_path / "s", 40)
    assert [s.sha256 for s in shard_list(platform, ds)] == [s.sha256 for s in local]


# ------------------------------------------------- the Hugging Face hub layout

TEST_A, TEST_B, TRAIN = digits(40), digits(30, start=40), digits(30, start=200)
HUB = {
    "data/test-00000-of-00002.parquet": TEST_A,
    "data/test-00001-of-00002.parquet": TEST_B,
    "data/train-00000-of-00001.parquet": TRAIN,
}


def hub_archive(tmp: Path, files: dict[str, list[Example]], fmt: str = "tar.gz", **kw: Any) -> Path:
    root = write_hub_folder(tmp / f"hub-{fmt}", files, **kw)
    return pack(root, tmp / f"hub.{fmt}")


def single_file_shards(tmp: Path, examples: list[Example], shard_rows: int) -> list[str]:
    """Digests of the same rows uploaded as one plain Parquet file."""
    path = write_parquet(tmp / "plain.parquet", examples, WORD_NAMES)
    return [s.sha256 for s in shards_of("parquet", path, tmp / "plain", shard_rows)[1]]


def hub_failure(
    tmp: Path, files: dict[str, list[Example]], split: str | None = None, **kw: Any
) -> WorkloadFailed:
    archive = hub_archive(tmp, files, **kw)
    with pytest.raises(WorkloadFailed) as exc_info:
        ds = open_dataset("parquet", archive, tmp / "s", split=split)
        list(iter_shards(ds, 16))
    return exc_info.value


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
@pytest.mark.parametrize("form", ["parquet", "imagefolder"])
def test_hub_layout_archive_reads_test_split_in_shard_order(
    tmp_path: Path, fmt: str, form: str
) -> None:
    archive = hub_archive(tmp_path, HUB, fmt)
    (tmp_path / "s").mkdir()
    # An archive of Parquet files alone is the hub layout even when called an imagefolder.
    ds = open_dataset(form, archive, tmp_path / "s")  # type: ignore[arg-type]
    assert ds.split == "test" and ds.rows == 70
    assert ds.labels == WORD_NAMES  # the ClassLabel's order, not sorted
    shards = list(iter_shards(ds, 25))
    # Both files, shard 00000 then 00001, as one dataset with global row ids: the same
    # shards as the same rows in one plain Parquet file.
    expected = TEST_A + TEST_B
    assert rows_of(shards) == [(i, b, t) for i, (b, t) in enumerate(expected)]
    assert [s.sha256 for s in shards] == single_file_shards(tmp_path, expected, 25)


@pytest.mark.parametrize("split", ["train", "default/train"])
def test_hub_layout_split_chosen(tmp_path: Path, split: str) -> None:
    archive = hub_archive(tmp_path, HUB)
    _, shards = shards_of_split(archive, tmp_path / "s", split)
    assert rows_of(shards) == [(i, b, t) for i, (b, t) in enumerate(TRAIN)]


def shards_of_split(
    path: Path, scratch: Path, split: str | None
) -> tuple[DatasetInput, list[ShardFile]]:
    scratch.mkdir(parents=True, exist_ok=True)
    ds = open_dataset("parquet", path, scratch, split=split)
    return ds, list(iter_shards(ds, 16))


def test_hub_layout_only_split_is_the_default(tmp_path: Path) -> None:
    archive = hub_archive(tmp_path, {"data/train-00000-of-00001.parquet": TRAIN})
    ds, shards = shards_of_split(archive, tmp_path / "s", None)
    assert ds.split == "train" and [t for _, _, t in rows_of(shards)] == [t for _, t in TRAIN]


@pytest.mark.parametrize(
    "files,split",
    [
        # The Hub's Parquet conversion: <config>/<split>/NNNN.parquet.
        (
            {
                "default/test/0000.parquet": TEST_A,
                "default/test/0001.parquet": TEST_B,
                "default/train/0000.parquet": TRAIN,
            },
            "test",
        ),
        # push_to_hub with a config name, and an older version's fingerprinted names.
        (
            {
                "plain_text/test-00000-of-00002-3f9a1c.parquet": TEST_A,
                "plain_text/test-00001-of-00002-0b7e2d.parquet": TEST_B,
                "plain_text/train-00000-of-00001-77aa00.parquet": TRAIN,
            },
            "test",
        ),
        # Numbered parts compare as numbers: shard_2 before shard_10.
        ({"data/test/shard_2.parquet": TEST_A, "data/test/shard_10.parquet": TEST_B}, "test"),
        # Hand-made: one file per split, in a folder that wraps it all.
        ({"digits/test.parquet": TEST_A + TEST_B, "digits/train.parquet": TRAIN}, "test"),
    ],
)
def test_hub_layout_variants(tmp_path: Path, files: dict[str, list[Example]], split: str) -> None:
    archive = hub_archive(tmp_path, files)
    ds, shards = shards_of_split(archive, tmp_path / "s", None)
    assert ds.split == split and ds.labels == WORD_NAMES
    assert rows_of(shards) == [(i, b, t) for i, (b, t) in enumerate(TEST_A + TEST_B)]


def test_hub_layout_several_configs(tmp_path: Path) -> None:
    files = {"a/test/0000.parquet": TEST_A, "b/test/0000.parquet": TEST_B}
    exc = hub_failure(tmp_path / "1", files)
    assert exc.reason == "BadLayout" and "a/test, b/test" in exc.message
    exc = hub_failure(tmp_path / "2", files, split="test")
    assert exc.reason == "BadLayout" and "several configs" in exc.message
    ds, _ = shards_of_split(hub_archive(tmp_path / "3", files), tmp_path / "3s", "b/test")
    assert ds.split == "b/test" and ds.rows == len(TEST_B)


def test_hub_layout_refusals_name_the_splits(tmp_path: Path) -> None:
    no_test = {
        "data/train-00000-of-00001.parquet": TRAIN,
        "data/validation-00000-of-00001.parquet": TEST_A,
    }
    exc = hub_failure(tmp_path / "1", no_test)
    assert exc.reason == "BadLayout"
    assert "found splits train, validation" in exc.message and "'test'" in exc.message
    exc = hub_failure(tmp_path / "2", HUB, split="dev")
    assert exc.reason == "BadLayout"
    assert (
        "'dev' is not in the dataset" in exc.message and "found splits: test, train" in exc.message
    )


def test_hub_layout_incomplete_split_refused(tmp_path: Path) -> None:
    files = {
        "data/test-00000-of-00003.parquet": TEST_A,
        "data/test-00002-of-00003.parquet": TEST_B,
    }
    exc = hub_failure(tmp_path, files)
    assert exc.reason == "BadLayout" and "shards 00001 of 00003 are missing" in exc.message


def test_hub_layout_files_must_agree(tmp_path: Path) -> None:
    swapped = [WORD_NAMES[1], WORD_NAMES[0], *WORD_NAMES[2:]]
    root = write_hub_folder(tmp_path / "hub", HUB)
    write_hf_parquet(root / "data/test-00001-of-00002.parquet", TEST_B, swapped)
    exc = failure("parquet", pack(root, tmp_path / "hub.tar.gz"), tmp_path / "s")
    assert exc.reason == "BadSchema"
    assert exc.message.startswith("data/test-00001-of-00002.parquet differs from")
    assert "class 0 is named 'one' here, 'zero' there" in exc.message
    # Another image column in one file.
    write_hf_parquet(root / "data/test-00001-of-00002.parquet", TEST_B, image="image")
    exc = failure("parquet", pack(root, tmp_path / "hub2.tar.gz"), tmp_path / "s2")
    assert exc.reason == "BadSchema" and "'image'/'digit' here, 'img'/'digit' there" in exc.message


def test_hub_layout_rows_named_by_file(tmp_path: Path) -> None:
    bad = list(TEST_B)
    bad[5] = (corrupt(bad[5][0]), bad[5][1])
    exc = hub_failure(tmp_path, {**HUB, "data/test-00001-of-00002.parquet": bad})
    assert exc.reason == "CorruptImage"
    assert exc.message.startswith("row 45 (data/test-00001-of-00002.parquet row 5):")


@pytest.mark.parametrize("style", ["new", "old"])
def test_columns_found_by_feature_type(tmp_path: Path, style: str) -> None:
    """An Image column and a ClassLabel column by any name, in either metadata shape."""
    path = write_hf_parquet(
        tmp_path / "d.parquet", TEST_A, image="pixel_values", label="fine_label", style=style
    )
    ds, shards = shards_of("parquet", path, tmp_path / "s", 16)
    assert ds.labels == WORD_NAMES and ds.split is None
    assert rows_of(shards) == [(i, b, t) for i, (b, t) in enumerate(TEST_A)]


def test_columns_found_by_name_without_metadata(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", TEST_A, None)
    t = pq.read_table(path).rename_columns(["img", "labels"]).replace_schema_metadata(None)
    pq.write_table(t, path)
    ds, shards = shards_of("parquet", path, tmp_path / "s", 16)
    assert ds.labels == [str(i) for i in range(10)]
    assert [t for _, _, t in rows_of(shards)] == [t for _, t in TEST_A]


def write_columns(path: Path, columns: dict[str, str], features: dict[str, object]) -> Path:
    """TEST_A as a Parquet file with the given columns, each an image ("img") or label
    ("label") column, and the given huggingface features."""
    images = pa.array(
        [{"bytes": b, "path": None} for b, _ in TEST_A],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    labels = pa.array([t for _, t in TEST_A], type=pa.int64())
    table = pa.table({n: images if k == "img" else labels for n, k in columns.items()})
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


IMAGE, CLASSES = {"_type": "Image"}, {"names": WORD_NAMES, "_type": "ClassLabel"}


@pytest.mark.parametrize(
    "columns,features,expected",
    [
        (
            {"a": "img", "b": "img", "digit": "label"},
            {"a": IMAGE, "b": IMAGE, "digit": CLASSES},
            "several Image columns (a, b)",
        ),
        (
            {"img": "img", "fine_label": "label", "coarse_label": "label"},
            {"img": IMAGE, "fine_label": CLASSES, "coarse_label": CLASSES},
            "several ClassLabel columns (fine_label, coarse_label)",
        ),
        ({"img": "img", "digit": "label"}, {"img": IMAGE}, "missing column 'label'"),
        ({"pic": "img", "digit": "label"}, {"digit": CLASSES}, "missing column 'image'"),
        ({"image": "img", "img": "img", "label": "label"}, {}, "both 'image' or 'img'"),
    ],
)
def test_columns_ambiguous_or_missing_named(
    tmp_path: Path, columns: dict[str, str], features: dict[str, object], expected: str
) -> None:
    path = write_columns(tmp_path / "d.parquet", columns, features)
    exc = failure("parquet", path, tmp_path / "s")
    assert exc.reason == "BadSchema" and expected in exc.message
    assert f"(columns: {', '.join(columns)})" in exc.message  # what was found


def test_class_label_beside_label_prefers_label(tmp_path: Path) -> None:
    coarse = {"names": [f"c{i}" for i in range(10)], "_type": "ClassLabel"}
    columns = {"coarse_label": "label", "img": "img", "label": "label"}
    features = {"img": IMAGE, "label": CLASSES, "coarse_label": coarse}
    ds, _ = shards_of(
        "parquet", write_columns(tmp_path / "d.parquet", columns, features), tmp_path / "s", 16
    )
    assert ds.labels == WORD_NAMES


def test_archive_without_parquet_names_what_was_found(tmp_path: Path) -> None:
    root = tmp_path / "stuff"
    root.mkdir()
    for name in ("README.md", "notes.txt", "x.csv"):
        (root / name).write_text("a,b\n")
    archive = pack(root, tmp_path / "stuff.tar.gz")
    for form in ("parquet", "imagefolder"):
        exc = failure(form, archive, tmp_path / f"s-{form}")
        assert exc.reason == "BadLayout"
        assert "3 files: README.md, notes.txt, x.csv" in exc.message
        assert "data/<split>-NNNNN-of-NNNNN.parquet" in exc.message and "ImageFolder" in exc.message


def test_save_to_disk_output_refused_with_advice(tmp_path: Path) -> None:
    root = tmp_path / "saved"
    (root / "test").mkdir(parents=True)
    (root / "test" / "data-00000-of-00001.arrow").write_bytes(b"arrow")
    (root / "test" / "state.json").write_text("{}")
    (root / "dataset_dict.json").write_text('{"splits": ["test"]}')
    exc = failure("parquet", pack(root, tmp_path / "saved.zip"), tmp_path / "s")
    assert exc.reason == "BadLayout" and "save_to_disk" in exc.message
    assert "test/data-00000-of-00001.arrow" in exc.message


def test_imagefolder_and_parquet_confusion(tmp_path: Path) -> None:
    examples = by_class(digits(30))
    folder = write_imagefolder(tmp_path / "f.zip", examples, fmt="zip")
    # An ImageFolder archive declared parquet is read as the ImageFolder it is.
    _, a = shards_of("parquet", folder, tmp_path / "a", 16)
    _, b = shards_of("imagefolder", folder, tmp_path / "b", 16)
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    # Parquet files and images together: parquet reads the Parquet files; imagefolder refuses.
    root = write_hub_folder(tmp_path / "both", {"data/test-00000-of-00001.parquet": TEST_A})
    (root / "images").mkdir()
    (root / "images" / "sample.png").write_bytes(TEST_A[0][0])
    archive = pack(root, tmp_path / "both.tar.gz")
    ds, _ = shards_of("parquet", archive, tmp_path / "c", 16)
    assert ds.rows == len(TEST_A) and ds.split == "test"
    exc = failure("imagefolder", archive, tmp_path / "d")
    assert exc.reason == "BadLayout"
    assert "data/test-00000-of-00001.parquet" in exc.message and "images/sample.png" in exc.message
    assert "form parquet" in exc.message


def test_split_refused_where_there_are_no_splits(tmp_path: Path) -> None:
    single = write_parquet(tmp_path / "d.parquet", TEST_A)
    with pytest.raises(WorkloadFailed) as exc_info:
        open_dataset("parquet", single, tmp_path / "s", split="test")
    assert exc_info.value.reason == "BadLayout" and "single Parquet file" in exc_info.value.message
    folder = write_imagefolder(tmp_path / "f.zip", by_class(TEST_A), fmt="zip")
    with pytest.raises(WorkloadFailed) as exc_info:
        open_dataset("imagefolder", folder, tmp_path / "t", split="test")
    assert exc_info.value.reason == "BadLayout" and "ImageFolder" in exc_info.value.message


def test_workload_hub_layout_status_message(platform: Platform, tmp_path: Path) -> None:
    data = hub_archive(tmp_path, HUB).read_bytes()
    platform.upload("hub", "parquet", data)
    rc, ds = platform.ingest("hub")
    assert rc == 0 and ds.status.phase == "Ready" and ds.status.labels == WORD_NAMES
    assert ds.status.message == "70 rows in 2 shards, 10 classes (split test)"
    ready = ds.status.condition("Ready")
    assert (
        ready is not None
        and ready.message == "70 rows in 2 shards (2 new), 10 classes (split test)"
    )
    # The split on the spec flows through to the workload.
    platform.upload("hub-train", "parquet", data, split="train")
    rc, ds = platform.ingest("hub-train")
    assert rc == 0 and ds.status.message == "30 rows in 1 shard, 10 classes (split train)"
    platform.upload("hub-dev", "parquet", data, split="dev")
    rc, ds = platform.ingest("hub-dev")
    ready = ds.status.condition("Ready")
    assert rc == 2 and ds.status.phase == "Failed" and ds.status.shard_list is None
    assert ready is not None and ready.reason == "BadLayout"
    assert ds.status.message is not None and "found splits: test, train" in ds.status.message
    assert len(platform.shard_keys()) == 3  # the two test shards and the train one


def test_split_on_the_spec(tmp_path: Path) -> None:
    source = DatasetSource(form="parquet", upload=UploadSource(sha256="a" * 64, size_bytes=5))
    spec = DatasetSpec.model_validate({"source": source.wire(), "split": "plain_text/test"})
    assert spec.split == "plain_text/test" and spec.wire()["split"] == "plain_text/test"
    for bad in ("../test", "", "a b", "x" * 201):
        with pytest.raises(ValidationError):
            DatasetSpec.model_validate({"source": source.wire(), "split": bad})
    # Immutable, in pydantic and in the CRD's CEL alike.
    other = spec.model_copy(update={"split": "train"})
    assert immutable_violations(DatasetSpec, spec, other) == ["spec.split: split is immutable"]
    assert immutable_violations(DatasetSpec, spec, spec) == []
    crd = crdgen.crd(Dataset)
    doc: dict[str, Any] = {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "d", "namespace": ACCOUNT},
        "spec": {"source": source.wire()},
    }
    with_split = {**doc, "spec": {**doc["spec"], "split": "test"}}
    assert crd_validation.validate(crd, doc, old=doc) == []
    assert crd_validation.validate(crd, with_split, old=with_split) == []
    assert any("split is immutable" in e for e in crd_validation.validate(crd, with_split, old=doc))
    changed = {**doc, "spec": {**doc["spec"], "split": "train"}}
    assert any(
        "split is immutable" in e for e in crd_validation.validate(crd, changed, old=with_split)
    )
