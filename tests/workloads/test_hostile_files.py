"""Files built to hurt their reader get a named reason and a short message: no
RecursionError, no traceback, no server path. Also the one-image check at packaging."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dyff import models
from dyff.datasets import IMAGE_TOO_LARGE, check_image, scan_parquet_labels
from dyff.errors import WorkloadFailed
from dyff.models import validate_transformers_dir
from dyff.untrusted import MAX_DEPTH, depth, load_json, load_yaml
from tests.workloads.dataset_fixtures import digits, write_parquet
from tests.workloads.test_models import copy_model, edit_config, refusal


def nested(levels: int, leaf: Any = 1) -> str:
    """JSON nested `levels` deep, alternating objects and lists."""
    text = json.dumps(leaf)
    for i in range(levels):
        text = f'{{"k": {text}}}' if i % 2 else f"[{text}]"
    return text


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5_000, 200_000])
def test_deep_json_is_refused_by_name(levels: int) -> None:
    with pytest.raises(WorkloadFailed) as info:
        load_json(nested(levels), "config.json", "BadConfig")
    assert info.value.reason == "BadConfig" and "nested" in info.value.message


def test_documents_within_the_bound_load() -> None:
    assert depth(load_json(nested(MAX_DEPTH), "x", "R")) == MAX_DEPTH
    assert load_yaml("a: [1, {b: 2}]", "x", "R") == {"a": [1, {"b": 2}]}
    with pytest.raises(WorkloadFailed, match="nested"):
        load_yaml("a: " + "[" * 50_000 + "]" * 50_000, "bento.yaml", "UnsupportedBento")


def test_deep_config_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m")
    (model / "config.json").write_text(nested(100_000))
    exc = refusal(model)
    assert exc.reason == models.BAD_CONFIG and "nested" in exc.message
    assert str(tmp_path) not in exc.message


def test_deep_safetensors_header(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m")
    header = nested(100_000).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    exc = refusal(model)
    assert exc.reason == models.BAD_WEIGHTS and "nested" in exc.message


def test_deep_huggingface_metadata(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", digits(4))
    table = pq.read_table(path)
    table = table.replace_schema_metadata({b"huggingface": nested(100_000).encode()})
    pq.write_table(table, path)
    with pytest.raises(WorkloadFailed) as info:
        scan_parquet_labels(path)
    assert info.value.reason == "BadSchema" and "nested" in info.value.message


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds one row of data: a decompression bomb's
    shape (Pillow reads the size before any pixel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" + b"\0" * 3 * min(width, 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9_000, 20_000, 60_000])
def test_decompression_bombs_are_too_large_not_corrupt(side: int) -> None:
    with pytest.raises(WorkloadFailed) as info:
        check_image(_png_header_only(side, side), "row 7")
    assert info.value.reason == IMAGE_TOO_LARGE
    assert info.value.message.startswith("row 7:")


def test_a_model_whose_processor_it_cannot_take_fails_at_packaging(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """An 8x8 ViT whose processor makes 2048x2048 inputs is refused when it is packaged,
    with the model's own error, not accepted and left to crash its evaluations."""
    model = copy_model(tiny_model_dir, tmp_path / "m")
    pre_path = model / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text())
    pre_path.write_text(json.dumps({**pre, "size": {"height": 2048, "width": 2048}}))
    exc = refusal(model)
    assert exc.reason == models.MODEL_DOES_NOT_RUN
    assert "2048x2048" in exc.message and "Traceback" not in exc.message
    assert str(tmp_path) not in exc.message


def test_a_head_of_the_wrong_size_fails_at_packaging(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m")
    # Two more labels than the weights' classifier has: loading reports mismatched weights.
    edit_config(model, lambda c: c["id2label"].update({"10": "ten", "11": "eleven"}))
    exc = refusal(model)
    assert exc.reason in (models.BAD_WEIGHTS, models.MODEL_DOES_NOT_RUN)


def test_the_tiny_model_passes_the_packaging_check(tiny_model_dir: Path) -> None:
    assert validate_transformers_dir(tiny_model_dir).labels == [str(i) for i in range(10)]


def test_table_metadata_of_no_known_shape_is_ignored(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", digits(4))
    table = pq.read_table(path).replace_schema_metadata({b"huggingface": b"not json"})
    pq.write_table(table, path)
    names, rows = scan_parquet_labels(path)
    assert rows == 4 and names == [str(i) for i in range(max(t for _, t in digits(4)) + 1)]
