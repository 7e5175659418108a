"""Dataset ingestion as pure functions: read a user's dataset, check it, cut it into shards.

Two input forms, one output. A *parquet* dataset is in the Hugging Face
`datasets` layout (an `image` struct column `{bytes, path}`, a `label` column
of ints or strings, class names from the file's `huggingface` metadata); an
*imagefolder* dataset is an archive with one folder per class of PNG/JPEG
files. Both become content-addressed Parquet shards of `shard_rows` rows with
columns `row_id`, `image` (the original encoded bytes) and `label` (an index
into the label list).

Shards are written deterministically (fixed writer options, nothing
time-dependent), so the same rows always give the same bytes and the same
sha256: a dataset that appends rows to an ingested one shares its leading
shards, and every cache keyed by shard digest is reused. Row order is the
input order: the Parquet file's, or for an imagefolder (class folder name,
path) in sorted order.

Every image is decoded once with Pillow (PNG and JPEG decoders only) and kept
as it came. Memory stays bounded by one input row group plus one shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from dyff.archives import DEFAULT_LIMITS, ArchiveLimits, safe_extract
from dyff.schema import Shard
from dyff.workloads.common import WorkloadFailed

log = logging.getLogger("dyff.datasets")

# Reasons a dataset fails with (Ready=False, reason=…).
BAD_SCHEMA = "BadSchema"
BAD_FORMAT = "BadFormat"
CORRUPT_IMAGE = "CorruptImage"
IMAGE_TOO_LARGE = "ImageTooLarge"
EMPTY_DATASET = "EmptyDataset"
UNKNOWN_LABEL = "UnknownLabel"

IMAGE_FORMATS = ("PNG", "JPEG")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# 8192 x 8192: far above any classification input, far below Pillow's bomb limit.
MAX_PIXELS = 8192 * 8192
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_LABELS = 100_000
READ_BATCH_ROWS = 256

# ------------------------------------------------------------- shard format

# No key-value metadata at all (store_schema=False drops Arrow's serialized schema
# too): the Parquet types alone say it all, and less in the footer means less that
# could vary between writers.
SHARD_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
    ]
)
# Fixed so that the same rows give byte-identical files. Changing any of these
# (or pyarrow's version, which the footer's created_by records) changes every
# shard digest: that costs reuse, never correctness.
SHARD_ROW_GROUP_ROWS = 1024
SHARD_WRITER_OPTIONS: dict[str, Any] = {
    "version": "2.6",
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": False,
    "write_statistics": ["row_id", "label"],
    "data_page_size": 1024 * 1024,
    "data_page_version": "1.0",
    "store_schema": False,
    "write_page_index": False,
    "write_page_checksum": False,
}


@dataclass(frozen=True)
class ShardFile:
    """One written shard: its bytes and where it sits in the dataset."""

    sha256: str
    rows: int
    first_row: int
    data: bytes

    def shard(self) -> Shard:
        return Shard(sha256=self.sha256, rows=self.rows, first_row=self.first_row)


def write_shard(first_row: int, images: list[bytes], labels: list[int]) -> ShardFile:
    """Encode rows `first_row …` as one deterministic Parquet file."""
    n = len(images)
    table = pa.table(
        {
            "row_id": pa.array(range(first_row, first_row + n), type=pa.int64()),
            "image": pa.array(images, type=pa.binary()),
            "label": pa.array(labels, type=pa.int32()),
        },
        schema=SHARD_SCHEMA,
    )
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, SHARD_SCHEMA, **SHARD_WRITER_OPTIONS) as writer:
        writer.write_table(table, row_group_size=SHARD_ROW_GROUP_ROWS)
    data = buf.getvalue()
    return ShardFile(hashlib.sha256(data).hexdigest(), n, first_row, data)


def read_shard(source: bytes | Path | str) -> pa.Table:
    """A shard as an Arrow table (row_id int64, image binary, label int32)."""
    where = pa.BufferReader(source) if isinstance(source, bytes) else str(source)
    return pq.read_table(where, schema=SHARD_SCHEMA)


# ------------------------------------------------------------------ images


def check_image(data: bytes | None, where: str, max_pixels: int = MAX_PIXELS) -> None:
    """Decode the image fully (PNG or JPEG only); raise naming `where` if it does not."""
    if not data:
        raise WorkloadFailed(CORRUPT_IMAGE, f"{where}: image has no bytes")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            # Check the declared size before decoding a pixel of it.
            if im.width * im.height > max_pixels:
                raise WorkloadFailed(
                    IMAGE_TOO_LARGE,
                    f"{where}: image is {im.width}x{im.height}, above {max_pixels} pixels",
                )
            im.load()
    except WorkloadFailed:
        raise
    except Exception as exc:  # Pillow raises many types for bad input
        raise WorkloadFailed(
            CORRUPT_IMAGE, f"{where}: not a decodable PNG or JPEG image ({exc})"
        ) from None


# ----------------------------------------------------------------- readers


@dataclass(frozen=True)
class Example:
    """One input row: encoded image, label index, and how to name it in a message."""

    image: bytes | None
    label: int
    where: str


@dataclass
class DatasetInput:
    """A dataset opened for ingestion: labels and row count known, rows read lazily."""

    labels: list[str]
    rows: int
    examples: Iterator[Example]


def hf_label_names(schema: pa.Schema) -> list[str] | None:
    """Class names from the Hugging Face features metadata, if it declares a ClassLabel."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return None  # present but not the layout we know: infer the labels instead
    label = features.get("label") if isinstance(features, dict) else None
    if not isinstance(label, dict) or label.get("_type") != "ClassLabel":
        return None
    names = label.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WorkloadFailed(BAD_SCHEMA, "huggingface metadata: label names must be strings")
    if len(set(names)) != len(names):
        raise WorkloadFailed(BAD_SCHEMA, "huggingface metadata: label names are not unique")
    return names


