"""A small client for dyff's model service (see the contract in dyff/runtime/service.py).

Batches of images go as one `.npy` uint8 tensor per request and come back as
a compact (index, score) array, so a request costs the same few milliseconds
whether it holds 1 or 1000 images; `classify_batches` keeps several requests
in flight so that the server never waits for the network.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

NPY_MEDIA_TYPE = "application/x-npy"
MAX_RESPONSE_BYTES = 1 << 30


@dataclass(frozen=True)
class TopK:
    """Per image, the best K label ids and their probabilities, best first."""

    indices: np.ndarray  # (N, K) int32
    scores: np.ndarray  # (N, K) float32

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def labels(self, names: list[str]) -> list[list[str]]:
        return [[names[i] for i in row] for row in self.indices]


def encode_images(images: np.ndarray) -> bytes:
    """uint8 (N, H, W, 3) -> the `.npy` request body."""
    arr = np.ascontiguousarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def decode_topk(data: bytes, n: int, top_k: int | None = None) -> TopK:
    """Parse a `/classify` answer (never unpickling: the server may be user code)."""
    if len(data) > MAX_RESPONSE_BYTES:
        raise ValueError("response too large")
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    names = arr.dtype.names or ()
    if arr.ndim != 2 or "index" not in names or "score" not in names or arr.shape[0] != n:
        raise ValueError(f"unexpected /classify answer: {arr.dtype} {arr.shape} for {n} images")
    k = arr.shape[1] if top_k is None else min(top_k, arr.shape[1])
    return TopK(
        indices=np.ascontiguousarray(arr["index"][:, :k]).astype(np.int32, copy=False),
        scores=np.ascontiguousarray(arr["score"][:, :k]).astype(np.float32, copy=False),
    )


def decode_images(encoded: Iterable[bytes], size: tuple[int, int], resample: int = 2) -> np.ndarray:
    """Encoded images (PNG, JPEG…) -> uint8 (N, H, W, 3) at the model's size.

    `size` and `resample` (a PIL filter code, 2 = bilinear) come from `/metadata`,
    so that images are resized the way the model's own processor would.
    """
    from PIL import Image

    h, w = size
    filt = Image.Resampling(resample)
    out = []
    for data in encoded:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), filt)
            out.append(np.asarray(rgb, dtype=np.uint8))
    return np.stack(out) if out else np.zeros((0, h, w, 3), dtype=np.uint8)


class ModelClient:
    """Talks to one served model at `base_url` (http://host:port)."""

    def __init__(self, base_url: str, *, timeout: float = 600.0, concurrency: int = 4) -> None:
        self.base_url = base_url.rstrip("/")
        self.concurrency = max(1, concurrency)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=self.concurrency + 2),
        )
        self._meta: dict[str, Any] | None = None

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def metadata(self) -> dict[str, Any]:
        """{labels, image_size, top_k, architecture} of the served model (cached)."""
        if self._meta is None:
            r = self._http.post("/metadata", json={})
            r.raise_for_status()
            self._meta = r.json()
        return self._meta

    def classify(self, images: np.ndarray, top_k: int | None = None) -> TopK:
        """Top-k for a batch of uint8 (N, H, W, 3) images in one request."""
        body = encode_images(images)
        r = self._http.post("/classify", content=body, headers={"content-type": NPY_MEDIA_TYPE})
        if r.status_code != 200:
            raise RuntimeError(f"/classify answered {r.status_code}: {r.text[:500]}")
        return decode_topk(r.content, len(images), top_k)

    def classify_batches(
        self, batches: Iterable[np.ndarray], top_k: int | None = None
    ) -> Iterator[TopK]:
        """Top-k for each batch, in order, with up to `concurrency` requests in flight."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="dyff-client") as pool:
            pending: deque[Future[TopK]] = deque()
            for batch in batches:
                pending.append(pool.submit(self.classify, batch, top_k))
                if len(pending) >= self.concurrency:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def classify_images(self, encoded: list[bytes]) -> list[dict[str, Any]]:
        """The generic endpoint: encoded images (PNG, JPEG…) as multipart; JSON answers."""
        files = [("images", (f"{i}.png", data, "application/octet-stream"))
                 for i, data in enumerate(encoded)]  # fmt: skip
        r = self._http.post("/classify_images", files=files)
        if r.status_code != 200:
            raise RuntimeError(f"/classify_images answered {r.status_code}: {r.text[:500]}")
        out = r.json()
        if not isinstance(out, list) or len(out) != len(encoded):
            raise ValueError("unexpected /classify_images answer")
        return out
