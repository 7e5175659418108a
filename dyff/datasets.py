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
as it came. Memory stays bounded by one read batch of input (its Parquet pages are
read through a fixed buffer, whatever the size of its row groups) plus one shard (and at
most STATS_BATCH_BYTES of reduced pixels waiting for their statistics, which are counted
many images at a time).

Beside each shard, an *attribute file* (see "attribute files" below) holds per-row
attributes for slicing results: derived ones computed while the image is decoded
(width, height, aspect, brightness, colour) and the dataset's own extra columns
(Hugging Face features other than image and label, an ImageFolder's sub-folders, the
columns of metadata.csv / metadata.jsonl files). They never enter the shard's bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
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
READ_BUFFER_BYTES = 1024 * 1024  # how much of an input Parquet file is read at a time
PARQUET_MAGIC = b"PAR1"

# -------------------------------------------------------- derived attributes
# Computed once per image while ingestion decodes it; fixed thresholds, so the same image
# always lands in the same bucket.
EXIF_ORIENTATION = 0x0112
STATS_SIDE = 256  # pixel statistics on a copy at most this many pixels a side
ASPECT_SQUARE = 1.1  # long side / short side at most this: square
# Mean luma (0..255) below each limit: that bucket.
BRIGHTNESS_BUCKETS = ((64.0, "dark"), (128.0, "dim"), (192.0, "bright"), (256.0, "very_bright"))
# The same for `bisect_right`: the first limit above the mean names its bucket (the last
# bucket takes anything at or above the limits).
BRIGHTNESS_LIMITS = tuple(limit for limit, _ in BRIGHTNESS_BUCKETS[:-1])
BRIGHTNESS_NAMES = tuple(name for _, name in BRIGHTNESS_BUCKETS)
GRAY_TOLERANCE = 3  # colour channels differing by at most this many levels: grayscale
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})
# Pillow's RGB -> L conversion: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.
LUMA_WEIGHTS = np.array([19595, 38470, 7471], dtype=np.uint32)
LUMA_ROUND, LUMA_SHIFT = 0x8000, 16

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
    """One written shard: its bytes and where it sits in the dataset, and (from
    `iter_shards`) its attribute file, which is never part of the shard's bytes."""

    sha256: str
    rows: int
    first_row: int
    data: bytes
    attributes: bytes | None = None
    attributes_sha256: str | None = None

    def shard(self) -> Shard:
        return Shard(
            sha256=self.sha256,
            rows=self.rows,
            first_row=self.first_row,
            attributes=self.attributes_sha256,
        )


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


# ---------------------------------------------------------- attribute files
#
# Beside each shard, one Parquet file of per-row attributes for slicing results
# (`dyff.criteria`), stored under `layout.attributes_key(account, shard sha256, its own
# sha256)`: the shard stays byte-identical (predictions are cached by its digest), and two
# datasets with the same shard but different metadata keep different attribute files.
# Columns: `row_id`, the derived attributes (DERIVED_FIELDS), then the dataset's own extra
# columns (`DatasetInput.attribute_fields`: Hugging Face features other than image and
# label, an ImageFolder's `subfolder`, the columns of metadata.csv / metadata.jsonl), each a
# string, int64, float64 or bool, nullable. Written as deterministically as shards.

DERIVED_FIELDS = (
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("aspect", pa.string()),
    pa.field("brightness", pa.string()),
    pa.field("colour", pa.string()),
)
DERIVED_ATTRIBUTES = tuple(f.name for f in DERIVED_FIELDS)
SUBFOLDER = "subfolder"
# Names an extra column may not take: the shard's, the derived ones, the predictions'.
RESERVED_ATTRIBUTES = frozenset(
    {"row_id", "image", "label", "predicted", "score", "correct", "topk_labels",
     "topk_scores", "file_name", *DERIVED_ATTRIBUTES}
)  # fmt: skip
ATTRIBUTE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
MAX_EXTRA_ATTRIBUTES = 32  # extra columns kept (the first ones, in the source's order)
MAX_ATTRIBUTES = len(DERIVED_FIELDS) + MAX_EXTRA_ATTRIBUTES
MAX_ATTRIBUTE_CHARS = 256  # a longer string value is cut to this many characters
ATTRIBUTE_TYPES = (pa.string(), pa.int64(), pa.float64(), pa.bool_())
INT64_RANGE = (-(2**63), 2**63 - 1)
ATTRIBUTE_WRITER_OPTIONS: dict[str, Any] = {
    **SHARD_WRITER_OPTIONS,
    "use_dictionary": True,
    "write_statistics": False,
}


def attribute_name_ok(name: str) -> bool:
    """Whether an extra column may become an attribute (a plain name, not reserved)."""
    return (
        name not in RESERVED_ATTRIBUTES
        and re.fullmatch(ATTRIBUTE_NAME_PATTERN.strip("^$"), name) is not None
    )


