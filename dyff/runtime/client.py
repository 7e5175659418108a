"""Clients for served models: `ModelClient` speaks dyff's own fast protocol (the contract
in dyff/runtime/service.py) to dyff's own service; `ServiceClient` speaks the public
protocol image-classification/v1 (docs/serving-protocol.md) to any service.

ModelClient, for dyff's own service:

Images are decoded the way the transformers pipeline loads them and sent at
their own size, unless the served model's `/metadata` says a resize is exactly
what its processor does (then they are resized here, with its filter). A batch
goes as `.npy` uint8 pixels per request and comes back as a compact (index,
score) array, so a request costs the same few milliseconds whether it holds 1
or 1000 images; `classify_batches` keeps several requests in flight so that
the server never waits for the network.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
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


Images = np.ndarray | list[np.ndarray]
# A request's pixels are bounded: images beyond it go in the next request.
MAX_REQUEST_PIXEL_BYTES = 64 << 20
ORIENTATION = 0x0112  # the EXIF tag ImageOps.exif_transpose applies


def encode_images(images: Images) -> bytes:
    """RGB uint8 images -> the `/classify` body: one (N, H, W, 3) `.npy` when they share a
    size, else (height, width) pairs then the concatenated pixels (the service's contract)."""
    if isinstance(images, np.ndarray):
        arr = np.ascontiguousarray(images)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {arr.dtype} {arr.shape}")
        return _npy(arr)
    arrays = [np.asarray(a) for a in images]
    if any(a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 for a in arrays):
        raise ValueError("each image must be uint8 (H, W, 3)")
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return _npy(np.stack(arrays))
    sizes = np.array([a.shape[:2] for a in arrays], dtype=np.int32).reshape(-1, 2)
    header = io.BytesIO()
    total = sum(a.nbytes for a in arrays)
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (total,)}
    )
    # One copy of the pixels, into the body itself.
    pixels = [np.ascontiguousarray(a).data.cast("B") for a in arrays]
    return b"".join([_npy(sizes), header.getvalue(), *pixels])


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_topk(data: bytes, n: int, top_k: int | None = None) -> TopK:
    """Parse a `/classify` answer (never unpickling: the server may be user code)."""
    if len(data) > MAX_RESPONSE_BYTES:
        raise ValueError("response too large")
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    names = arr.dtype.names or ()
    if arr.ndim != 2 or "index" not in names or "score" not in names or arr.shape[0] != n:
        raise ValueError(f"unexpected /classify answer: {arr.dtype} {arr.shape} for {n} images")
    return topk_of(arr, top_k)


def topk_of(arr: np.ndarray, top_k: int | None = None) -> TopK:
    """The first `top_k` columns (all by default) of a structured (N, K) array of `index`
    and `score`, as the service's `predict` gives it."""
    k = arr.shape[1] if top_k is None else min(top_k, arr.shape[1])
    return TopK(
        indices=np.ascontiguousarray(arr["index"][:, :k]).astype(np.int32, copy=False),
        scores=np.ascontiguousarray(arr["score"][:, :k]).astype(np.float32, copy=False),
    )


@dataclass(frozen=True)
class Resize:
    """What a served model lets the client do before sending (its `/metadata` `resize`):
    resize to height x width with this PIL filter, exactly as its processor would."""

    height: int
    width: int
    resample: int

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Resize | None:
        r = meta.get("resize")
        if not isinstance(r, dict):
            return None
        return cls(int(r["height"]), int(r["width"]), int(r.get("resample", 2)))


def decode_image(data: bytes, resize: Resize | None = None) -> np.ndarray:
    """PNG/JPEG bytes -> RGB uint8 (H, W, 3), as the transformers pipeline loads an image
    (EXIF orientation applied, then `convert("RGB")`), resized only if `resize` says so."""
    from PIL import Image, ImageOps

    # Only the formats ingestion accepts: no other decoder is ever tried.
    with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as img:
        img.load()
        # Both steps copy the whole image; skipped where they would copy it unchanged.
        rgb = ImageOps.exif_transpose(img) if img.getexif().get(ORIENTATION, 1) != 1 else img
        if rgb.mode != "RGB":
            rgb = rgb.convert("RGB")
        if resize is not None:
            rgb = rgb.resize((resize.width, resize.height), Image.Resampling(resize.resample))
        return np.asarray(rgb, dtype=np.uint8)


def decode_images(encoded: Iterable[bytes], resize: Resize | None = None) -> Images:
    """Encoded images -> one (N, H, W, 3) array when they share a size, else a list."""
    arrays = [decode_image(data, resize) for data in encoded]
    return _stacked(arrays) if arrays else arrays


