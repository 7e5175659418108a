"""Ingestion's per-image cost (issue 16) cut without changing a result: pixel statistics
counted many images at a time equal those of each image alone (and Pillow's), the raw
pixels read past `tobytes` equal `tobytes`, the EXIF orientation's shortcut agrees with
`getexif`, and the file store's in-memory path keeps its contract."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from dyff import datasets
from dyff.errors import IntegrityError, WorkloadFailed
from dyff.stores.file import FileBlobStore

MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "I", "F", "CMYK", "I;16"]
SIZES = [(1, 1), (16, 16), (16, 16), (7, 300), (300, 7), (513, 257), (32, 8), (256, 256)]


def images(seed: int, n: int) -> list[Image.Image]:
    """Images of every mode and several sizes (some sharing a pixel count but not a shape:
    32x8 and 16x16), noise, near-gray and flat."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        width, height = SIZES[rng.integers(len(SIZES))]
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        kind = i % 3
        if kind == 1:  # channels within GRAY_TOLERANCE, or just beyond
            pixels[..., 1] = pixels[..., 0]
            step = int(rng.integers(3, 5))
            pixels[..., 2] = np.clip(pixels[..., 0].astype(int) + step, 0, 255)
        elif kind == 2:
            pixels[:] = rng.integers(0, 256)
        out.append(Image.fromarray(pixels).convert(MODES[rng.integers(len(MODES))]))
    return out


@pytest.mark.parametrize("budget", [1, 5000, datasets.STATS_BATCH_BYTES, 1 << 40])
def test_pixel_statistics_counted_together_are_each_images_own(budget: int) -> None:
    ims = images(budget % 7, 120)
    alone = [datasets._pixel_stats(im) for im in ims]
    stats = datasets.PixelStats(budget)
    for im in ims:
        stats.add(datasets._pixel_sample(im))
    assert stats.results() == alone
    # Results are per run of images: the next call starts afresh.
    stats.add(None)
    stats.add(datasets._pixel_sample(ims[0]))
    assert stats.results() == [datasets.UNKNOWN_STATS, alone[0]]
    assert stats.results() == []


def test_pixel_statistics_of_a_shard_of_many_small_images_in_one_group() -> None:
    """A shard of same-sized images, more than one chunk of pixels, in one group."""
    rng = np.random.default_rng(3)
    ims = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(300)]
    samples = [datasets._pixel_sample(im) for im in ims]
    assert datasets.STATS_CHUNK_PIXELS < 300 * 256
    together = datasets._sample_stats("RGB", 256, [s[2] for s in samples])
    assert together == [datasets._sample_stats("RGB", 256, [s[2]])[0] for s in samples]
    # And with numpy's plain per-image formula (as the statistics were counted before).
    for im, (luminance, gray) in zip(ims, together, strict=True):
        rgb = np.asarray(im).astype(np.int64)
        luma = (rgb @ np.array([19595, 38470, 7471]) + 0x8000) >> 16
        assert luminance == int(luma.sum()) / luma.size
        spread = max(
            np.abs(rgb[..., 0] - rgb[..., 1]).max(), np.abs(rgb[..., 1] - rgb[..., 2]).max()
        )
        assert gray == (spread <= datasets.GRAY_TOLERANCE)


def test_an_image_of_no_pixels_has_unknown_statistics() -> None:
    with pytest.raises(ValueError, match="no pixels"):
        datasets._sample_stats("L", 0, [b""])
    stats = datasets.PixelStats()
    stats.add(("L", 0, b""))
    stats.add(("L", 1, b"\x80"))
    assert stats.results() == [datasets.UNKNOWN_STATS, (128.0, True)]


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [(1, 1), (16, 16), (7, 300), (300, 7), (256, 256), (2000, 3)])
def test_raw_pixels_are_tobytes(mode: str, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    im = im.convert(mode)
    assert datasets._raw_pixels(im) == im.tobytes()
    # A decoded image too (the ingestion's case), and a reduced copy of one.
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as decoded:
        decoded.load()
        assert datasets._raw_pixels(decoded) == decoded.tobytes() == im.tobytes()
        half = decoded.reduce(2) if min(size) > 1 else decoded
        assert datasets._raw_pixels(half) == half.tobytes()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[datasets.EXIF_ORIENTATION] = orientation
    return exif.tobytes()


def _xmp(orientation: int) -> bytes:
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        b'22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
        b' tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>' % orientation
    )