def attribute_schema(extra: Sequence[pa.Field]) -> pa.Schema:
    return pa.schema([pa.field("row_id", pa.int64(), nullable=False), *DERIVED_FIELDS, *extra])


def attribute_value(value: Any, type_: pa.DataType) -> Any:
    """A Python value as an attribute of `type_` (strings cut to MAX_ATTRIBUTE_CHARS;
    anything that does not fit is None)."""
    if value is None:
        return None
    if type_ == pa.string():
        text = value if isinstance(value, str) else _as_text(value)
        return text[:MAX_ATTRIBUTE_CHARS]
    if type_ == pa.bool_():
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if type_ == pa.int64():
        ok = isinstance(value, int) and INT64_RANGE[0] <= value <= INT64_RANGE[1]
        return value if ok else None
    return float(value) if isinstance(value, int | float) else None


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_attributes(
    first_row: int,
    derived: Sequence[tuple[Any, ...]],
    extra_fields: Sequence[pa.Field],
    extras: Sequence[tuple[Any, ...]],
) -> tuple[str, bytes]:
    """(sha256, bytes) of the attribute file of rows `first_row …`; `derived` holds each
    row's DERIVED_ATTRIBUTES values (`ImageInfo.derived`)."""
    columns = [list(c) for c in zip(*derived, strict=True)] if derived else []
    return _attribute_file(first_row, columns or [[] for _ in DERIVED_FIELDS], extra_fields, extras)


def _attribute_file(
    first_row: int,
    derived: Sequence[Sequence[Any]],
    extra_fields: Sequence[pa.Field],
    extras: Sequence[tuple[Any, ...]],
) -> tuple[str, bytes]:
    """`write_attributes` with the derived attributes as columns (`derived_columns`)."""
    n = len(derived[0])
    schema = attribute_schema(extra_fields)
    columns: dict[str, pa.Array] = {
        "row_id": pa.array(range(first_row, first_row + n), type=pa.int64())
    }
    for f, values in zip(DERIVED_FIELDS, derived, strict=True):
        columns[f.name] = pa.array(values, type=f.type)
    for i, f in enumerate(extra_fields):
        values = [attribute_value(e[i] if i < len(e) else None, f.type) for e in extras]
        columns[f.name] = pa.array(values, type=f.type)
    table = pa.table(columns, schema=schema)
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, **ATTRIBUTE_WRITER_OPTIONS) as writer:
        writer.write_table(table, row_group_size=SHARD_ROW_GROUP_ROWS)
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def read_attributes(source: bytes | Path | str) -> pa.Table:
    """An attribute file as an Arrow table."""
    where = pa.BufferReader(source) if isinstance(source, bytes) else str(source)
    return pq.read_table(where)


# ------------------------------------------------------------------ images


@dataclass(frozen=True)
class ImageInfo:
    """What ingestion learns of an image while decoding it (the derived attributes)."""

    width: int  # as the model sees it: EXIF orientation applied
    height: int
    luminance: float | None  # mean luma (ITU-R 601, Pillow's "L"), 0..255; None: unknown
    grayscale: bool | None

    def derived(self) -> tuple[int, int, str, str | None, str | None]:
        """(width, height, aspect, brightness, colour): the DERIVED_ATTRIBUTES' values."""
        columns = derived_columns([self.width], [self.height], [(self.luminance, self.grayscale)])
        width, height, aspect, brightness, colour = (c[0] for c in columns)
        return width, height, aspect, brightness, colour


def derived_columns(
    widths: list[int], heights: list[int], stats: Sequence[tuple[float | None, bool | None]]
) -> list[list[Any]]:
    """The DERIVED_ATTRIBUTES' values of many images, a column each: width, height, aspect
    (`aspect_bucket`), brightness (`brightness_bucket` of the mean luma) and colour
    (`grayscale` or `colour`), from each image's size and (mean luma, grayscale); None
    where a statistic is unknown."""
    aspects: dict[tuple[int, int], str] = {}  # images of a dataset share a few sizes
    aspect = []
    for size in zip(widths, heights, strict=True):
        bucket = aspects.get(size)
        if bucket is None:
            bucket = aspects[size] = aspect_bucket(*size)
        aspect.append(bucket)
    colours = {None: None, True: "grayscale", False: "colour"}
    limits, names = BRIGHTNESS_LIMITS, BRIGHTNESS_NAMES
    brightness = [None if lum is None else names[bisect_right(limits, lum)] for lum, _ in stats]
    return [widths, heights, aspect, brightness, [colours[gray] for _, gray in stats]]


def aspect_bucket(width: int, height: int) -> str:
    """`square` when the long side is at most ASPECT_SQUARE times the short one, else
    `landscape` (wider) or `portrait` (taller)."""
    if max(width, height) <= ASPECT_SQUARE * max(1, min(width, height)):
        return "square"
    return "landscape" if width > height else "portrait"