def _label_kind(field: pa.Field) -> Literal["int", "str"]:
    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "str"
    raise WorkloadFailed(BAD_SCHEMA, f"column 'label' must hold integers or strings, not {t}")


def _check_image_field(field: pa.Field) -> None:
    t = field.type
    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
    if any(f(t) for f in binary):
        return
    if pa.types.is_struct(t):
        idx = t.get_field_index("bytes")
        if idx >= 0 and any(f(t.field(idx).type) for f in binary):
            return
    raise WorkloadFailed(
        BAD_SCHEMA, f"column 'image' must be a struct {{bytes: binary, path: string}}, not {t}"
    )


def _plain(arr: pa.Array) -> pa.Array:
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _first_null(arr: pa.Array, offset: int) -> None:
    if arr.null_count:
        i = pc.index(pc.is_null(arr), True).as_py()
        raise WorkloadFailed(UNKNOWN_LABEL, f"row {offset + i}: label is missing (null)")


def _open_parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise WorkloadFailed(BAD_FORMAT, f"not a readable Parquet file ({exc})") from None


def scan_parquet_labels(path: Path) -> tuple[list[str], int]:
    """(label names, row count) of a parquet dataset, reading only its label column.

    Names come from the HF ClassLabel metadata when present; otherwise integer
    labels 0..max are named "0".."max" and string labels are sorted. Raises
    BadSchema for missing or mistyped columns and UnknownLabel naming the first
    row whose label is null, negative, out of range or not a declared name.
    """
    pf = _open_parquet_file(path)
    schema = pf.schema_arrow
    for column in ("image", "label"):
        if schema.get_field_index(column) < 0:
            raise WorkloadFailed(BAD_SCHEMA, f"missing column {column!r}")
    _check_image_field(schema.field("image"))
    kind = _label_kind(schema.field("label"))
    names = hf_label_names(schema)
    offset = 0
    top = -1
    seen: set[str] = set()
    try:
        for batch in pf.iter_batches(batch_size=64 * 1024, columns=["label"]):
            arr = _plain(batch.column(0))
            _first_null(arr, offset)
            if kind == "int":
                values = arr.cast(pa.int64())
                bad = pc.less(values, 0)
                if names is not None:
                    bad = pc.or_(bad, pc.greater_equal(values, len(names)))
                if pc.any(bad).as_py():
                    i = pc.index(bad, True).as_py()
                    allowed = f"0..{len(names) - 1}" if names is not None else "0 or more"
                    raise WorkloadFailed(
                        UNKNOWN_LABEL,
                        f"row {offset + i}: label {values[i].as_py()} is outside {allowed}",
                    )
                if len(values):
                    top = max(top, pc.max(values).as_py())
            elif names is not None:
                idx = pc.index_in(arr.cast(pa.string()), value_set=pa.array(names))
                if idx.null_count:
                    i = pc.index(pc.is_null(idx), True).as_py()
                    raise WorkloadFailed(
                        UNKNOWN_LABEL, f"row {offset + i}: label {arr[i].as_py()!r} is not declared"
                    )
            else:
                seen.update(pc.unique(arr.cast(pa.string())).to_pylist())
                if len(seen) > MAX_LABELS:
                    raise WorkloadFailed(BAD_SCHEMA, f"more than {MAX_LABELS} distinct labels")
            offset += len(arr)
    except pa.ArrowException as exc:
        raise WorkloadFailed(
            BAD_FORMAT, f"unreadable Parquet data near row {offset} ({exc})"
        ) from None
    if names is None:
        if kind == "int" and top + 1 > MAX_LABELS:
            raise WorkloadFailed(BAD_SCHEMA, f"label {top} implies more than {MAX_LABELS} labels")
        names = [str(i) for i in range(top + 1)] if kind == "int" else sorted(seen)
    return names, offset