def oriented(form: str, how: str, orientation: int) -> bytes:
    """A 20x40 image whose orientation is told by an EXIF block, XMP, a PNG text chunk of
    another name, or nothing."""
    im = Image.fromarray(np.full((40, 20, 3), 90, np.uint8))
    buf = io.BytesIO()
    if form == "JPEG":
        extra = {"exif": _exif(orientation)} if how == "exif" else {}
        if how == "xmp":
            extra = {"xmp": _xmp(orientation)}
        im.save(buf, format="JPEG", **extra)  # type: ignore[arg-type]
        return buf.getvalue()
    info = PngImagePlugin.PngInfo()
    if how == "xmp":
        info.add_itxt("XML:com.adobe.xmp", _xmp(orientation).decode())
    elif how == "xmp-text":
        info.add_text("XML:com.adobe.xmp", _xmp(orientation).decode())
    elif how == "comment":
        info.add_text("Comment", "tiff:Orientation=6 is not where Pillow looks")
    extra = {"exif": _exif(orientation)} if how == "exif" else {}
    im.save(buf, format="PNG", pnginfo=info, **extra)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.mark.parametrize(
    ("form", "how"),
    [
        ("PNG", "exif"), ("PNG", "xmp"), ("PNG", "xmp-text"), ("PNG", "comment"),
        ("PNG", "none"), ("JPEG", "exif"), ("JPEG", "xmp"), ("JPEG", "none"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 8])
def test_orientation_shortcut_agrees_with_getexif(form: str, how: str, orientation: int) -> None:
    data = oriented(form, how, orientation)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        turned = im.getexif().get(datasets.EXIF_ORIENTATION) in (5, 6, 7, 8)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert datasets._quarter_turned(im) == turned
    if how in ("exif", "xmp") or (how == "xmp-text" and form == "PNG"):
        assert turned == (orientation >= 5)  # Pillow does find it there
    info = datasets.check_image(data, "x")
    assert (info.width, info.height) == ((40, 20) if turned else (20, 40))


def test_the_file_stores_in_memory_put_checks_before_it_writes(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    data = b"x" * 1000
    digest = hashlib.sha256(data).hexdigest()
    for view in (data, bytearray(data), memoryview(data)):
        info = store.put("a/b/one", view, sha256=digest, size=1000)
        assert (info.size, info.sha256) == (1000, digest) and store.get("a/b/one") == data
    for sha, size, field in (("0" * 64, None, "sha256"), (None, 999, "sizeBytes"),
                             (None, 1001, "sizeBytes")):  # fmt: skip
        with pytest.raises(IntegrityError) as exc:
            store.put("a/c/bad", data, sha256=sha, size=size)
        assert exc.value.field == field
        assert not store.exists("a/c/bad")
    # Nothing is left in staging, and a folder deleted empty is made again.
    assert store.delete("a/b/one") and not (tmp_path / "blobs" / "a").exists()
    store.put("a/b/one", data)
    assert store.get("a/b/one") == data
    assert list((tmp_path / "blobs" / ".staging").iterdir()) == []


def test_rows_read_a_batch_at_a_time_are_the_rows_one_at_a_time(tmp_path: Path) -> None:
    """`iter_shards` reads a Parquet dataset's rows as batches (no object per row); read
    one by one, they are the same rows, and a bad row in a later batch is named as before."""
    from tests.workloads.dataset_fixtures import corrupt, digits, write_parquet

    examples = digits(600)
    path = write_parquet(tmp_path / "d.parquet", examples, row_group_rows=100)
    one_by_one = list(datasets.open_parquet(path).examples)
    assert [(e.image, e.label, e.where) for e in one_by_one] == [
        (image, label, f"row {i}") for i, (image, label) in enumerate(examples)
    ]
    batches = list(datasets.example_batches(datasets.open_parquet(path).examples))
    assert len(batches) == -(-600 // datasets.READ_BATCH_ROWS)
    rows = [(b.images[i], b.labels[i], b.where(i)) for b in batches for i in range(len(b.images))]
    assert rows == [(e.image, e.label, e.where) for e in one_by_one]
    # Shards cut across batch boundaries: the same as write_shard over the rows.
    shards = list(datasets.iter_shards(datasets.open_parquet(path), 250))
    assert [s.sha256 for s in shards] == [
        datasets.write_shard(first, [b for b, _ in examples[first : first + 250]],
                             [t for _, t in examples[first : first + 250]]).sha256
        for first in (0, 250, 500)
    ]  # fmt: skip
    examples[555] = (corrupt(examples[555][0]), examples[555][1])
    bad = write_parquet(tmp_path / "bad.parquet", examples, row_group_rows=100)
    with pytest.raises(WorkloadFailed) as exc:
        list(datasets.iter_shards(datasets.open_parquet(bad), 250))
    assert exc.value.reason == datasets.CORRUPT_IMAGE
    assert exc.value.message.startswith("row 555: not a decodable PNG or JPEG image")