def brightness_bucket(luminance: float) -> str:
    """Fixed buckets of mean luma: dark < 64 <= dim < 128 <= bright < 192 <= very_bright."""
    return BRIGHTNESS_NAMES[bisect_right(BRIGHTNESS_LIMITS, luminance)]


def _decode(
    data: bytes | None, where: str, max_pixels: int = MAX_PIXELS
) -> tuple[int, int, PixelSample | None]:
    """Decode the image fully (PNG or JPEG only); raise naming `where` if it does not.
    Returns its width and height as the model sees it (EXIF orientation applied) and the
    pixels its statistics are counted on (`_pixel_sample`; None: an exotic mode that cannot
    be measured). Never refuses an image that decoded for what it cannot measure."""
    if not data:
        raise WorkloadFailed(CORRUPT_IMAGE, f"{where}: image has no bytes")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            # Check the declared size before decoding a pixel of it.
            width, height = im.size
            if width * height > max_pixels:
                raise WorkloadFailed(
                    IMAGE_TOO_LARGE,
                    f"{where}: image is {width}x{height}, above {max_pixels} pixels",
                )
            im.load()
            width, height = im.size
            if _quarter_turned(im):
                width, height = height, width
            try:
                sample: PixelSample | None = _pixel_sample(im)
            except Exception:  # Pillow raises many types for modes it cannot convert
                sample = None
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
    return width, height, sample


# Where Pillow's `getexif` finds an orientation in a PNG or JPEG: an EXIF block (JPEG APP1,
# PNG eXIf or a zTXt/tEXt raw profile) or XMP (`tiff:Orientation`). Without any of these
# there is none, and the Exif object is not built (a few microseconds an image).
ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _quarter_turned(im: Image.Image) -> bool:
    """Whether the image's EXIF orientation turns it a quarter (5-8: width and height as
    the model sees it are swapped). A malformed EXIF block changes nothing."""
    info = im.info
    if (not info or info.keys().isdisjoint(ORIENTATION_SOURCES)) and not hasattr(im, "tag_v2"):
        return False
    try:
        return im.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)
    except Exception:  # a malformed EXIF block changes nothing of the pixels
        return False


# What an image's pixel statistics are counted on: ("L" or "RGB", pixel count, the raw
# pixels, 1 or 3 bytes each).
PixelSample = tuple[str, int, bytes]
Stats = tuple[float | None, bool | None]  # (mean luma, grayscale); None: unknown
UNKNOWN_STATS: Stats = (None, None)
# Samples waiting for their statistics are counted together once they hold this many
# bytes (or the shard is cut): it bounds what they take (a sample is at most STATS_SIDE x
# STATS_SIDE x 3 bytes) while a whole shard of small images is counted in one pass.
STATS_BATCH_BYTES = 1024 * 1024
# ... and counted this many pixels at a time: arrays small enough to stay in the CPU's
# cache and below the allocator's mmap threshold (4-5x faster than one pass over all).
STATS_CHUNK_PIXELS = 16 * 1024
RAW_BLOCK = 65536  # bytes of raw pixels read at a time (Pillow's ImageFile.MAXBLOCK)


