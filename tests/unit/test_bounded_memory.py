"""Memory that does not grow with the rows (issue 16): ingestion reads its input and cuts
shards without reading ahead, and metrics are tallied a batch at a time with the very
numbers `metrics.compute` gives over all the rows at once."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageChops, ImageStat

from dyff import datasets, metrics, results
from dyff.evaluation import encode_json, encode_predictions, prediction_table

ALL = ["accuracy", "top5_accuracy", "precision", "recall", "f1", "confusion_matrix", "ece"]


def random_rows(rng: np.random.Generator, n: int, k: int, width: int) -> tuple[np.ndarray, ...]:
    labels = rng.integers(0, k, n).astype(np.int32)
    predicted = rng.integers(-1, k + 2, n).astype(np.int32)  # some outside the classes
    score = rng.random(n).astype(np.float32)
    score[: n // 4] = rng.choice(np.linspace(0, 1, 16, dtype=np.float32), n // 4)  # bin edges
    topk = rng.integers(0, k + 1, (n, width)).astype(np.int32)
    return labels, predicted, score, topk


# ---------------------------------------------------------------- the tally


@pytest.mark.parametrize("seed", range(12))
def test_a_tally_of_batches_is_compute_over_all_rows_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n, width = int(rng.integers(2, 14)), int(rng.integers(1, 4000)), int(rng.integers(1, 8))
    labels, predicted, score, topk = random_rows(rng, n, k, width)
    names = [f"c{i}" for i in range(k)]
    model_classes = None if seed % 3 else int(rng.integers(1, 12))
    whole = metrics.compute(labels, predicted, score, topk, names, ALL, model_classes=model_classes)
    tally = metrics.Tally(k)
    cuts = [0, *sorted(rng.integers(0, n + 1, 6).tolist()), n]
    for a, b in itertools.pairwise(cuts):
        tally.add(labels[a:b], predicted[a:b], score[a:b], topk[a:b])
    doc = tally.document(names, ALL, model_classes=model_classes)
    # The same bytes: float sums included (the calibration bins' are continued in order).
    assert encode_json(doc) == encode_json(whole)
    assert doc["rows"] == n and "ece" in doc


def test_a_tally_takes_the_narrowest_top_k_and_none_when_rows_came_without() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5])
    topk = np.array([[9, 9, 0], [9, 1, 9], [2, 9, 9], [9, 9, 3], [9, 4, 9], [5, 9, 9]])
    tally = metrics.Tally(10)
    tally.add(labels[:3], labels[:3], np.ones(3), topk[:3])
    tally.add(labels[3:], labels[3:], np.ones(3), topk[3:, :2])  # narrower: 2 columns
    doc = tally.document([str(i) for i in range(10)], ["top5_accuracy"])
    # Over 2 columns everywhere, as compute would see one (6, 2) array: rows 1, 2, 4, 5.
    assert doc["top5Accuracy"] == pytest.approx(4 / 6)
    tally.add(labels[:1], labels[:1], np.ones(1), None)
    assert tally.document([str(i) for i in range(10)], ["top5_accuracy"])["top5Accuracy"] is None


def test_a_tally_refuses_labels_outside_the_classes() -> None:
    tally = metrics.Tally(3)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        tally.add(np.array([0, 3]), np.array([0, 0]), np.ones(2))


# -------------------------------------------------------------- row coverage


def coverage(*batches: list[int]) -> results.RowCoverage:
    c = results.RowCoverage()
    for batch in batches:
        c.add(np.array(batch, dtype=np.int64))
    return c


def test_row_coverage_accepts_each_row_once_in_any_order() -> None:
    assert coverage([0, 1, 2], [3, 4], [5]).exactly(6)
    assert coverage([3, 5, 4], [2, 0, 1]).exactly(6)
    assert coverage([0, 2, 4], [1, 3, 5]).exactly(6)
    assert coverage().exactly(0)
    assert len(coverage(*([i * 10 + j for j in range(10)] for i in range(50))).runs) == 1


@pytest.mark.parametrize(
    "batches",
    [([0, 1, 2], [2, 3]), ([0, 1, 1, 3], []), ([0, 1], [3, 4]), ([1, 2, 3, 4],), ([-1, 0, 1, 2],),
     ([0, 1, 2, 3, 4],), ([0, 1], [2])],
)  # fmt: skip
def test_row_coverage_refuses_repeats_gaps_and_strangers(batches: tuple[list[int], ...]) -> None:
    assert not coverage(*batches).exactly(4)


# ---------------------------------------------------------- metrics of files


def prediction_files(tmp: Path, rng: np.random.Generator, sizes: list[int], k: int) -> list[Path]:
    paths, first = [], 0
    for i, n in enumerate(sizes):
        labels = rng.integers(0, k, n)
        top = np.argsort(rng.random((n, k + 1)), axis=1)[:, :5]  # model ids, k+1 classes
        scores = np.sort(rng.random((n, 5)).astype(np.float32), axis=1)[:, ::-1]
        label_map = np.arange(k + 1)  # the model's last class is one the dataset lacks
        table = prediction_table(np.arange(first, first + n), labels, top, scores, label_map)
        path = tmp / f"{i}.parquet"
        path.write_bytes(encode_predictions(table))
        paths.append(path)
        first += n
    return paths


def test_metrics_of_files_are_computed_a_batch_at_a_time_with_the_same_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    k, sizes = 8, [45, 45, 1, 30, 0, 44]
    paths = prediction_files(tmp_path, rng, sizes, k)
    names = [str(i) for i in range(k)]
    whole = pl_frame(paths)
    expected = metrics.compute(
        whole["label"], whole["predicted"], whole["score"], whole["topk"], names, ALL
    )
    heights: list[int] = []
    real = results.prediction_batches

    def spy(*args: object, **kwargs: object) -> Iterator[object]:
        for frame in real(*args, **kwargs):  # type: ignore[arg-type]
            heights.append(frame.height)
            yield frame

    monkeypatch.setattr(results, "prediction_batches", spy)
    doc = results.stream_metrics(paths, names, ALL, expected_rows=sum(sizes), batch_rows=16)
    assert encode_json(doc) == encode_json(expected)
    assert doc["predictedOutsideLabels"] > 0
    assert max(heights) == 16 and sum(heights) == sum(sizes)


def pl_frame(paths: list[Path]) -> dict[str, np.ndarray]:
    table = pa.concat_tables([pq.read_table(p) for p in paths])
    return {
        "label": table.column("label").to_numpy(),
        "predicted": table.column("predicted").to_numpy(),
        "score": table.column("score").to_numpy(),
        "topk": np.array(table.column("topk_labels").to_pylist()).reshape(-1, 5),
    }


def test_metrics_of_files_check_every_row_is_there_once_before_anything(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    paths = prediction_files(tmp_path, rng, [10, 10], 4)
    names = ["a", "b", "c", "d"]
    for files, rows in (([*paths, paths[0]], 20), (paths[:1], 20), (paths, 21)):
        with pytest.raises(RuntimeError, match="dataset rows once"):
            results.stream_metrics(files, names, ALL, expected_rows=rows, batch_rows=4)
    # Labels beyond the names are refused, once the rows are known to be all there.
    with pytest.raises(ValueError, match="true label ids"):
        results.stream_metrics(paths, names[:1], ALL, expected_rows=20, batch_rows=4)
    with pytest.raises(RuntimeError, match="dataset rows once"):
        results.stream_metrics(paths, names[:1], ALL, expected_rows=19, batch_rows=4)


# ------------------------------------------------------------------ ingestion


def pillow_pixel_stats(im: Image.Image) -> tuple[float, bool]:
    """The derived pixel statistics as Pillow computes them (the reference)."""
    if im.mode not in datasets.REDUCIBLE_MODES:
        im = im.convert("L" if im.mode in datasets.GRAY_MODES else "RGB")
    factor = max(1, -(-max(im.width, im.height) // datasets.STATS_SIDE))
    small = im.reduce(factor) if factor > 1 else im
    if small.mode in datasets.GRAY_MODES:
        return float(ImageStat.Stat(small.convert("L")).mean[0]), True
    rgb = small.convert("RGB")
    r, g, b = rgb.split()
    spread = max(
        int(ImageChops.difference(r, g).getextrema()[1]),  # type: ignore[arg-type]
        int(ImageChops.difference(g, b).getextrema()[1]),  # type: ignore[arg-type]
    )
    return float(ImageStat.Stat(rgb.convert("L")).mean[0]), spread <= datasets.GRAY_TOLERANCE


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I", "F", "CMYK", "I;16"])
def test_pixel_statistics_are_pillows(mode: str) -> None:
    rng = np.random.default_rng(0)
    for width, height in ((1, 1), (16, 16), (7, 300), (513, 257)):
        for kind in ("noise", "near-gray", "flat"):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            if kind == "near-gray":
                pixels[..., 1] = pixels[..., 0]
                pixels[..., 2] = np.clip(pixels[..., 0].astype(int) + 3, 0, 255)
            elif kind == "flat":
                pixels[:] = 250
            im = Image.fromarray(pixels).convert(mode)
            assert datasets._pixel_stats(im) == pillow_pixel_stats(im), (width, height, kind)


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value % 256, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_cutting_shards_never_holds_more_than_one_shard_of_rows() -> None:
    """However many rows come in, a shard is cut as soon as it is full: rows read but not
    yet in a yielded shard never exceed one shard."""
    pngs = [png(i) for i in range(7)]
    read = 0

    def rows(n: int) -> Iterator[datasets.Example]:
        nonlocal read
        for i in range(n):
            read += 1
            yield datasets.Example(image=pngs[i % 7], label=i % 3, where=f"row {i}")

    shard_rows, n = 10, 1003
    dataset = datasets.DatasetInput(labels=["a", "b", "c"], rows=n, examples=rows(n))
    cut = 0
    for shard in datasets.iter_shards(dataset, shard_rows):
        cut += shard.rows
        assert read - cut == 0 or (read - cut < shard_rows and cut == n)
        assert shard.rows == min(shard_rows, n - shard.first_row)
    assert cut == n == read


def test_reading_a_parquet_file_of_one_row_group_holds_a_batch_not_the_file(
    tmp_path: Path,
) -> None:
    """A file written as one row group (`pq.write_table`'s default) is read a batch at a
    time: Arrow's peak allocation stays far below the image column's size. In a fresh
    process, so that nothing else has touched Arrow's memory pool."""
    rows, size = 10_000, 4096
    rng = np.random.default_rng(0)
    images = [rng.bytes(size) for _ in range(rows)]  # incompressible: ~40 MiB of column
    table = pa.table({"image": pa.array(images, pa.binary()), "label": pa.array([0] * rows)})
    path = tmp_path / "one-group.parquet"
    pq.write_table(table, path, row_group_size=rows, compression="none", use_dictionary=False)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        import pyarrow as pa
        from dyff.datasets import open_parquet
        opened = open_parquet(Path(sys.argv[1]))
        n = sum(len(ex.image) for ex in opened.examples)
        print(json.dumps({"bytes": n, "peak": pa.default_memory_pool().max_memory()}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["bytes"] == rows * size
    # Read whole, the column chunk alone is 40 MiB; a batch at a time, ~10 MiB (pages
    # through a 1 MiB buffer, whatever the file's size).
    assert figures["peak"] < 16 * 1024 * 1024, figures
