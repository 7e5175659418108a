"""Dataset ingestion as pure functions: read a user's dataset, check it, cut it into shards.

Two input forms, one output. A *parquet* dataset is in the Hugging Face
`datasets` layout: one Parquet file, or a folder/archive of them as the Hub
holds them (`data/<split>-NNNNN-of-NNNNN.parquet`, `<config>/<split>-…`,
`<config>/<split>/NNNN.parquet`), of which one split is read, its files in
shard order. The image column is the one the file's `huggingface` metadata
declares an `Image` feature (else `image`/`img`, a struct `{bytes, path}` or
binary), the label column the `ClassLabel` one (else `label`/`labels`, ints or
strings), class names from that ClassLabel. An *imagefolder* dataset is an
archive with one folder per class of PNG/JPEG files. What an upload is, is
told by its bytes (Parquet magic or an archive) and an archive's content, the
declared form deciding only an archive holding both Parquet files and images.
Both become content-addressed Parquet shards of `shard_rows` rows with
columns `row_id`, `image` (the original encoded bytes) and `label` (an index
into the label list).

Shards are written deterministically (fixed writer options, nothing
time-dependent), so the same rows always give the same bytes and the same
sha256: a dataset that appends rows to an ingested one shares its leading
shards, and every cache keyed by shard digest is reused. Row order is the
input order: the Parquet files', or for an imagefolder (class folder name,
path) in sorted order.

Every image is decoded once with Pillow (PNG and JPEG decoders only) and kept
as it came. Memory stays bounded by one input row group plus one shard.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from dyff.archives import DEFAULT_LIMITS, ArchiveLimits, BadArchive, archive_format, safe_extract
from dyff.errors import WorkloadFailed
from dyff.schema import Shard
from dyff.untrusted import NestedTooDeeply, load_json

log = logging.getLogger("dyff.datasets")

# Reasons a dataset fails with (Ready=False, reason=…).
BAD_SCHEMA = "BadSchema"
BAD_FORMAT = "BadFormat"
BAD_LAYOUT = "BadLayout"
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
PARQUET_MAGIC = b"PAR1"

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
    except Image.DecompressionBombError:
        # Pillow's own guard, before our size check could look: a decompression bomb.
        raise WorkloadFailed(
            IMAGE_TOO_LARGE, f"{where}: image declares more than {max_pixels} pixels"
        ) from None
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
    split: str | None = None  # the split read, for a folder in the Hugging Face layout


def hf_features(schema: pa.Schema) -> dict[str, Any] | None:
    """The `datasets` features a Parquet schema declares in its `huggingface` metadata.

    `datasets` writes `{"info": {"features": {column: feature}}}`, a feature being a
    dict with `_type` (`Image`, `ClassLabel`, `Value`, …) and, depending on the
    version, `id`, `dtype`, `decode`, `num_classes` or `names_file` beside it. The
    README's `dataset_info` shape (a list of `{"name": …, "dtype": …}`) is read too.
    None when absent or of no shape we know: columns are then found by name.
    """
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        doc = load_json(raw, "the Parquet file's huggingface metadata", BAD_SCHEMA)
    except NestedTooDeeply:
        raise  # built to hurt the reader, not merely of a shape we do not know
    except WorkloadFailed:
        return None
    info = doc.get("info", doc) if isinstance(doc, dict) else None
    features = info.get("features") if isinstance(info, dict) else None
    if isinstance(features, list):
        features = {
            f["name"]: f for f in features if isinstance(f, dict) and isinstance(f.get("name"), str)
        }
    return features if isinstance(features, dict) else None


def _feature_type(feature: object) -> str | None:
    """`Image`, `ClassLabel`, `Value`, … for a feature in either shape `hf_features` reads."""
    if not isinstance(feature, dict):
        return None
    kind = feature.get("_type")
    if isinstance(kind, str):
        return kind
    dtype = feature.get("dtype")
    if dtype == "image":
        return "Image"
    if isinstance(dtype, dict) and "class_label" in dtype:
        return "ClassLabel"
    return None


def class_label_names(feature: dict[str, Any], where: str = "") -> list[str]:
    """The names of a ClassLabel feature, in id order (`names` as a list or `{"0": …}`)."""
    body = feature
    if "_type" not in feature and isinstance(feature.get("dtype"), dict):
        body = feature["dtype"].get("class_label") or {}
    names = body.get("names")
    if names is None and isinstance(body.get("num_classes"), int):
        names = [str(i) for i in range(body["num_classes"])]
    if isinstance(names, dict):  # the README's {"0": "cat", "1": "dog"}
        try:
            ids = sorted(int(k) for k in names)
        except ValueError:
            ids = []
        if ids != list(range(len(names))):
            raise WorkloadFailed(
                BAD_SCHEMA, f"{where}huggingface metadata: label ids must be 0..{len(names) - 1}"
            )
        names = [names[str(i)] for i in ids]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WorkloadFailed(
            BAD_SCHEMA, f"{where}huggingface metadata: label names must be strings"
        )
    if len(set(names)) != len(names):
        raise WorkloadFailed(BAD_SCHEMA, f"{where}huggingface metadata: label names are not unique")
    if len(names) > MAX_LABELS:
        raise WorkloadFailed(BAD_SCHEMA, f"{where}more than {MAX_LABELS} declared labels")
    return names


def hf_label_names(schema: pa.Schema, column: str = "label") -> list[str] | None:
    """Class names of `column` if the metadata declares it a ClassLabel, else None."""
    feature = (hf_features(schema) or {}).get(column)
    if _feature_type(feature) != "ClassLabel":
        return None
    assert isinstance(feature, dict)
    return class_label_names(feature)


def _label_kind(field: pa.Field) -> Literal["int", "str"]:
    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "str"
    raise WorkloadFailed(
        BAD_SCHEMA, f"column {field.name!r} (the labels) must hold integers or strings, not {t}"
    )


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
        BAD_SCHEMA,
        f"column {field.name!r} (the images) must be a struct {{bytes: binary, path: string}}"
        f" or binary, not {t}",
    )


def _plain(arr: pa.Array) -> pa.Array:
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


@dataclass(frozen=True)
class ParquetPart:
    """One Parquet file of a dataset; `name` is its path inside the upload (None for a
    lone uploaded file), used in messages."""

    path: Path
    name: str | None = None

    @property
    def prefix(self) -> str:
        return f"{self.name}: " if self.name else ""

    def where(self, row: int, local: int) -> str:
        """A row named by its dataset row id and, in a multi-file dataset, its file."""
        return f"row {row}" if self.name is None else f"row {row} ({self.name} row {local})"


@dataclass(frozen=True)
class ParquetColumns:
    """Which columns hold the images and the labels, and the declared class names."""

    image: str
    label: str
    kind: Literal["int", "str"]
    names: list[str] | None


IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")


def _one_column(
    typed: list[str], named: tuple[str, ...], columns: list[str], what: str, feature: str, p: str
) -> str:
    found = ", ".join(columns) or "none"
    if len(typed) > 1:
        raise WorkloadFailed(
            BAD_SCHEMA,
            f"{p}several {feature} columns ({', '.join(typed)}); a dataset has exactly one"
            f" {what} column (columns: {found})",
        )
    candidates = typed or [c for c in named if c in columns]
    alternatives = " or ".join(repr(c) for c in named)
    if not candidates:
        raise WorkloadFailed(
            BAD_SCHEMA,
            f"{p}missing column {named[0]!r}: no column is a Hugging Face {feature} feature or is"
            f" named {alternatives} (columns: {found})",
        )
    if len(candidates) > 1:
        raise WorkloadFailed(
            BAD_SCHEMA,
            f"{p}both {alternatives} are columns and no {feature} feature says which holds the"
            f" {what}s (columns: {found})",
        )
    return candidates[0]


def parquet_columns(schema: pa.Schema, prefix: str = "") -> ParquetColumns:
    """Find the image and label columns: by their Hugging Face feature type (`Image`,
    `ClassLabel`) when the metadata declares them, else by name (`image`/`img`,
    `label`/`labels`). Raises BadSchema naming the columns found when none or several fit."""
    features = hf_features(schema) or {}
    columns = list(schema.names)

    def typed(kind: str) -> list[str]:
        return [c for c in columns if _feature_type(features.get(c)) == kind]

    image = _one_column(typed("Image"), IMAGE_COLUMNS, columns, "image", "Image", prefix)
    _check_image_field(schema.field(image))
    class_labels = typed("ClassLabel")
    if len(class_labels) > 1 and "label" in class_labels:
        class_labels = ["label"]  # e.g. a `label` beside a coarser `coarse_label`
    label = _one_column(class_labels, LABEL_COLUMNS, columns, "label", "ClassLabel", prefix)
    kind = _label_kind(schema.field(label))
    names = class_label_names(features[label], prefix) if class_labels else None
    return ParquetColumns(image=image, label=label, kind=kind, names=names)


def _first_null(arr: pa.Array, part: ParquetPart, offset: int, local: int) -> None:
    if arr.null_count:
        i = pc.index(pc.is_null(arr), True).as_py()
        raise WorkloadFailed(
            UNKNOWN_LABEL, f"{part.where(offset + i, local + i)}: label is missing (null)"
        )


def _open_parquet_file(part: ParquetPart) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(part.path)
    except (pa.ArrowException, OSError) as exc:
        raise WorkloadFailed(
            BAD_FORMAT, f"{part.prefix}not a readable Parquet file ({exc})"
        ) from None


def _parts(source: Path | Sequence[ParquetPart]) -> list[ParquetPart]:
    return [ParquetPart(source)] if isinstance(source, Path) else list(source)


def _differs(a: ParquetColumns, b: ParquetColumns) -> str | None:
    """How `b` (here) differs from `a` (there), in words; None when they agree."""
    if (a.image, a.label) != (b.image, b.label):
        return (
            f"the image/label columns are {b.image!r}/{b.label!r} here,"
            f" {a.image!r}/{a.label!r} there"
        )
    if a.kind != b.kind:
        kinds = {"int": "integers", "str": "strings"}
        return f"the labels are {kinds[b.kind]} here, {kinds[a.kind]} there"
    if a.names == b.names:
        return None
    if a.names is None or b.names is None:
        here = "no" if b.names is None else len(b.names)
        there = "no" if a.names is None else len(a.names)
        return f"{here} class names are declared here, {there} there"
    for i, (x, y) in enumerate(zip(a.names, b.names, strict=False)):
        if x != y:
            return f"class {i} is named {y!r} here, {x!r} there"
    return f"{len(b.names)} class names are declared here, {len(a.names)} there"


def parquet_columns_of(parts: Sequence[ParquetPart]) -> ParquetColumns:
    """The columns of every part, which must agree (same columns, label type, class names)."""
    first: ParquetColumns | None = None
    for part in parts:
        with _open_parquet_file(part) as pf:
            found = parquet_columns(pf.schema_arrow, part.prefix)
        if first is None:
            first = found
        elif (diff := _differs(first, found)) is not None:
            raise WorkloadFailed(
                BAD_SCHEMA,
                f"{part.name} differs from {parts[0].name}: {diff}; all files of a split must"
                " have the same columns and class names",
            )
    if first is None:
        raise WorkloadFailed(EMPTY_DATASET, "no Parquet file to read")
    return first


def scan_parquet_labels(
    source: Path | Sequence[ParquetPart], columns: ParquetColumns | None = None
) -> tuple[list[str], int]:
    """(label names, row count) of a parquet dataset, reading only its label column.

    `source` is one Parquet file or the files of one split, in order. Names come
    from the HF ClassLabel metadata when present; otherwise integer labels 0..max
    are named "0".."max" and string labels are sorted. Raises BadSchema for
    missing, mistyped or disagreeing columns and UnknownLabel naming the first row
    whose label is null, negative, out of range or not a declared name.
    """
    parts = _parts(source)
    cols = columns or parquet_columns_of(parts)
    names, kind = cols.names, cols.kind
    offset = 0
    top = -1
    seen: set[str] = set()
    for part in parts:
        local = 0
        try:
            with _open_parquet_file(part) as pf:
                for batch in pf.iter_batches(batch_size=64 * 1024, columns=[cols.label]):
                    arr = _plain(batch.column(cols.label))
                    _first_null(arr, part, offset, local)
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
                                f"{part.where(offset + i, local + i)}: label"
                                f" {values[i].as_py()} is outside {allowed}",
                            )
                        if len(values):
                            top = max(top, pc.max(values).as_py())
                    elif names is not None:
                        idx = pc.index_in(arr.cast(pa.string()), value_set=pa.array(names))
                        if idx.null_count:
                            i = pc.index(pc.is_null(idx), True).as_py()
                            raise WorkloadFailed(
                                UNKNOWN_LABEL,
                                f"{part.where(offset + i, local + i)}: label"
                                f" {arr[i].as_py()!r} is not declared",
                            )
                    else:
                        seen.update(pc.unique(arr.cast(pa.string())).to_pylist())
                        if len(seen) > MAX_LABELS:
                            raise WorkloadFailed(
                                BAD_SCHEMA, f"more than {MAX_LABELS} distinct labels"
                            )
                    offset += len(arr)
                    local += len(arr)
        except pa.ArrowException as exc:
            raise WorkloadFailed(
                BAD_FORMAT, f"{part.prefix}unreadable Parquet data near row {local} ({exc})"
            ) from None
    if names is None:
        if kind == "int" and top + 1 > MAX_LABELS:
            raise WorkloadFailed(BAD_SCHEMA, f"label {top} implies more than {MAX_LABELS} labels")
        names = [str(i) for i in range(top + 1)] if kind == "int" else sorted(seen)
    return names, offset


def open_parquet(
    source: Path | Sequence[ParquetPart],
    batch_rows: int = READ_BATCH_ROWS,
    split: str | None = None,
) -> DatasetInput:
    """A parquet dataset (one file, or a split's files in order), labels checked, rows
    streamed one batch of one file at a time."""
    parts = _parts(source)
    cols = parquet_columns_of(parts)
    names, rows = scan_parquet_labels(parts, cols)
    return DatasetInput(
        labels=names,
        rows=rows,
        examples=_parquet_rows(parts, cols, names, batch_rows),
        split=split,
    )


def _parquet_rows(
    parts: list[ParquetPart], cols: ParquetColumns, names: list[str], batch_rows: int
) -> Iterator[Example]:
    offset = 0
    for part in parts:
        local = 0
        with _open_parquet_file(part) as pf:
            batches = pf.iter_batches(batch_size=batch_rows, columns=[cols.image, cols.label])
            while True:
                try:
                    batch = next(batches, None)
                except pa.ArrowException as exc:
                    raise WorkloadFailed(
                        BAD_FORMAT,
                        f"{part.prefix}unreadable Parquet data near row {local} ({exc})",
                    ) from None
                if batch is None:
                    break
                images = batch.column(cols.image)
                if pa.types.is_struct(images.type):
                    # pc.struct_field keeps the struct's own nulls (a null image, not just
                    # null bytes).
                    images = pc.struct_field(images, "bytes")
                labels = _plain(batch.column(cols.label))
                if cols.kind == "str":
                    labels = pc.index_in(labels.cast(pa.string()), value_set=pa.array(names))
                for i, (image, label) in enumerate(
                    zip(images.to_pylist(), labels.to_pylist(), strict=True)
                ):
                    yield Example(image=image, label=label, where=part.where(offset + i, local + i))
                offset += batch.num_rows
                local += batch.num_rows


# ------------------------------------------------------- Hugging Face layout

# `datasets`' push_to_hub: data/<split>-00000-of-00002.parquet, <config>/<split>-…;
# older versions add a fingerprint: train-00000-of-00001-6a1f….parquet.
SHARDED_NAME = re.compile(
    r"^(?P<split>\w+(?:\.\w+)*)-(?P<index>\d{5})-of-(?P<count>\d{5})(?:-[^/]*)?\.parquet$",
    re.IGNORECASE,
)
# The Hub's Parquet conversion, <config>/<split>/0000.parquet, and other numbered parts
# (part-00000-….snappy.parquet, shard_3.parquet): the folder names the split.
NUMBERED_NAME = re.compile(r"^(?:part|shard|chunk)?[-_]?\d+(?:[-_.][^/]*)?\.parquet$", re.I)

ACCEPTED = (
    "a dataset is a Parquet file; a folder or archive (.tar, .tar.gz, .zip) in the Hugging"
    " Face layout (data/<split>-NNNNN-of-NNNNN.parquet, <config>/<split>-NNNNN-of-NNNNN.parquet,"
    " <config>/<split>/NNNN.parquet or <split>.parquet); or an ImageFolder archive (one folder"
    " of PNG/JPEG images per class)"
)


@dataclass(frozen=True)
class HubFile:
    """A Parquet file of a Hugging Face layout and the (config, split) its path gives."""

    rel: str
    config: str
    split: str
    shard: tuple[int, int] | None  # (index, count) of a -NNNNN-of-NNNNN name


def hub_file(rel: PurePosixPath) -> HubFile:
    """Where a Parquet file sits in the Hugging Face layout, from its path alone."""
    dirs = list(rel.parts[:-1])
    shard = None
    if m := SHARDED_NAME.match(rel.name):
        split = m["split"]
        shard = (int(m["index"]), int(m["count"]))
    elif dirs and NUMBERED_NAME.match(rel.name):
        split = dirs.pop().removeprefix("partial-")
    else:
        split = rel.name[: -len(".parquet")]
    if dirs and dirs[-1] == "data":
        dirs.pop()
    return HubFile(rel.as_posix(), "/".join(dirs) or "default", split, shard)


def _natural(text: str) -> list[Any]:
    """Sort key in which digit runs compare as numbers (shard_2 before shard_10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def describe(files: Sequence[PurePosixPath | str], limit: int = 6) -> str:
    """`3 files: a, b, c` (the first `limit` named)."""
    n = len(files)
    shown = ", ".join(str(f) for f in files[:limit])
    more = f", … and {n - limit} more" if n > limit else ""
    return f"{n} file{'' if n == 1 else 's'}: {shown}{more}"


def choose_split(
    splits: dict[tuple[str, str], list[HubFile]], asked: str | None
) -> tuple[str, str]:
    """The (config, split) to ingest: the one asked for (`split` or `config/split`), else
    `test`, else the only one; BadLayout naming the splits found otherwise."""
    keys = sorted(splits)
    several_configs = len({c for c, _ in keys}) > 1

    def label(key: tuple[str, str]) -> str:
        return f"{key[0]}/{key[1]}" if several_configs else key[1]

    found = ", ".join(label(k) for k in keys)
    if asked is not None:
        if "/" in asked:
            config, _, name = asked.rpartition("/")
            matches = [k for k in keys if k == (config, name)]
        else:
            matches = [k for k in keys if k[1] == asked]
        if not matches:
            raise WorkloadFailed(
                BAD_LAYOUT, f"split {asked!r} is not in the dataset; found splits: {found}"
            )
        if len(matches) > 1:
            raise WorkloadFailed(
                BAD_LAYOUT,
                f"split {asked!r} is in several configs ({', '.join(map(label, matches))});"
                " set split to one of them",
            )
        return matches[0]
    tests = [k for k in keys if k[1] == "test"]
    if len(tests) > 1:
        raise WorkloadFailed(
            BAD_LAYOUT,
            f"several configs have a test split ({', '.join(map(label, tests))});"
            " set split to the one to ingest",
        )
    if tests:
        return tests[0]
    if len(keys) == 1:
        return keys[0]
    raise WorkloadFailed(
        BAD_LAYOUT,
        f"found splits {found} and none is called 'test'; set the dataset's split to the one"
        " to ingest",
    )


def _ordered(name: str, files: list[HubFile]) -> list[HubFile]:
    """A split's files in shard order, checking that a sharded split is complete."""
    sharded = [f for f in files if f.shard is not None]
    if not sharded:
        return sorted(files, key=lambda f: _natural(f.rel))
    if len(sharded) != len(files):
        others = [f.rel for f in files if f.shard is None]
        raise WorkloadFailed(
            BAD_LAYOUT,
            f"split {name}: mixes <split>-NNNNN-of-NNNNN.parquet files"
            f" ({describe([f.rel for f in sharded], 3)}) with others ({describe(others, 3)})",
        )
    counts = sorted({f.shard[1] for f in sharded if f.shard})
    if len(counts) > 1:
        raise WorkloadFailed(
            BAD_LAYOUT,
            f"split {name}: files disagree on the shard count"
            f" ({' vs '.join(f'{c:05d}' for c in counts)})",
        )
    by_index: dict[int, HubFile] = {}
    for f in sharded:
        assert f.shard is not None
        if f.shard[0] in by_index:
            raise WorkloadFailed(
                BAD_LAYOUT,
                f"split {name}: shard {f.shard[0]:05d} appears twice"
                f" ({by_index[f.shard[0]].rel}, {f.rel})",
            )
        by_index[f.shard[0]] = f
    missing = [i for i in range(counts[0]) if i not in by_index]
    beyond = [f.rel for i, f in by_index.items() if i >= counts[0]]
    if missing or beyond:
        what = ", ".join(f"{i:05d}" for i in missing[:10])
        raise WorkloadFailed(
            BAD_LAYOUT,
            f"split {name}: "
            + (f"shards {what} of {counts[0]:05d} are missing" if missing else "")
            + ("; " if missing and beyond else "")
            + (f"{', '.join(beyond)} lie beyond the shard count" if beyond else "")
            + f" (found {describe(sorted(f.rel for f in sharded), 3)})",
        )
    return [by_index[i] for i in range(counts[0])]


def open_hub_layout(
    root: Path, files: Sequence[PurePosixPath], split: str | None = None
) -> DatasetInput:
    """The chosen split of a Hugging Face layout folder; `files` are its Parquet files,
    relative to `root`."""
    splits: dict[tuple[str, str], list[HubFile]] = {}
    for rel in files:
        f = hub_file(rel)
        splits.setdefault((f.config, f.split), []).append(f)
    key = choose_split(splits, split)
    several_configs = len({c for c, _ in splits}) > 1
    name = f"{key[0]}/{key[1]}" if several_configs else key[1]
    ordered = _ordered(name, splits[key])
    parts = [ParquetPart(root / f.rel, f.rel) for f in ordered]
    log.info("split %s: %s", name, describe([f.rel for f in ordered]))
    return open_parquet(parts, split=name)


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


def _upload_files(root: Path) -> list[PurePosixPath]:
    """The regular files under `root`, relative, sorted; hidden ones and macOS forks left out."""
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if not any(_skip(part) for part in rel.parts) and path.is_file():
            out.append(PurePosixPath(rel.as_posix()))
    return sorted(out, key=lambda p: _natural(p.as_posix()))


def open_folder(form: DatasetFormName, root: Path, split: str | None = None) -> DatasetInput:
    """An extracted archive (or a folder): the Hugging Face layout when it holds Parquet
    files, an ImageFolder when it holds images. Only when it holds both does `form`
    decide: parquet reads the Parquet files, imagefolder refuses (it would ignore them)."""
    files = _upload_files(root)
    parquet = [f for f in files if f.suffix.lower() == ".parquet"]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise WorkloadFailed(EMPTY_DATASET, f"the archive holds no files; {ACCEPTED}")
    if parquet and images and form == "imagefolder":
        raise WorkloadFailed(
            BAD_LAYOUT,
            f"the archive holds both Parquet files ({describe(parquet, 3)}) and images"
            f" ({describe(images, 3)}); read as an imagefolder it would ignore the Parquet"
            " files: give form parquet to read them (the Hugging Face layout), or upload the"
            " class folders alone",
        )
    if parquet:
        if images:
            log.info("ignoring %d image files beside the Parquet files", len(images))
        if form != "parquet":
            log.info("the archive holds only Parquet files: read in the Hugging Face layout")
        return open_hub_layout(root, parquet, split)
    if images:
        if split is not None:
            raise WorkloadFailed(
                BAD_LAYOUT,
                f"split {split!r} was asked for, but the archive is an ImageFolder (images:"
                f" {describe(images, 3)}), which has no splits; leave split unset",
            )
        dataset = open_imagefolder(root)
        if dataset.rows == 0:
            raise WorkloadFailed(
                EMPTY_DATASET,
                f"no image is inside a class folder (found {describe(images, 3)}); an"
                " ImageFolder archive holds one folder of PNG/JPEG images per class",
            )
        return dataset
    arrow = [f for f in files if f.suffix.lower() == ".arrow"]
    if arrow:
        raise WorkloadFailed(
            BAD_LAYOUT,
            f"found {describe(arrow, 3)}: Arrow files as `datasets`' save_to_disk writes them,"
            " which dyff does not read; write Parquet instead (push_to_hub's files, or"
            f' dataset.to_parquet("test.parquet") per split); {ACCEPTED}',
        )
    raise WorkloadFailed(
        BAD_LAYOUT,
        f"found no Parquet file and no PNG/JPEG image but {describe(files)}; {ACCEPTED}",
    )


def open_dataset(
    form: DatasetFormName,
    path: Path,
    scratch: Path,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    split: str | None = None,
) -> DatasetInput:
    """Open an upload: a Parquet file (by its magic bytes), or an archive (or a folder)
    that is safely extracted under `scratch` and read by `open_folder`. `split` chooses
    the split of a Hugging Face layout (default: `test`, else the only one).

    Raises BadFormat for anything else, BadLayout naming what an archive holds when it
    is neither form, and EmptyDataset when there are no rows.
    """
    if path.is_dir():
        dataset = open_folder(form, path, split)
    else:
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:4] == PARQUET_MAGIC:
            if split is not None:
                raise WorkloadFailed(
                    BAD_LAYOUT,
                    f"split {split!r} was asked for, but the upload is a single Parquet file,"
                    " which has no splits; leave split unset, or upload the folder in the"
                    " Hugging Face layout",
                )
            dataset = open_parquet(path)
        else:
            try:
                archive_format(path)
            except BadArchive as exc:
                detail = exc.message.partition(": ")[2] or exc.message
                raise WorkloadFailed(
                    BAD_FORMAT,
                    f"the upload is not a Parquet file (it starts with {head!r}, not the"
                    f" magic bytes PAR1) and {detail}; {ACCEPTED}",
                ) from None
            extracted = scratch / "extracted"
            try:
                safe_extract(path, extracted, limits)
            except BadArchive as exc:
                detail = exc.message.partition(": ")[2] or exc.message
                raise BadArchive(
                    f"the upload is not a Parquet file (no PAR1 magic bytes), and as an archive:"
                    f" {detail}"
                ) from None
            dataset = open_folder(form, extracted, split)
    if dataset.rows == 0:
        where = f" (split {dataset.split})" if dataset.split else ""
        raise WorkloadFailed(EMPTY_DATASET, f"the dataset has no rows{where}")
    return dataset
