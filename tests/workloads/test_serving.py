"""The packaged tiny model under a real `bentoml serve`, against a bare forward pass."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from dyff.runtime.client import (
    ModelClient,
    Resize,
    decode_images,
    decode_topk,
    encode_images,
    image_batches,
)
from dyff.runtime.serve import serve_bento
from dyff.tinymodels import digits_png, to_pixel_values

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bare_top1(tiny_model_dir: Path, digits_test: Any) -> np.ndarray:
    """Top-1 of a bare in-process forward pass over the test split."""
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_model_dir, use_safetensors=True)
    model.eval()
    with torch.inference_mode():
        logits = model(pixel_values=to_pixel_values(digits_test.images)).logits
    return logits.argmax(-1).numpy()


def test_metadata(served_tiny: str) -> None:
    with ModelClient(served_tiny) as client:
        meta = client.metadata()
    assert meta["protocol"] == "image-classification/v1" and meta["classify"] == 2
    assert meta["labels"] == [str(i) for i in range(10)]
    assert meta["top_k"] == 10
    assert meta["architecture"] == "ViTForImageClassification"
    # A resize-only processor: the client may resize, with PIL bilinear as the processor does.
    assert meta["resize"] == {"height": 8, "width": 8, "resample": 2}


def test_decode_images_as_they_are_or_resized(digits_test: Any) -> None:
    same = decode_images(digits_png(digits_test.images[:5]), Resize(8, 8, 2))
    np.testing.assert_array_equal(same, digits_test.images[:5])
    big = np.kron(digits_test.images[:3], np.ones((3, 3, 1), dtype=np.uint8))
    small = decode_images(digits_png(big), Resize(8, 8, 3))
    assert isinstance(small, np.ndarray) and small.shape == (3, 8, 8, 3)
    mixed = decode_images(digits_png(digits_test.images[:2]) + digits_png(big[:1]))
    assert isinstance(mixed, list) and [a.shape for a in mixed] == [(8, 8, 3)] * 2 + [(24, 24, 3)]


def test_batches_are_bounded_by_count_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from dyff.runtime import client

    pngs = digits_png(np.zeros((7, 40, 40, 3), dtype=np.uint8))
    assert [len(b) for b in image_batches(pngs, 3)] == [3, 3, 1]
    monkeypatch.setattr(client, "MAX_REQUEST_PIXEL_BYTES", 2 * 40 * 40 * 3)
    assert [len(b) for b in image_batches(pngs, 5)] == [2, 2, 2, 1]


def test_images_of_several_sizes_in_one_request(served_tiny: str, digits_test: Any) -> None:
    """The ragged payload: each image at its own size, resized by the server as the
    processor would, gives what the same images resized by the client give."""
    images = digits_test.images[:6]
    mixed = [np.kron(img, np.ones((k, k, 1), dtype=np.uint8)) for k, img in
             zip((1, 2, 3, 1, 5, 2), images, strict=True)]  # fmt: skip
    with ModelClient(served_tiny) as client:
        ragged = client.classify(mixed, top_k=3)
        resized = client.classify(decode_images(_png_each(mixed), Resize(8, 8, 2)), 3)
    np.testing.assert_array_equal(ragged.indices, resized.indices)
    np.testing.assert_allclose(ragged.scores, resized.scores, atol=1e-6)


def _png_each(images: list[np.ndarray]) -> list[bytes]:
    return [digits_png(img[None])[0] for img in images]


def test_served_predictions_match_bare_forward_pass(
    served_tiny: str, digits_test: Any, bare_top1: np.ndarray
) -> None:
    with ModelClient(served_tiny) as client:
        top = client.classify(digits_test.images, top_k=5)
    assert top.indices.shape == (len(digits_test.labels), 5)
    np.testing.assert_array_equal(top.indices[:, 0], bare_top1)
    assert (top.indices[:, 0] == digits_test.labels).mean() > 0.9
    # Probabilities, best first, distinct labels per image.
    assert np.all(np.diff(top.scores, axis=1) <= 0)
    assert np.all(top.scores.sum(axis=1) <= 1.0 + 1e-5)
    assert all(len(set(row.tolist())) == 5 for row in top.indices)


def test_batches_in_flight_keep_order(
    served_tiny: str, digits_test: Any, bare_top1: np.ndarray
) -> None:
    images = digits_test.images
    batches = [images[i : i + 37] for i in range(0, len(images), 37)]
    with ModelClient(served_tiny, concurrency=4) as client:
        results = list(client.classify_batches(batches, top_k=1))
    assert [len(r) for r in results] == [len(b) for b in batches]
    np.testing.assert_array_equal(np.concatenate([r.indices[:, 0] for r in results]), bare_top1)


def test_encoded_images_endpoint_agrees(
    served_tiny: str, digits_test: Any, bare_top1: np.ndarray
) -> None:
    pngs = digits_png(digits_test.images[:16])
    with ModelClient(served_tiny) as client:
        answers = client.classify_images(pngs)
    assert [a["labels"][0] for a in answers] == [str(i) for i in bare_top1[:16]]
    assert all(len(a["scores"]) == 10 for a in answers)


def test_other_image_sizes_are_resized_by_the_server(served_tiny: str, digits_test: Any) -> None:
    big = np.kron(digits_test.images[:64], np.ones((4, 4, 1), dtype=np.uint8))
    assert big.shape[1:] == (32, 32, 3)
    with ModelClient(served_tiny) as client:
        top = client.classify(big, top_k=1)
    assert (top.indices[:, 0] == digits_test.labels[:64]).mean() > 0.8


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        encode_images(np.zeros((2, 8, 8, 3), dtype=np.uint8))[:-5],  # truncated
        b"\x93NUMPY" + b"\x01\x00" + b"\x10\x00" + b"{'descr': '|O'}" + b" " * 100,
    ],
)
def test_bad_payloads_answer_400(served_tiny: str, body: bytes) -> None:
    r = httpx.post(
        f"{served_tiny}/classify", content=body, headers={"content-type": "application/x-npy"}
    )
    assert r.status_code == 400


def test_wrong_dtype_and_shape_answer_400(served_tiny: str) -> None:
    import io

    for arr in (np.zeros((2, 8, 8, 3), dtype=np.float32), np.zeros((2, 8, 8), dtype=np.uint8)):
        buf = io.BytesIO()
        np.save(buf, arr)
        r = httpx.post(
            f"{served_tiny}/classify",
            content=buf.getvalue(),
            headers={"content-type": "application/x-npy"},
        )
        assert r.status_code == 400, r.text


def test_pickle_content_type_refused(served_tiny: str) -> None:
    # BentoML unpickles this media type between its own processes only.
    r = httpx.post(
        f"{served_tiny}/classify",
        content=b"\x80\x04K\x01.",
        headers={"content-type": "application/vnd.bentoml+pickle"},
    )
    assert r.status_code >= 400


def test_client_refuses_pickled_answers() -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        decode_topk(buf.getvalue(), 1)


def test_serve_stops_all_its_processes(tiny_bento: Path, tmp_path: Path) -> None:
    import psutil

    from dyff.runtime.serve import server_processes

    with serve_bento(tiny_bento, None, tmp_path / "home", top_k=3) as url:
        port = int(url.rsplit(":", 1)[1])
        with ModelClient(url) as client:
            assert client.metadata()["top_k"] == 3
        servers = [p for p in psutil.process_iter(["cmdline"])
                   if f"--port {port}" in " ".join(p.info["cmdline"] or [])
                   and "serve" in (p.info["cmdline"] or [])]  # fmt: skip
        assert len(servers) == 1
        family = server_processes(servers[0].pid)
        assert len(family) >= 2  # the arbiter and its worker
        assert servers[0].pid == os.getpgid(servers[0].pid) != os.getpgid(0)
    assert not [p for p in family if p.is_running()]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/readyz", timeout=2)
    log = tmp_path / "home" / "serve" / f"bentoml-serve-{port}.log"
    assert "dyff-image-classifier" in log.read_text()


def test_serve_reports_a_broken_bento(tmp_path: Path) -> None:
    bento = tmp_path / "broken"
    (bento / "src").mkdir(parents=True)
    (bento / "bento.yaml").write_text("service: nothing:Here\nname: x\nversion: y\n")
    with (
        pytest.raises(RuntimeError, match="exited"),
        serve_bento(bento, bentoml_home=tmp_path / "home", startup_timeout=60),
    ):
        pass
