"""Dataset attributes at ingestion (issue 12): every layout gives an attribute file per
shard with the derived attributes and the dataset's own columns, the shards themselves stay
byte-identical, and hostile metadata files are refused with a named reason."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from PIL import Image

from dyff import datasets, layout
from dyff.datasets import (
    BAD_METADATA,
    DERIVED_ATTRIBUTES,
    check_image,
    iter_shards,
    open_dataset,
    read_attributes,
    write_shard,
)
from dyff.errors import WorkloadFailed
from dyff.schema import Dataset, DatasetSource, DatasetSpec, ObjectMeta, UploadSource
from dyff.shard_lists import shards_of
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from dyff.untrusted import NestedTooDeeply
from dyff.workloads.ingest_dataset import main as ingest_main
from tests.workloads.dataset_fixtures import (
    DIGIT_NAMES,
    by_class,
    digits,
    imagefolder_members,
    jpeg,
    png,
    write_archive,
    write_imagefolder,
    write_parquet,
    write_parquet_with_columns,
)


def attributes_of(form: str, path: Path, scratch: Path, shard_rows: int = 16) -> pl.DataFrame:
    scratch.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(form, path, scratch)  # type: ignore[arg-type]
    shards = list(iter_shards(ds, shard_rows))
    frames = []
    for s in shards:
        assert s.attributes is not None and s.attributes_sha256 is not None
        table = read_attributes(s.attributes)
        assert table.column_names == ["row_id", *ds.attributes]
        frames.append(pl.from_arrow(table))
    out = pl.concat(frames)
    assert isinstance(out, pl.DataFrame)
    assert out["row_id"].to_list() == list(range(ds.rows))
    return out


# ------------------------------------------------------------ derived attributes


def test_derived_attributes_of_an_image() -> None:
    dark_wide = np.full((20, 50, 3), 10, np.uint8)
    dark_wide[..., 0] = 40  # a red tint: colour
    info = check_image(jpeg(dark_wide), "x")
    assert info.derived() == (50, 20, "landscape", "dark", "colour")
    bright_tall = np.full((60, 30), 230, np.uint8)
    assert check_image(png(bright_tall), "y").derived() == (
        30, 60, "portrait", "very_bright", "grayscale"
    )  # fmt: skip
    # RGB whose channels are equal is grayscale; 100x105 is square (within 1.1).
    grey_rgb = np.repeat(np.full((100, 105, 1), 150, np.uint8), 3, axis=2)
    assert check_image(png(grey_rgb), "z").derived() == (105, 100, "square", "bright", "grayscale")
    assert datasets.brightness_bucket(64.0) == "dim" and datasets.brightness_bucket(63.9) == "dark"


def test_exif_orientation_swaps_width_and_height() -> None:
    im = Image.fromarray(np.full((20, 40, 3), 128, np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90: the model sees it 20 wide, 40 tall
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    assert check_image(buf.getvalue(), "r").derived()[:3] == (20, 40, "portrait")


# ------------------------------------------------------------ each layout


def test_parquet_extra_features_become_attributes(tmp_path: Path) -> None:
    examples = digits(40)
    n = len(examples)
    extra = {
        "note": pa.array([f"n{i}" for i in range(n)]),
        "site": pa.array([i % 3 for i in range(n)], type=pa.int8()),
        "weight": pa.array([i / 4 for i in range(n)], type=pa.float32()),
        "flag": pa.array([i % 2 == 0 for i in range(n)]),
        "coarse": pa.array([i % 2 for i in range(n)], type=pa.int64()),
        "long": pa.array(["x" * 1000] * n),
        "tags": pa.array([["a", "b"]] * n),  # nested: skipped
        "blob": pa.array([b"\x00"] * n),  # binary: skipped
        "width": pa.array([1] * n),  # a derived name: skipped
        "bad name!": pa.array([1] * n),  # not a plain name: skipped
    }
    features = {"coarse": {"_type": "ClassLabel", "names": ["even", "odd"]}}
    path = write_parquet_with_columns(tmp_path / "d.parquet", examples, extra, features)
    frame = attributes_of("parquet", path, tmp_path / "s")
    assert frame.columns == [
        "row_id", *DERIVED_ATTRIBUTES, "note", "site", "weight", "flag", "coarse", "long"
    ]  # fmt: skip
    assert frame.schema["site"] == pl.Int64 and frame.schema["weight"] == pl.Float64
    assert frame.schema["flag"] == pl.Boolean
    assert frame["note"].to_list() == [f"n{i}" for i in range(n)]
    assert frame["site"].to_list() == [i % 3 for i in range(n)]
    assert frame["coarse"].to_list() == [["even", "odd"][i % 2] for i in range(n)]
    assert set(frame["long"].str.len_chars().to_list()) == {datasets.MAX_ATTRIBUTE_CHARS}
    assert frame["width"].to_list() == [16] * n  # the derived width, not the column
    assert set(frame["colour"].to_list()) == {"grayscale"}


def test_parquet_without_extra_columns_has_the_derived_attributes(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", digits(20))
    frame = attributes_of("parquet", path, tmp_path / "s")
    assert frame.columns == ["row_id", *DERIVED_ATTRIBUTES]
    assert frame.null_count().sum_horizontal().item() == 0


def test_imagefolder_subfolders(tmp_path: Path) -> None:
    examples = by_class(digits(30))
    members = [
        (f"{DIGIT_NAMES[t]}/{'cam' + str(i % 2) + '/' if i % 3 else ''}{i:05d}.png", b)
        for i, (b, t) in enumerate(examples)
    ]
    archive = write_archive(tmp_path / "f.tar.gz", members)
    frame = attributes_of("imagefolder", archive, tmp_path / "s")
    assert frame.columns == ["row_id", *DERIVED_ATTRIBUTES, "subfolder"]
    # Rows are ordered by class, then path: compare as sets of (subfolder) per class.
    expected = sorted(
        ((name.split("/")[0], name.split("/")[1] if name.count("/") == 2 else None)
         for name, _ in members),
        key=lambda x: (x[0], str(x[1])),
    )  # fmt: skip
    got = sorted(
        zip([DIGIT_NAMES[t] for _, t in examples], frame["subfolder"].to_list(), strict=True),
        key=lambda x: (x[0], str(x[1])),
    )
    assert got == expected


def _metadata_rows(members: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    return [
        {"file_name": name, "lighting": "night" if i % 4 == 0 else "day", "seq": i}
        for i, (name, _) in enumerate(members)
        if i != 5  # one image without a row
    ]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("wrap", [None, "digits"])
def test_imagefolder_metadata_file(tmp_path: Path, kind: str, wrap: str | None) -> None:
    examples = by_class(digits(24))
    members = imagefolder_members(examples)
    rows = _metadata_rows(members)
    if kind == "csv":
        text = "file_name,lighting,seq\n" + "".join(
            f"{r['file_name']},{r['lighting']},{r['seq']}\n" for r in rows
        )
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    prefix = f"{wrap}/" if wrap else ""
    archive = write_archive(
        tmp_path / "f.tar.gz",
        [(prefix + n, b) for n, b in members] + [(f"{prefix}metadata.{kind}", text.encode())],
    )
    ds = open_dataset("imagefolder", archive, tmp_path / "s")
    assert ds.labels == DIGIT_NAMES[: len(ds.labels)]  # the metadata file is no class
    frame = attributes_of("imagefolder", archive, tmp_path / "s2")
    assert frame.columns == ["row_id", *DERIVED_ATTRIBUTES, "lighting", "seq"]
    assert frame.schema["seq"] == pl.Int64
    # Rows are read in the members' order here (by class, then name).
    lighting = ["night" if i % 4 == 0 else "day" for i in range(len(members))]
    lighting[5] = None  # type: ignore[call-overload]
    assert frame["lighting"].to_list() == lighting
    assert frame["seq"].to_list()[4:7] == [4, None, 6]


def test_metadata_in_a_class_folder_is_relative_to_it(tmp_path: Path) -> None:
    examples = by_class(digits(20))
    members = imagefolder_members(examples)
    zero = [n for n, _ in members if n.startswith("0/")]
    text = "file_name,cam\n" + "".join(f"{n.split('/', 1)[1]},a\n" for n in zero)
    archive = write_archive(tmp_path / "f.tar.gz", [*members, ("0/metadata.csv", text.encode())])
    frame = attributes_of("imagefolder", archive, tmp_path / "s")
    assert frame["cam"].to_list() == ["a"] * len(zero) + [None] * (len(members) - len(zero))


# ------------------------------------------------------------ shards unchanged


def test_shard_digests_are_what_write_shard_gives(tmp_path: Path) -> None:
    """The shards' bytes and sha256 are `write_shard`'s alone: attributes (derived, extra
    columns, metadata) never enter them, so predictions cached by shard digest stay valid."""
    examples = by_class(digits(50))
    expected = [
        write_shard(first, [b for b, _ in examples[first : first + 16]],
                    [t for _, t in examples[first : first + 16]]).sha256
        for first in range(0, 50, 16)
    ]  # fmt: skip
    plain = write_imagefolder(tmp_path / "plain.tar.gz", examples)
    members = imagefolder_members(examples)
    text = "file_name,lighting\n" + "".join(f"{n},x{i % 3}\n" for i, (n, _) in enumerate(members))
    with_meta = write_archive(tmp_path / "meta.tar.gz", [*members, ("metadata.csv", text.encode())])
    parquet = write_parquet_with_columns(
        tmp_path / "d.parquet", examples, {"note": pa.array([str(i) for i in range(50)])}
    )
    digests = {}
    attributes = {}
    for name, form, path in [
        ("plain", "imagefolder", plain),
        ("meta", "imagefolder", with_meta),
        ("parquet", "parquet", parquet),
    ]:
        (tmp_path / name).mkdir()
        ds = open_dataset(form, path, tmp_path / name)  # type: ignore[arg-type]
        shards = list(iter_shards(ds, 16))
        digests[name] = [s.sha256 for s in shards]
        attributes[name] = [s.attributes_sha256 for s in shards]
    assert digests["plain"] == digests["meta"] == digests["parquet"] == expected
    # Other attributes, other attribute files (never one overwriting the other).
    assert not set(attributes["plain"]) & set(attributes["meta"])
    assert not set(attributes["meta"]) & set(attributes["parquet"])


# ------------------------------------------------------------ hostile metadata


def _folder_with(tmp_path: Path, name: str, data: bytes) -> Path:
    members = imagefolder_members(by_class(digits(10)))
    return write_archive(tmp_path / "f.tar.gz", [*members, (name, data)])


def _refused(tmp_path: Path, name: str, data: bytes) -> WorkloadFailed:
    archive = _folder_with(tmp_path, name, data)
    with pytest.raises(WorkloadFailed) as info:
        ds = open_dataset("imagefolder", archive, tmp_path / "s")
        list(iter_shards(ds, 16))
    assert info.value.reason == BAD_METADATA, info.value
    return info.value


NESTED = b'{"file_name": "0/00000.png", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("metadata.jsonl", NESTED, "nested"),
        ("metadata.jsonl", b'{"file_name": 7}\n', "file_name must be a non-empty string"),
        ("metadata.jsonl", b'["0/00000.png"]\n', "must be a JSON object"),
        ("metadata.jsonl", b"{not json\n", "not valid JSON"),
        (
            "metadata.jsonl",
            b'{"file_name": "0/00000.png", "v": 1}\n{"file_name": "1/00001.png", "v": "a"}\n',
            "holds both int and str",
        ),
        ("metadata.csv", b"file_name,a\n0/00000.png,1,2\n", "3 fields, the header has 2"),
        ("metadata.csv", b"a,b\n1,2\n", "no file_name column"),
        ("metadata.csv", b"file_name\n0/00000.png\n0/00000.png\n", "appears twice"),
        ("metadata.csv", b"file_name\n../../etc/passwd\n", "leaves the metadata file's folder"),
        ("metadata.csv", b"file_name\n/etc/passwd\n", "leaves the metadata file's folder"),
        ("metadata.csv", b"file_name,a\n0/00000.png,\xff\xfe\n", "not UTF-8"),
        ("metadata.csv", b'file_name,a\n0/00000.png,"' + b"x" * 200_000 + b'"\n', "not valid CSV"),
        ("metadata.csv", ",".join(f"c{i}" for i in range(300)).encode() + b"\n", "300 columns"),
    ],
    ids=[
        "deeply-nested", "file-name-int", "line-not-object", "bad-json", "mixed-types",
        "csv-ragged", "csv-no-file-name", "duplicate", "traversal", "absolute", "not-utf8",
        "huge-cell", "too-many-columns",
    ],
)  # fmt: skip
def test_hostile_metadata_is_refused(tmp_path: Path, name: str, data: bytes, says: str) -> None:
    exc = _refused(tmp_path, name, data)
    assert name in exc.message
    if says == "300 columns":
        says = f"more than {datasets.MAX_METADATA_COLUMNS} columns"
    assert says in exc.message, exc.message


def test_deep_nesting_is_named_as_such(tmp_path: Path) -> None:
    archive = _folder_with(tmp_path, "metadata.jsonl", NESTED)
    with pytest.raises(NestedTooDeeply):
        open_dataset("imagefolder", archive, tmp_path / "s")


def test_huge_metadata_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "MAX_METADATA_BYTES", 1000)
    text = b"file_name,a\n" + b"0/00000.png,1\n" * 100
    exc = _refused(tmp_path, "metadata.csv", text)
    assert "above what metadata files may hold (1000)" in exc.message


def test_both_metadata_kinds_in_one_folder_are_refused(tmp_path: Path) -> None:
    members = imagefolder_members(by_class(digits(10)))
    archive = write_archive(
        tmp_path / "f.tar.gz",
        [*members, ("metadata.csv", b"file_name\n"), ("metadata.jsonl", b"")],
    )
    with pytest.raises(WorkloadFailed, match=r"both metadata\.csv and metadata\.jsonl") as info:
        open_dataset("imagefolder", archive, tmp_path / "s")
    assert info.value.reason == BAD_METADATA


def test_nested_metadata_columns_are_skipped_not_refused(tmp_path: Path) -> None:
    members = imagefolder_members(by_class(digits(10)))
    lines = [json.dumps({"file_name": n, "box": [1, 2], "who": "a"}) for n, _ in members]
    archive = write_archive(
        tmp_path / "f.tar.gz", [*members, ("metadata.jsonl", "\n".join(lines).encode())]
    )
    frame = attributes_of("imagefolder", archive, tmp_path / "s")
    assert frame.columns == ["row_id", *DERIVED_ATTRIBUTES, "who"]


# ------------------------------------------------------------ the workload


def test_workload_stores_attribute_files_and_lists_the_columns(tmp_path: Path) -> None:
    records = SqliteRecordStore(tmp_path / "records.db")
    blobs = FileBlobStore(tmp_path / "blobs")
    try:
        import hashlib

        members = imagefolder_members(by_class(digits(30)))
        text = "file_name,lighting\n" + "".join(
            f"{n},l{i % 2}\n" for i, (n, _) in enumerate(members)
        )
        data = write_archive(
            tmp_path / "f.tar.gz", [*members, ("metadata.csv", text.encode())]
        ).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        blobs.put(layout.upload_key("acme", "Dataset", "d", sha), data)
        source = DatasetSource(
            form="imagefolder", upload=UploadSource(sha256=sha, size_bytes=len(data))
        )
        records.create(
            Dataset(
                metadata=ObjectMeta(name="d", namespace="acme"),
                spec=DatasetSpec(source=source, shard_rows=12),
            )
        )
        config = tmp_path / "c.json"
        config.write_text(
            json.dumps(
                {
                    "recordsUrl": f"sqlite://{tmp_path / 'records.db'}",
                    "blobsUrl": blobs.url,
                    "account": "acme",
                    "name": "d",
                    "scratchDir": str(tmp_path),
                }
            )
        )
        assert ingest_main(["--config", str(config)]) == 0
        ds = records.get(Dataset, "acme", "d")
        assert ds.status.attributes == [*DERIVED_ATTRIBUTES, "lighting"]
        ready = ds.status.condition("Ready")
        assert ready is not None and "(3 new)" in ready.message
        shards = shards_of(blobs, ds)
        assert len(shards) == 3
        for s in shards:
            assert s.attributes is not None
            raw = blobs.get(layout.attributes_key("acme", s.sha256, s.attributes))
            assert hashlib.sha256(raw).hexdigest() == s.attributes
            table = read_attributes(raw)
            assert table.column("row_id").to_pylist() == list(
                range(s.first_row, s.first_row + s.rows)
            )
    finally:
        records.close()


def test_metadata_with_far_more_rows_than_images_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "METADATA_SPARE_ROWS", 5)
    text = b"file_name\n" + b"".join(b"x%d.png\n" % i for i in range(16))
    exc = _refused(tmp_path, "metadata.csv", text)  # 10 images + 5 spare
    assert "more than 15 rows" in exc.message