def _pixel_sample(im: Image.Image) -> PixelSample:
    """The pixels of a copy reduced to at most STATS_SIDE pixels a side (box averages: the
    mean barely moves): Pillow's `convert("L")` of a mode without colour, else its
    `convert("RGB")`."""
    mode = im.mode
    if mode not in REDUCIBLE_MODES:
        im = im.convert("L" if mode in GRAY_MODES else "RGB")
        mode = im.mode
    width, height = im.size
    if width > STATS_SIDE or height > STATS_SIDE:
        im = im.reduce(-(-max(width, height) // STATS_SIDE))
        width, height = im.size
    kind = "L" if mode in GRAY_MODES else "RGB"
    if mode != kind:
        im = im.convert(kind)
    return kind, width * height, _raw_pixels(im)


def _raw_pixels(im: Image.Image) -> bytes:
    """`im.tobytes()` of a loaded image: Pillow's raw encoder called directly, without
    `tobytes`' per-call set-up (half the cost on a small image); `tobytes` itself should
    that interface ever change."""
    width, height = im.size
    if width == 0 or height == 0:
        return b""
    try:
        encoder = Image.core.raw_encoder(im.mode, im.mode)
        encoder.setimage(im.im, (0, 0, width, height))
    except (AttributeError, TypeError, ValueError):
        return im.tobytes()
    try:
        chunks = []
        while True:
            _, error, chunk = encoder.encode(max(RAW_BLOCK, width * 4))
            chunks.append(chunk)
            if error:
                break
        if error < 0:
            raise RuntimeError(f"encoder error {error} reading pixels")
    finally:
        encoder.cleanup()
    return b"".join(chunks)


def _sample_stats(kind: str, pixels: int, samples: Sequence[bytes]) -> list[tuple[float, bool]]:
    """(mean luma, grayscale) of each of `samples`, all of `kind` and `pixels` pixels,
    counted in numpy over many at once, exactly as each alone: Pillow's own `convert("L")`
    (ITU-R 601, LUMA_WEIGHTS rounded) and mean, at a fraction of the cost of its per-image
    calls. Grayscale: a sample without colour ("L"), or colour channels that nowhere
    differ by more than GRAY_TOLERANCE levels."""
    if pixels < 1:
        raise ValueError("an image of no pixels has no statistics")
    step = max(1, STATS_CHUNK_PIXELS // pixels)
    out: list[tuple[float, bool]] = []
    for start in range(0, len(samples), step):
        chunk = samples[start : start + step]
        flat = np.frombuffer(b"".join(chunk), dtype=np.uint8)
        if kind == "L":
            sums = flat.reshape(len(chunk), pixels).sum(axis=1, dtype=np.int64)
            out.extend((total / pixels, True) for total in sums.tolist())
            continue
        rgb = flat.reshape(len(chunk), pixels, 3)
        # A channel at a time: numpy has no fast path for a matrix product of integers.
        r, g, b = (rgb[..., c].astype(np.int32) for c in range(3))
        spread = np.maximum(np.abs(r - g).max(axis=1), np.abs(g - b).max(axis=1))
        wr, wg, wb = (int(w) for w in LUMA_WEIGHTS)
        luma = (r * wr + g * wg + b * wb + LUMA_ROUND) >> LUMA_SHIFT
        sums = luma.sum(axis=1, dtype=np.int64)
        out.extend(
            (total / pixels, most <= GRAY_TOLERANCE)
            for total, most in zip(sums.tolist(), spread.tolist(), strict=True)
        )
    return out


def _pixel_stats(im: Image.Image) -> tuple[float, bool]:
    """(mean luma, grayscale) of one loaded image (`_pixel_sample`, `_sample_stats`)."""
    kind, pixels, data = _pixel_sample(im)
    ((luminance, gray),) = _sample_stats(kind, pixels, [data])
    return luminance, gray


class PixelStats:
    """The pixel statistics of a run of images, in the order they were added: samples of
    the same kind and pixel count are counted together (`_sample_stats`), whenever those
    held reach STATS_BATCH_BYTES and when `results` is asked for. The same values as one
    image at a time, at a small part of the per-image cost."""

    def __init__(self, budget: int = STATS_BATCH_BYTES) -> None:
        self._budget = budget
        self._results: list[Stats] = []
        self._pending: dict[tuple[str, int], tuple[list[int], list[bytes]]] = {}
        self._held = 0

    def add(self, sample: PixelSample | None) -> None:
        index = len(self._results)
        self._results.append(UNKNOWN_STATS)
        if sample is None:
            return
        kind, pixels, data = sample
        group = self._pending.get((kind, pixels))
        if group is None:
            group = self._pending[kind, pixels] = ([], [])
        group[0].append(index)
        group[1].append(data)
        self._held += len(data)
        if self._held >= self._budget:
            self._count()

    def _count(self) -> None:
        for (kind, pixels), (indices, samples) in self._pending.items():
            try:
                stats: Sequence[Stats] = _sample_stats(kind, pixels, samples)
            except Exception:  # never refuse an image for what cannot be measured
                stats = [UNKNOWN_STATS] * len(indices)
            for i, value in zip(indices, stats, strict=True):
                self._results[i] = value
        self._pending.clear()
        self._held = 0

    def results(self) -> list[Stats]:
        """The statistics of every image added since the last call, in order."""
        self._count()
        out, self._results = self._results, []
        return out


def check_image(data: bytes | None, where: str, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Decode the image fully (PNG or JPEG only); raise naming `where` if it does not.
    Returns its derived attributes (`ImageInfo`)."""
    width, height, sample = _decode(data, where, max_pixels)
    stats = PixelStats()
    stats.add(sample)
    ((luminance, gray),) = stats.results()
    return ImageInfo(width, height, luminance, gray)


# ----------------------------------------------------------------- readers


@dataclass(frozen=True)
class Example:
    """One input row: encoded image, label index, and how to name it in a message."""

    image: bytes | None
    label: int
    where: str
    extra: tuple[Any, ...] = ()  # values of DatasetInput.attribute_fields, in order


@dataclass(frozen=True)
class ExampleBatch:
    """Input rows read together: row i is (images[i], labels[i], extras[i]), named in a
    message by `where(i)` (only then is the name made)."""

    images: list[bytes | None]
    labels: list[int]
    extras: list[tuple[Any, ...]]
    where: Callable[[int], str]


class BatchedExamples(Iterator[Example]):
    """Rows read a batch at a time, handed out as Examples one by one or, to `iter_shards`,
    as the batches themselves (no object per row). Read one way or the other, not both."""

    def __init__(self, batches: Iterator[ExampleBatch]) -> None:
        self._batches = batches
        self._rows = self._each()

    def _each(self) -> Iterator[Example]:
        for batch in self._batches:
            for i, (image, label, extra) in enumerate(
                zip(batch.images, batch.labels, batch.extras, strict=True)
            ):
                yield Example(image=image, label=label, where=batch.where(i), extra=extra)

    def __next__(self) -> Example:
        return next(self._rows)

    def batches(self) -> Iterator[ExampleBatch]:
        return self._batches


def example_batches(examples: Iterator[Example]) -> Iterator[ExampleBatch]:
    """The rows as batches: a `BatchedExamples`' own, else one row each."""
    if isinstance(examples, BatchedExamples):
        yield from examples.batches()
        return
    for ex in examples:
        yield ExampleBatch([ex.image], [ex.label], [ex.extra], _named(ex.where))


def _named(where: str) -> Callable[[int], str]:
    def name(_: int) -> str:
        return where

    return name


@dataclass
class DatasetInput:
    """A dataset opened for ingestion: labels and row count known, rows read lazily."""

    labels: list[str]
    rows: int
    examples: Iterator[Example]
    split: str | None = None  # the split read, for a folder in the Hugging Face layout
    # The dataset's own attribute columns (see "attribute files"), known before any row.
    attribute_fields: list[pa.Field] = field(default_factory=list)

    @property
    def attributes(self) -> list[str]:
        """Every attribute column name of the attribute files (row_id aside)."""
        return [*DERIVED_ATTRIBUTES, *(f.name for f in self.attribute_fields)]


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
    """The file, read as a stream: pages through a READ_BUFFER_BYTES buffer, nothing read
    ahead. pyarrow's default reads (and keeps) a whole column chunk of the row group it is
    in, so a file written as one row group (`pq.write_table`'s default up to 1Mi rows)
    would hold all its images in memory at once."""
    try:
        return pq.ParquetFile(part.path, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
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


def _attribute_type(t: pa.DataType) -> pa.DataType | None:
    """The attribute type of a Parquet column's type; None for what is not kept (binary,
    nested types, dates, decimals)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return pa.bool_()
    if pa.types.is_integer(t):
        return pa.string() if t == pa.uint64() else pa.int64()  # uint64 may not fit
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    return None


def parquet_attribute_fields(parts: Sequence[ParquetPart], cols: ParquetColumns) -> list[pa.Field]:
    """The extra columns of a Parquet dataset kept as attributes: scalar columns other than
    image and label with plain names, across all parts (a column missing from a part is
    null there; one whose type differs between parts is kept as strings), a ClassLabel
    column as its class names; the first MAX_EXTRA_ATTRIBUTES of them."""
    types: dict[str, pa.DataType] = {}
    for part in parts:
        with _open_parquet_file(part) as pf:
            schema = pf.schema_arrow
        features = hf_features(schema) or {}
        for f in schema:
            if f.name in (cols.image, cols.label) or not attribute_name_ok(f.name):
                continue
            t = _attribute_type(f.type)
            if t is None:
                continue
            if _feature_type(features.get(f.name)) == "ClassLabel":
                t = pa.string()
            if f.name not in types:
                types[f.name] = t
            elif types[f.name] != t:
                types[f.name] = pa.string()
    kept = list(types)[:MAX_EXTRA_ATTRIBUTES]
    if len(types) > len(kept):
        log.info("keeping %d of %d extra columns as attributes", len(kept), len(types))
    return [pa.field(name, types[name]) for name in kept]


def _class_names_of(schema: pa.Schema, column: str) -> list[str] | None:
    feature = (hf_features(schema) or {}).get(column)
    if _feature_type(feature) != "ClassLabel":
        return None
    assert isinstance(feature, dict)
    try:
        return class_label_names(feature)
    except WorkloadFailed:
        return None


def _attribute_column(arr: pa.Array, type_: pa.DataType, names: list[str] | None) -> list[Any]:
    """A batch's column as attribute values of `type_` (None where a value does not fit)."""
    arr = _plain(arr)
    if names is not None and pa.types.is_integer(arr.type):
        ids = arr.cast(pa.int64())
        inside = pc.and_(pc.greater_equal(ids, 0), pc.less(ids, len(names)))
        arr = pc.take(pa.array(names), pc.if_else(inside, ids, None))
    try:
        if type_ == pa.string() and not pa.types.is_string(arr.type):
            if pa.types.is_boolean(arr.type):
                return [None if v is None else _as_text(v) for v in arr.to_pylist()]
            arr = arr.cast(pa.string())
        elif arr.type != type_:
            arr = arr.cast(type_)
        if type_ == pa.string():
            arr = pc.utf8_slice_codeunits(arr, 0, MAX_ATTRIBUTE_CHARS)
    except (pa.ArrowException, ValueError):
        return [None] * len(arr)
    return arr.to_pylist()


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
    fields = parquet_attribute_fields(parts, cols)
    return DatasetInput(
        labels=names,
        rows=rows,
        examples=BatchedExamples(_parquet_batches(parts, cols, names, batch_rows, fields)),
        split=split,
        attribute_fields=fields,
    )


def _parquet_batches(
    parts: list[ParquetPart],
    cols: ParquetColumns,
    names: list[str],
    batch_rows: int,
    fields: Sequence[pa.Field] = (),
) -> Iterator[ExampleBatch]:
    offset = 0
    for part in parts:
        local = 0
        with _open_parquet_file(part) as pf:
            present = [f for f in fields if f.name in pf.schema_arrow.names]
            class_names = {f.name: _class_names_of(pf.schema_arrow, f.name) for f in present}
            extra_columns = [f.name for f in present]
            batches = pf.iter_batches(
                batch_size=batch_rows, columns=[cols.image, cols.label, *extra_columns]
            )
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
                by_name = {
                    f.name: _attribute_column(batch.column(f.name), f.type, class_names[f.name])
                    for f in present
                }
                nulls = [None] * batch.num_rows
                extra_rows: list[tuple[Any, ...]] = (
                    list(zip(*(by_name.get(f.name, nulls) for f in fields), strict=True))
                    if fields
                    else [()] * batch.num_rows
                )

                def where(
                    i: int, part: ParquetPart = part, row: int = offset, at: int = local
                ) -> str:
                    return part.where(row + i, at + i)

                yield ExampleBatch(images.to_pylist(), labels.to_pylist(), extra_rows, where)
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


def _not_data(path: Path) -> bool:
    return _skip(path.name) or path.name in METADATA_NAMES


def imagefolder_root(root: Path) -> Path:
    """The folder holding the class folders: `root`, or the single folder wrapping them
    (metadata files beside the folders do not count)."""
    while True:
        entries = [p for p in root.iterdir() if not _not_data(p)]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        inner = [p for p in entries[0].iterdir() if not _not_data(p)]
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
            elif path.name not in METADATA_NAMES:
                ignored += 1
        files.extend((p, label) for p in sorted(found, key=lambda p: p.as_posix()))
    if ignored:
        log.info("ignored %d non-image files", ignored)
    # Attributes: the folder below the class folder, and metadata files' columns.
    subfolders: list[str | None] = [
        path.parent.relative_to(base / classes[label]).as_posix() for path, label in files
    ]
    subfolders = [None if sub == "." else sub for sub in subfolders]
    fields: list[pa.Field] = []
    extras: list[list[Any]] = [[] for _ in files]
    if any(sub is not None for sub in subfolders):
        fields.append(pa.field(SUBFOLDER, pa.string()))
        for row, sub in zip(extras, subfolders, strict=True):
            row.append(sub)
    meta_fields, meta_rows = imagefolder_metadata(root, [p for p, _ in files])
    room = MAX_EXTRA_ATTRIBUTES - len(fields)
    fields += meta_fields[:room]
    for row, values in zip(extras, meta_rows, strict=True):
        row.extend(values[:room])
    return DatasetInput(
        labels=classes,
        rows=len(files),
        examples=_folder_rows(files, root, [tuple(e) for e in extras]),
        attribute_fields=fields,
    )


def _folder_rows(
    files: list[tuple[Path, int]], root: Path, extras: list[tuple[Any, ...]]
) -> Iterator[Example]:
    for (path, label), extra in zip(files, extras, strict=True):
        where = path.relative_to(root).as_posix()
        if path.stat().st_size > MAX_IMAGE_BYTES:  # before reading it into memory
            raise WorkloadFailed(IMAGE_TOO_LARGE, f"{where}: file above {MAX_IMAGE_BYTES} bytes")
        yield Example(image=path.read_bytes(), label=label, where=where, extra=extra)


# ------------------------------------------------------------ metadata files
#
# An ImageFolder may hold `metadata.csv` or `metadata.jsonl` files, as the `datasets`
# ImageFolder loader reads them: one row per image, its `file_name` relative to the folder
# holding the metadata file, the other columns the image's attributes. An image takes the
# metadata file nearest above it. These files are written by anyone: parsing is bounded
# (bytes, lines, columns, cell size, nesting) and anything out of shape is refused with
# reason BadMetadata, naming the file and line.

BAD_METADATA = "BadMetadata"
METADATA_NAMES = frozenset({"metadata.csv", "metadata.jsonl"})
MAX_METADATA_BYTES = 64 * 1024 * 1024  # all metadata files together
MAX_METADATA_FILES = 1000
MAX_METADATA_ROWS = 2_000_000
METADATA_SPARE_ROWS = 10_000  # rows beyond the images' count a metadata file may hold
MAX_METADATA_COLUMNS = 256
MAX_METADATA_CELL_CHARS = 64 * 1024
INT_TEXT = re.compile(r"[+-]?[0-9]{1,19}")


def _refuse(where: str, what: str) -> WorkloadFailed:
    return WorkloadFailed(BAD_METADATA, f"{where}: {what}")


def _file_key(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise _refuse(where, f"file_name must be a non-empty string, not {type(name).__name__}")
    if len(name) > 4096:
        raise _refuse(where, "file_name is longer than 4096 characters")
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise _refuse(where, f"file_name {name[:200]!r} leaves the metadata file's folder")
    return path.as_posix()


def _scalar_kind(value: Any) -> str | None:
    """`bool`, `int`, `float`, `str` for a scalar JSON value, None for null, `nested`."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if INT64_RANGE[0] <= value <= INT64_RANGE[1] else "float"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "nested"


KIND_TYPES = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}


def _merge_kind(old: str | None, new: str | None, column: str, where: str) -> str | None:
    if new is None or old == new:
        return old if new is None else new
    if old is None:
        return new
    if "nested" in (old, new):
        return "nested"
    if {old, new} == {"int", "float"}:
        return "float"
    raise _refuse(where, f"column {column!r} holds both {old} and {new} values")


def _read_text(path: Path, where: str, budget: int) -> str:
    size = path.stat().st_size
    if size > budget:
        raise _refuse(
            where, f"{size} bytes, above what metadata files may hold ({MAX_METADATA_BYTES})"
        )
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _refuse(where, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _parse_csv(text: str, where: str, max_rows: int) -> tuple[list[str], list[dict[str, Any]]]:
    import csv

    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[dict[str, Any]] = []
    header: list[str] | None = None
    try:
        for record in reader:
            line = reader.line_num
            if header is None:
                header = record
                if len(header) > MAX_METADATA_COLUMNS:
                    raise _refuse(where, f"more than {MAX_METADATA_COLUMNS} columns")
                if len(set(header)) != len(header):
                    raise _refuse(where, "a column name appears twice in the header")
                continue
            if not record:
                continue
            if len(record) != len(header):
                raise _refuse(
                    f"{where} line {line}", f"{len(record)} fields, the header has {len(header)}"
                )
            if len(rows) >= max_rows:
                raise _refuse(where, f"more than {max_rows} rows")
            rows.append({k: (v if v != "" else None) for k, v in zip(header, record, strict=True)})
    except csv.Error as exc:
        raise _refuse(f"{where} line {reader.line_num}", f"not valid CSV ({exc})") from None
    if header is None:
        raise _refuse(where, "empty (no header)")
    columns = [c for c in header if c != "file_name"]
    # CSV cells are text: a column of integers is int64, of numbers float64, else strings.
    for c in columns:
        values = [r[c] for r in rows if r[c] is not None]
        if (
            values
            and all(INT_TEXT.fullmatch(v) for v in values)
            and all(INT64_RANGE[0] <= int(v) <= INT64_RANGE[1] for v in values)
        ):
            convert: Any = int
        else:
            try:
                for v in values:
                    float(v)
                convert = float
            except ValueError:
                convert = None
        if convert is not None:
            for r in rows:
                if r[c] is not None:
                    r[c] = convert(r[c])
    return header, rows


def _parse_jsonl(text: str, where: str, max_rows: int) -> tuple[list[str], list[dict[str, Any]]]:
    header: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        at = f"{where} line {number}"
        if len(line) > MAX_METADATA_CELL_CHARS * 4:
            raise _refuse(at, f"a line longer than {MAX_METADATA_CELL_CHARS * 4} characters")
        doc = load_json(line, at, BAD_METADATA)
        if not isinstance(doc, dict):
            raise _refuse(at, f"each line must be a JSON object, not {type(doc).__name__}")
        if len(doc) > MAX_METADATA_COLUMNS:
            raise _refuse(at, f"more than {MAX_METADATA_COLUMNS} keys")
        if len(rows) >= max_rows:
            raise _refuse(where, f"more than {max_rows} rows")
        header.update(dict.fromkeys(doc))
        if len(header) > MAX_METADATA_COLUMNS:
            raise _refuse(where, f"more than {MAX_METADATA_COLUMNS} distinct keys")
        rows.append(doc)
    return list(header), rows


def read_metadata(
    path: Path, where: str, budget: int = MAX_METADATA_BYTES, max_rows: int = MAX_METADATA_ROWS
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """One metadata file: ({column: kind}, {file name: row}). Kinds are `bool`, `int`,
    `float`, `str` or `nested` (a column of lists or objects, not kept); a column of no
    value at all is left out."""
    text = _read_text(path, where, budget)
    parse = _parse_csv if path.suffix == ".csv" else _parse_jsonl
    header, rows = parse(text, where, max_rows)
    if "file_name" not in header:
        raise _refuse(where, "no file_name column (it names each row's image)")
    kinds: dict[str, str | None] = {c: None for c in header if c != "file_name"}
    by_file: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows, start=1):
        at = f"{where} row {i}"
        key = _file_key(row.get("file_name"), at)
        if key in by_file:
            raise _refuse(at, f"file_name {key[:200]!r} appears twice")
        for c in kinds:
            value = row.get(c)
            if isinstance(value, str) and len(value) > MAX_METADATA_CELL_CHARS:
                raise _refuse(at, f"column {c!r} holds more than {MAX_METADATA_CELL_CHARS} chars")
            kinds[c] = _merge_kind(kinds[c], _scalar_kind(value), c, at)
        by_file[key] = row
    return {c: k for c, k in kinds.items() if k is not None}, by_file


def imagefolder_metadata(
    root: Path, images: Sequence[Path]
) -> tuple[list[pa.Field], list[list[Any]]]:
    """The attribute columns the metadata files under `root` give `images`, and each
    image's values (None where its metadata file has no row for it)."""
    found: dict[Path, Path] = {}
    count = 0
    for path in sorted(root.rglob("metadata.*")):
        rel = path.relative_to(root)
        if path.name not in METADATA_NAMES or any(_skip(p) for p in rel.parts):
            continue
        if not path.is_file():
            continue
        count += 1
        if count > MAX_METADATA_FILES:
            raise _refuse(rel.as_posix(), f"more than {MAX_METADATA_FILES} metadata files")
        if path.parent in found:
            raise _refuse(
                rel.parent.as_posix() or ".",
                "both metadata.csv and metadata.jsonl; keep one of them",
            )
        found[path.parent] = path
    if not found:
        return [], [[] for _ in images]
    budget = MAX_METADATA_BYTES
    kinds: dict[str, str | None] = {}
    tables: dict[Path, dict[str, dict[str, Any]]] = {}
    for folder, path in found.items():
        where = path.relative_to(root).as_posix()
        # A row per image at most matters; a few spare for files named but absent.
        max_rows = min(MAX_METADATA_ROWS, len(images) + METADATA_SPARE_ROWS)
        file_kinds, by_file = read_metadata(path, where, budget, max_rows)
        budget -= path.stat().st_size
        for c, k in file_kinds.items():
            if c in kinds and kinds[c] != k:
                kinds[c] = "nested" if "nested" in (k, kinds[c]) else "mixed"
            else:
                kinds.setdefault(c, k)
        tables[folder] = by_file
    columns = [c for c, k in kinds.items() if k != "nested" and attribute_name_ok(c)][
        :MAX_EXTRA_ATTRIBUTES
    ]
    skipped = [c for c in kinds if c not in columns]
    if skipped:
        log.info("metadata columns not kept as attributes: %s", ", ".join(skipped[:20]))
    fields = [
        pa.field(c, pa.string() if kinds[c] == "mixed" else KIND_TYPES[kinds[c] or "str"])
        for c in columns
    ]
    matched = 0
    values: list[list[Any]] = []
    for image in images:
        folder = image.parent
        while folder not in found and folder != root and root in folder.parents:
            folder = folder.parent
        row = None
        if folder in tables:
            row = tables[folder].get(image.relative_to(folder).as_posix())
        matched += row is not None
        values.append([None if row is None else row.get(c) for c in columns])
    log.info("metadata: %d of %d images have a row; attributes %s", matched, len(images),
             ", ".join(columns) or "none")  # fmt: skip
    return fields, values


# ---------------------------------------------------------------- ingestion


def iter_shards(
    dataset: DatasetInput, shard_rows: int, max_pixels: int = MAX_PIXELS
) -> Iterator[ShardFile]:
    """Check every image and yield shards of `shard_rows` rows (the last may be short),
    each with its attribute file (the shard's bytes are `write_shard`'s alone). Each image
    is decoded once; its pixel statistics are counted with its shard's (`PixelStats`)."""
    if shard_rows < 1:
        raise ValueError("shard_rows must be at least 1")
    images: list[bytes] = []
    labels: list[int] = []
    widths: list[int] = []
    heights: list[int] = []
    stats = PixelStats()
    extras: list[tuple[Any, ...]] = []
    first = 0

    def cut() -> ShardFile:
        shard = write_shard(first, images, labels)
        derived = derived_columns(widths, heights, stats.results())
        sha, data = _attribute_file(first, derived, dataset.attribute_fields, extras)
        return replace(shard, attributes=data, attributes_sha256=sha)

    add_stats = stats.add
    for batch in example_batches(dataset.examples):
        rows = len(batch.images)
        start = 0
        while start < rows:
            stop = min(rows, start + shard_rows - len(images))  # up to the shard's end
            for i in range(start, stop):
                image = batch.images[i]
                try:
                    width, height, sample = _decode(image, "", max_pixels)
                except WorkloadFailed:
                    # The same failure again, naming the row (a name is made only for this).
                    _decode(image, batch.where(i), max_pixels)
                    raise
                widths.append(width)
                heights.append(height)
                add_stats(sample)
            images.extend(batch.images[start:stop])  # type: ignore[arg-type]  # decoded: bytes
            labels.extend(batch.labels[start:stop])
            extras.extend(batch.extras[start:stop])
            start = stop
            if len(images) == shard_rows:
                yield cut()
                first += len(images)
                images, labels, widths, heights, extras = [], [], [], [], []
    if images:
        yield cut()


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