def image_batches(
    encoded: Sequence[bytes], batch_size: int, resize: Resize | None = None
) -> Iterator[Images]:
    """`encoded` decoded lazily into request batches of at most `batch_size` images and
    MAX_REQUEST_PIXEL_BYTES of pixels (one larger image goes alone)."""
    batch: list[np.ndarray] = []
    size = 0
    for data in encoded:
        image = decode_image(data, resize)
        if batch and (len(batch) == batch_size or size + image.nbytes > MAX_REQUEST_PIXEL_BYTES):
            yield _stacked(batch)
            batch, size = [], 0
        batch.append(image)
        size += image.nbytes
    if batch:
        yield _stacked(batch)


def _stacked(arrays: list[np.ndarray]) -> Images:
    return np.stack(arrays) if all(a.shape == arrays[0].shape for a in arrays) else arrays


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
        """{protocol, labels, top_k, architecture, device, resize} of the served model
        (cached)."""
        if self._meta is None:
            r = self._http.post("/metadata", json={})
            r.raise_for_status()
            self._meta = r.json()
        return self._meta

    def classify(self, images: Images, top_k: int | None = None) -> TopK:
        """Top-k for a batch of RGB uint8 images (of one size or several) in one request."""
        body = encode_images(images)
        r = self._http.post("/classify", content=body, headers={"content-type": NPY_MEDIA_TYPE})
        if r.status_code != 200:
            raise RuntimeError(f"/classify answered {r.status_code}: {r.text[:500]}")
        return decode_topk(r.content, len(images), top_k)

    def classify_batches(
        self, batches: Iterable[Images], top_k: int | None = None
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


# ------------------------------------------------- image-classification/v1

PROTOCOL = "image-classification/v1"
# What a v1 answer may hold (a user's service is not trusted to be reasonable).
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 1_000
MAX_MESSAGE_CHARS = 500
# A request's encoded images are bounded: images beyond it go in the next request.
MAX_REQUEST_ENCODED_BYTES = 64 << 20
# Failure reasons of a user's service (the evaluation's or model's Ready reason).
MODEL_SERVER_FAILED = "ModelServerFailed"
MODEL_SERVER_ERROR = "ModelServerError"
PROTOCOL_VIOLATION = "ProtocolViolation"
TOP_K_UNAVAILABLE = "TopKUnavailable"


def encoded_batches(
    encoded: Sequence[bytes], batch_size: int, max_bytes: int = MAX_REQUEST_ENCODED_BYTES
) -> Iterator[list[bytes]]:
    """`encoded` images as request batches of at most `batch_size` images and `max_bytes`
    (one larger image goes alone), unchanged: a user's service gets the original files."""
    batch: list[bytes] = []
    size = 0
    for data in encoded:
        if batch and (len(batch) == batch_size or size + len(data) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(data)
        size += len(data)
    if batch:
        yield batch


def _image_name(data: bytes, i: int) -> str:
    """A file name whose suffix says the format (BentoML guesses the type from it)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return f"{i}.png"
    if data[:3] == b"\xff\xd8\xff":
        return f"{i}.jpg"
    return f"{i}.bin"


def check_labels(labels: Any) -> list[str]:
    """A v1 `/metadata` `labels`: distinct non-empty strings; ValueError saying why not."""
    if not isinstance(labels, list) or not labels:
        raise ValueError("labels must be a non-empty list of label names")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"more than {MAX_LABELS} labels")
    if not all(isinstance(x, str) and 0 < len(x) <= MAX_LABEL_CHARS for x in labels):
        raise ValueError(f"labels must be strings of 1..{MAX_LABEL_CHARS} characters")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be distinct")
    return list(labels)


class ServiceError(Exception):
    """A served model broke protocol image-classification/v1 or failed; `reason` names
    how (ModelServerFailed, ModelServerError, ProtocolViolation, TopKUnavailable)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ServiceClient:
    """Talks protocol image-classification/v1 (docs/serving-protocol.md) to a served model:
    a user's Bento or image, or dyff's own service. `exited` (optional) says how the
    server's process ended, or None while it runs: a request that cannot connect then
    fails at once with it rather than after timeouts. `scrub` cleans the server's
    messages of this machine's paths."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 600.0,
        exited: Callable[[], str | None] | None = None,
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._exited = exited or (lambda: None)
        self._scrub = scrub
        self._meta: dict[str, Any] | None = None
        self._index: dict[str, int] = {}

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _post(self, api: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._http.post(f"/{api}", **kwargs)
        except httpx.TransportError as exc:
            ended = self._exited()
            if ended is not None:
                raise ServiceError(MODEL_SERVER_FAILED, ended) from None
            raise ServiceError(
                MODEL_SERVER_FAILED, f"the model server did not answer /{api}: {exc}"
            ) from None
        if r.status_code != 200:
            ended = self._exited()
            if ended is not None:
                raise ServiceError(MODEL_SERVER_FAILED, ended)
            text = self._scrub(r.text[:MAX_MESSAGE_CHARS])
            raise ServiceError(MODEL_SERVER_ERROR, f"/{api} answered {r.status_code}: {text}")
        if len(r.content) > MAX_RESPONSE_BYTES:
            raise ServiceError(PROTOCOL_VIOLATION, f"/{api} answered more than 1 GiB")
        return r

    def _json(self, r: httpx.Response, api: str) -> Any:
        try:
            return r.json()
        except ValueError:
            raise ServiceError(PROTOCOL_VIOLATION, f"/{api} did not answer JSON") from None

    def metadata(self) -> dict[str, Any]:
        """The service's `/metadata`, checked: protocol image-classification/v1, labels."""
        if self._meta is None:
            meta = self._json(self._post("metadata", json={}), "metadata")
            if not isinstance(meta, dict):
                raise ServiceError(PROTOCOL_VIOLATION, "/metadata must answer a JSON object")
            if meta.get("protocol") != PROTOCOL:
                got = str(meta.get("protocol"))[:80]
                raise ServiceError(
                    PROTOCOL_VIOLATION, f"/metadata says protocol {got!r}, not {PROTOCOL!r}"
                )
            try:
                labels = check_labels(meta.get("labels"))
            except ValueError as exc:
                raise ServiceError(PROTOCOL_VIOLATION, f"/metadata: {exc}") from None
            self._index = {name: i for i, name in enumerate(labels)}
            self._meta = meta
        return self._meta

    @property
    def labels(self) -> list[str]:
        return list(self.metadata()["labels"])

    def classify_images(self, encoded: list[bytes]) -> list[dict[str, Any]]:
        """`/classify_images` on encoded images (the files, unchanged): one answer per
        image, `{"labels": [...], "scores": [...]}` best first, as the service gave it."""
        files = [("images", (_image_name(d, i), d, "application/octet-stream"))
                 for i, d in enumerate(encoded)]  # fmt: skip
        out = self._json(self._post("classify_images", files=files), "classify_images")
        if not isinstance(out, list) or len(out) != len(encoded):
            raise ServiceError(
                PROTOCOL_VIOLATION,
                f"/classify_images must answer a list of {len(encoded)} results, one per image",
            )
        return out

    def classify(self, encoded: list[bytes], top_k: int) -> TopK:
        """The best min(top_k, labels) (label id, score) per image, best first; label ids
        index `/metadata` labels. ServiceError if an answer breaks the protocol or holds
        fewer labels than that."""
        self.metadata()
        want = max(1, min(top_k, len(self._index)))
        indices = np.empty((len(encoded), want), dtype=np.int32)
        scores = np.empty((len(encoded), want), dtype=np.float32)
        for row, answer in enumerate(self.classify_images(encoded)):
            names, values = self._answer(answer, want)
            indices[row] = names
            scores[row] = values
        return TopK(indices=indices, scores=scores)

    def _answer(self, answer: Any, want: int) -> tuple[list[int], list[float]]:
        """One `/classify_images` result -> its best `want` (label id, score), checked."""
        names = answer.get("labels") if isinstance(answer, dict) else None
        values = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(names, list) or not isinstance(values, list) or len(names) != len(values):
            raise ServiceError(
                PROTOCOL_VIOLATION,
                "each /classify_images result must be {labels: [...], scores: [...]} of the "
                "same length",
            )
        if len(names) < want:
            raise ServiceError(
                TOP_K_UNAVAILABLE,
                f"/classify_images answered {len(names)} labels for an image; the evaluation "
                f"keeps {want} (topK): answer every label, or at least topK",
            )
        ids = []
        for name in names[:want]:
            i = self._index.get(name) if isinstance(name, str) else None
            if i is None:
                raise ServiceError(
                    PROTOCOL_VIOLATION,
                    f"/classify_images answered label {str(name)[:80]!r}, not in /metadata",
                )
            ids.append(i)
        if len(set(ids)) != want:
            raise ServiceError(PROTOCOL_VIOLATION, "/classify_images answered a label twice")
        top = values[:want]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in top):
            raise ServiceError(PROTOCOL_VIOLATION, "scores must be numbers")
        if not np.isfinite(np.asarray(top, dtype=np.float64)).all():
            raise ServiceError(PROTOCOL_VIOLATION, "scores must be finite numbers")
        return ids, [float(v) for v in top]
