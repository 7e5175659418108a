"""dyff's BentoML service for image classification (copied verbatim into every Bento).

This file must stay standalone — it imports nothing from dyff — because
`package_transformers` copies it into the Bento as `service.py` next to the
model folder `model/`, and a Bento must serve wherever BentoML, torch and
transformers are installed.

The contract (also what an image-form model must expose to be evaluated):

- `POST /classify` (batchable): the body is one `.npy` file (numpy's format,
  no pickle) holding a uint8 array (N, H, W, 3) of RGB images, sent with
  `Content-Type: application/x-npy`. Images are resized to the model's size
  if they differ. The answer is an `.npy` of a structured array (N, K) with
  fields `index` (int32, the label id) and `score` (float32, softmax
  probability), best first; K = min(DYFF_TOP_K, number of labels). A binary
  tensor both ways keeps the per-request cost flat in N: no per-image
  Python, no JSON of numbers.
- `POST /classify_images` (batchable): multipart `images` files (PNG/JPEG…);
  answers JSON `[{"labels": [...], "scores": [...]}, ...]`. For people and
  generic clients; slower.
- `POST /metadata`: JSON `{labels, image_size, top_k, architecture, resample, device}`
  (`resample`: the PIL filter to resize images with before sending them).

Knobs (environment, read at import): DYFF_MODEL_DIR (default `./model`
beside this file), DYFF_TOP_K (100), DYFF_MAX_BATCH_SIZE (4096 images),
DYFF_MAX_LATENCY_MS (600000 — large, because BentoML answers 503 to requests
it predicts will miss it, and a big ViT batch on CPU takes seconds),
DYFF_TORCH_THREADS (all CPUs), DYFF_CHUNK_SIZE (256 images per forward pass),
DYFF_DEVICE (`auto`: CUDA when torch sees a GPU, else CPU; or `cpu`, `cuda`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import typing as t
from pathlib import Path

import bentoml
import numpy as np
from bentoml.validators import ContentType
from PIL import Image as PILImage
from pydantic import AfterValidator, BeforeValidator

MODEL_DIR = Path(os.environ.get("DYFF_MODEL_DIR") or Path(__file__).resolve().parent / "model")
TOP_K = int(os.environ.get("DYFF_TOP_K", "100"))
MAX_BATCH_SIZE = int(os.environ.get("DYFF_MAX_BATCH_SIZE", "4096"))
MAX_LATENCY_MS = int(os.environ.get("DYFF_MAX_LATENCY_MS", "600000"))
TORCH_THREADS = int(os.environ.get("DYFF_TORCH_THREADS") or os.cpu_count() or 1)
# Images per forward pass: large batches are split so activations stay cache-sized.
CHUNK_SIZE = int(os.environ.get("DYFF_CHUNK_SIZE", "256"))
DEVICE = os.environ.get("DYFF_DEVICE", "auto")
# Refuse absurd inputs before allocating anything.
MAX_SIDE = 4096
MAX_REQUEST_BYTES = 1 << 30

NPY_MEDIA_TYPE = "application/x-npy"
TOPK_DTYPE = np.dtype([("index", "<i4"), ("score", "<f4")])


def decode_npy_images(data: bytes) -> np.ndarray:
    """A `.npy` payload -> uint8 (N, H, W, 3), checked before any allocation; never unpickles."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("expected an .npy body")
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError("request too large")
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(buf, max_header_size=10000)
    except Exception as exc:  # numpy raises several types for a bad header
        raise ValueError(f"not an .npy payload: {exc}") from None
    if dtype != np.uint8 or fortran:
        raise ValueError("images must be a C-ordered uint8 array")
    if len(shape) != 4 or shape[3] != 3 or shape[0] < 1:
        raise ValueError(f"images must have shape (N, H, W, 3), got {shape}")
    if not (0 < shape[1] <= MAX_SIDE and 0 < shape[2] <= MAX_SIDE):
        raise ValueError(f"image side must be 1..{MAX_SIDE}")
    offset = buf.tell()
    expected = math.prod(shape)  # exact: numpy could overflow on a forged shape
    if len(data) - offset != expected:
        raise ValueError(f"payload holds {len(data) - offset} bytes, shape needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _encode_if_array(value: t.Any) -> t.Any:
    return encode_npy(value) if isinstance(value, np.ndarray) else value


# `bytes` makes BentoML hand over the raw body; the validator turns it into an
# array, which BentoML's batching then concatenates along axis 0.
NpyImages = t.Annotated[bytes, AfterValidator(decode_npy_images), ContentType(NPY_MEDIA_TYPE)]
NpyTopK = t.Annotated[bytes, BeforeValidator(_encode_if_array), ContentType(NPY_MEDIA_TYPE)]


class Classifier:
    """Model + preprocessing, without BentoML: loads a validated folder, predicts top-k."""

    def __init__(
        self,
        model_dir: Path,
        top_k: int = TOP_K,
        threads: int = TORCH_THREADS,
        chunk_size: int = CHUNK_SIZE,
        device: str = DEVICE,
    ) -> None:
        import torch
        from transformers import AutoModelForImageClassification

        torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.chunk_size = max(1, chunk_size)
        # Never trust_remote_code; weights from safetensors only.
        self.model = AutoModelForImageClassification.from_pretrained(
            model_dir, trust_remote_code=False, use_safetensors=True, local_files_only=True
        )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        config = self.model.config
        self.labels = [str(config.id2label[i]) for i in range(len(config.id2label))]
        self.top_k = max(1, min(top_k, len(self.labels)))
        self.architecture = (config.architectures or [type(self.model).__name__])[0]
        pre = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
        self._fast = _simple_preprocessing(pre)
        self._processor: t.Any = None
        if self._fast is None:
            from transformers import AutoImageProcessor

            self._processor = AutoImageProcessor.from_pretrained(
                model_dir, trust_remote_code=False, local_files_only=True
            )
        self.image_size = self._fast.size if self._fast else _processor_size(pre)
        self.resample = int(pre.get("resample", 2))

    def pixel_values(self, images: np.ndarray) -> t.Any:
        """uint8 (N, H, W, 3) -> the model's input tensor, vectorised (no per-image Python)."""
        torch = self.torch
        if self._fast is None:
            out = self._processor(images=list(images), return_tensors="pt")
            return out["pixel_values"].to(self.device)
        pre = self._fast
        if not (images.flags.writeable and images.flags.c_contiguous):
            images = np.array(images, order="C")  # a request body is read-only; torch wants to own
        # uint8 crosses to the device (4x less than float), then is converted there.
        x = torch.from_numpy(images).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        if tuple(x.shape[2:]) != pre.size:
            x = torch.nn.functional.interpolate(
                x, size=pre.size, mode=pre.mode, antialias=True, align_corners=False
            ).clamp_(0, 255)
        if pre.rescale is not None:
            x = x * pre.rescale
        if pre.mean is not None and pre.std is not None:
            mean = torch.tensor(pre.mean, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / torch.tensor(pre.std, device=x.device).view(1, -1, 1, 1)
        return x

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Top-k (index, score) per image as a structured (N, K) array, best first."""
        torch = self.torch
        out = np.empty((len(images), self.top_k), dtype=TOPK_DTYPE)
        with torch.inference_mode():
            for start in range(0, len(images), self.chunk_size):
                chunk = images[start : start + self.chunk_size]
                logits = self.model(pixel_values=self.pixel_values(chunk)).logits
                scores, indices = torch.softmax(logits.float(), dim=-1).topk(self.top_k, dim=-1)
                out["index"][start : start + len(chunk)] = indices.cpu().numpy()
                out["score"][start : start + len(chunk)] = scores.cpu().numpy()
        return out

    def metadata(self) -> dict[str, t.Any]:
        return {
            "labels": self.labels,
            "image_size": list(self.image_size) if self.image_size else None,
            "top_k": self.top_k,
            "architecture": self.architecture,
            "resample": self.resample,
            "device": self.device.type,
        }


@dataclasses.dataclass(frozen=True)
class SimplePreprocessing:
    """A processor that only resizes, rescales and normalises: done on the whole batch in torch."""

    size: tuple[int, int]
    mode: str  # torch interpolation matching the processor's PIL resample
    rescale: float | None
    mean: list[float] | None
    std: list[float] | None


# PIL resample codes -> torch modes (antialiased, as PIL's filters are).
_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}


def _simple_preprocessing(pre: dict[str, t.Any]) -> SimplePreprocessing | None:
    """The processor as resize→rescale→normalise, or None when it does more (crop, pad…)."""
    if pre.get("do_center_crop") or pre.get("do_pad") or pre.get("do_convert_rgb") is False:
        return None
    size = pre.get("size") or {}
    if not (isinstance(size, dict) and set(size) == {"height", "width"}):
        return None
    if pre.get("do_resize", True) is False:
        return None
    mode = _RESAMPLE_MODES.get(int(pre.get("resample", 2)))
    if mode is None:
        return None
    rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else None
    mean = std = None
    if pre.get("do_normalize", True):
        mean = [float(v) for v in pre.get("image_mean", [0.5, 0.5, 0.5])]
        std = [float(v) for v in pre.get("image_std", [0.5, 0.5, 0.5])]
    return SimplePreprocessing((int(size["height"]), int(size["width"])), mode, rescale, mean, std)


def _processor_size(pre: dict[str, t.Any]) -> tuple[int, int] | None:
    crop = pre.get("crop_size") if pre.get("do_center_crop") else None
    size = crop or pre.get("size") or {}
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if isinstance(size, dict) and "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


def _to_rgb_array(image: PILImage.Image, size: tuple[int, int] | None, resample: int) -> np.ndarray:
    image = image.convert("RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), PILImage.Resampling(resample))
    return np.asarray(image, dtype=np.uint8)


@bentoml.service(
    name="dyff-image-classifier",
    # One worker, one inference at a time: torch uses the cores itself.
    workers=1,
    threads=1,
    traffic={"timeout": 3600},
)
class ImageClassifier:
    def __init__(self) -> None:
        self.classifier = Classifier(MODEL_DIR)
        # Warm up so the first real request does not pay for lazy initialisation.
        size = self.classifier.image_size or (224, 224)
        self.classifier.predict(np.zeros((1, size[0], size[1], 3), dtype=np.uint8))

    @bentoml.api(
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def classify(self, images: NpyImages, /) -> NpyTopK:
        batch = t.cast(np.ndarray, images)
        return t.cast(bytes, self.classifier.predict(batch))

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def classify_images(self, images: list[PILImage.Image]) -> list[dict[str, t.Any]]:
        size = self.classifier.image_size
        resample = self.classifier.resample
        batch = np.stack([_to_rgb_array(img, size, resample) for img in images])
        top = self.classifier.predict(batch)
        labels = self.classifier.labels
        return [
            {"labels": [labels[i] for i in row["index"]], "scores": row["score"].tolist()}
            for row in top
        ]

    @bentoml.api
    def metadata(self) -> dict[str, t.Any]:
        return self.classifier.metadata()