def open_parquet(path: Path, batch_rows: int = READ_BATCH_ROWS) -> DatasetInput:
    """A parquet dataset in the Hugging Face layout, labels checked, rows streamed."""
    names, rows = scan_parquet_labels(path)
    return DatasetInput(labels=names, rows=rows, examples=_parquet_rows(path, names, batch_rows))


def _parquet_rows(path: Path, names: list[str], batch_rows: int) -> Iterator[Example]:
    pf = _open_parquet_file(path)
    kind = _label_kind(pf.schema_arrow.field("label"))
    offset = 0
    batches = pf.iter_batches(batch_size=batch_rows, columns=["image", "label"])
    while True:
        try:
            batch = next(batches, None)
        except pa.ArrowException as exc:
            raise WorkloadFailed(
                BAD_FORMAT, f"unreadable Parquet data near row {offset} ({exc})"
            ) from None
        if batch is None:
            return
        images = batch.column(0)
        if pa.types.is_struct(images.type):
            # pc.struct_field keeps the struct's own nulls (a null image, not just null bytes).
            images = pc.struct_field(images, "bytes")
        labels = _plain(batch.column(1))
        if kind == "str":
            labels = pc.index_in(labels.cast(pa.string()), value_set=pa.array(names))
        for i, (image, label) in enumerate(
            zip(images.to_pylist(), labels.to_pylist(), strict=True)
        ):
            yield Example(image=image, label=label, where=f"row {offset + i}")
        offset += batch.num_rows


def _skip(name: str) -> bool:
    """Hidden files and macOS resource forks are not data."""
    return name.startswith(".") or name == "__MACOSX"


def imagefolder_root(root: Path) -> Path:
    """The folder holding the class folders: `root`, or the single folder wrapping them."""
    while True:
        entries = [p for p in root.iterdir() if not _skip(p.name)]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        inner = [p for p in entries[0].iterdir() if not _skip(p.name)]
        # Descend only if the one folder holds folders only (else it *is* the one class).
        if not inner or not all(p.is_dir() for p in inner):
            return root
        root = entries[0]


def open_imagefolder(root: Path) -> DatasetInput:
    """An extracted ImageFolder: one folder per class (sorted names = labels).

    Images are the files under a class folder (at any depth) ending in .png,
    .jpg or .jpeg; rows are ordered by class, then by path. Hidden files and
    anything else (a README beside the classes, a .txt in a class) is ignored.
    """
    base = imagefolder_root(root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not _skip(p.name))
    files: list[tuple[Path, int]] = []
    ignored = 0
    for label, name in enumerate(classes):
        found = []
        for path in (base / name).rglob("*"):
            rel = path.relative_to(base / name)
            if any(_skip(part) for part in rel.parts) or not path.is_file():
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
            else:
                ignored += 1
        files.extend((p, label) for p in sorted(found, key=lambda p: p.as_posix()))
    if ignored:
        log.info("ignored %d non-image files", ignored)
    return DatasetInput(labels=classes, rows=len(files), examples=_folder_rows(files, root))


def _folder_rows(files: list[tuple[Path, int]], root: Path) -> Iterator[Example]:
    for path, label in files:
        where = path.relative_to(root).as_posix()
        if path.stat().st_size > MAX_IMAGE_BYTES:  # before reading it into memory
            raise WorkloadFailed(IMAGE_TOO_LARGE, f"{where}: file above {MAX_IMAGE_BYTES} bytes")
        yield Example(image=path.read_bytes(), label=label, where=where)


# ---------------------------------------------------------------- ingestion


def iter_shards(
    dataset: DatasetInput, shard_rows: int, max_pixels: int = MAX_PIXELS
) -> Iterator[ShardFile]:
    """Check every image and yield shards of `shard_rows` rows (the last may be short)."""
    if shard_rows < 1:
        raise ValueError("shard_rows must be at least 1")
    images: list[bytes] = []
    labels: list[int] = []
    first = 0
    for ex in dataset.examples:
        check_image(ex.image, ex.where, max_pixels)
        assert ex.image is not None
        images.append(ex.image)
        labels.append(ex.label)
        if len(images) == shard_rows:
            yield write_shard(first, images, labels)
            first += len(images)
            images, labels = [], []
    if images:
        yield write_shard(first, images, labels)


DatasetFormName = Literal["parquet", "imagefolder"]


def open_dataset(
    form: DatasetFormName, path: Path, scratch: Path, limits: ArchiveLimits = DEFAULT_LIMITS
) -> DatasetInput:
    """Open either form; an imagefolder archive is safely extracted under `scratch`.

    Raises EmptyDataset when there are no rows.
    """
    if form == "parquet":
        dataset = open_parquet(path)
    else:
        extracted = scratch / "imagefolder"
        safe_extract(path, extracted, limits)
        dataset = open_imagefolder(extracted)
    if dataset.rows == 0:
        raise WorkloadFailed(EMPTY_DATASET, "the dataset has no rows")
    return dataset
