"""dyff's BentoML service for image classification (copied verbatim into every Bento).

This file must stay standalone — it imports nothing from dyff — because
`package_transformers` copies it into the Bento as `service.py` next to the
model folder `model/`, and a Bento must serve wherever BentoML, torch and
transformers are installed. When dyff serves one of its own Bentos it puts the
current copy of this file in place first, so the code that runs is the code
that `dyff.runtime.runtime_version` names.

Exactness: a prediction is what the model's own processor
(`AutoImageProcessor`) and forward pass give on the original image after
`ImageOps.exif_transpose` and `convert("RGB")` — what the transformers
image-classification pipeline does — and the score is the pipeline's
(softmax; sigmoid for multi-label or one-label models). The processor runs
on every image, with one exception that is provably the same computation: a
processor of the generic PIL backend that only resizes to a fixed height x
width, then rescales and normalises (`ViTImageProcessor` and its kin). For
those, `/metadata` asks the client to resize with PIL and the same filter —
the processor's own resize — and the server rescales and normalises the
whole batch in torch; the service checks at start-up that this matches the
processor on sample images, and falls back to the processor if not.

It speaks the public protocol `image-classification/v1` (docs/serving-protocol.md:
`/metadata` and `/classify_images`, what any user's service must answer) and,
for dyff's own client, the fast `/classify` (version 2 of dyff's contract):

- `POST /classify`: the body is either one `.npy` file (numpy's format, no
  pickle) holding a uint8 array (N, H, W, 3) of RGB images of one size, or,
  for images of different sizes, two `.npy` files back to back: an integer
  array (N, 2) of each image's (height, width), then a uint8 array of their
  RGB pixels, row-major, one image after another. `Content-Type:
  application/x-npy` either way. The answer is an `.npy` of a structured
  array (N, K) with fields `index` (int32, the label id) and `score`
  (float32), best first; K = min(DYFF_TOP_K, number of labels). A binary
  tensor both ways keeps the per-request cost flat in N.
- `POST /classify_images` (batchable; protocol v1): multipart `images` files
  (PNG/JPEG…); answers JSON `[{"labels": [...], "scores": [...]}, ...]`, top-k
  best first. For people, generic clients and image-form models; slower.
- `POST /metadata` (protocol v1): JSON `{protocol: "image-classification/v1",
  labels, classify: 2, top_k, architecture, device, resize}`; `resize` is
  `{height, width, resample}` (resample: a PIL filter code) when the client
  may resize images to that size with that filter before sending them, or
  null when it must send them as they are.

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
import math
import os
import typing as t
from pathlib import Path

import bentoml
import numpy as np
from bentoml.validators import ContentType
from PIL import Image as PILImage
from PIL import ImageOps
from pydantic import AfterValidator, BeforeValidator

PROTOCOL = "image-classification/v1"
CLASSIFY_VERSION = 2  # of the fast /classify contract below
MODEL_DIR = Path(os.environ.get("DYFF_MODEL_DIR") or Path(__file__).resolve().parent / "model")
TOP_K = int(os.environ.get("DYFF_TOP_K", "100"))
MAX_BATCH_SIZE = int(os.environ.get("DYFF_MAX_BATCH_SIZE", "4096"))
MAX_LATENCY_MS = int(os.environ.get("DYFF_MAX_LATENCY_MS", "600000"))
TORCH_THREADS = int(os.environ.get("DYFF_TORCH_THREADS") or os.cpu_count() or 1)
# Images per forward pass: large batches are split so activations stay cache-sized.
CHUNK_SIZE = int(os.environ.get("DYFF_CHUNK_SIZE", "256"))
DEVICE = os.environ.get("DYFF_DEVICE", "auto")
# Refuse absurd inputs before allocating anything (dataset ingestion allows the same).
MAX_PIXELS = 8192 * 8192
MAX_IMAGES = 65536
MAX_REQUEST_BYTES = 1 << 30

NPY_MEDIA_TYPE = "application/x-npy"
TOPK_DTYPE = np.dtype([("index", "<i4"), ("score", "<f4")])

Images = t.Union[np.ndarray, list[np.ndarray]]  # noqa: UP007 - evaluated at run time


# ------------------------------------------------------------------- payloads


def _npy_header(buf: io.BytesIO) -> tuple[tuple[int, ...], np.dtype[t.Any]]:
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
    if fortran:
        raise ValueError("arrays must be C-ordered")
    return tuple(int(s) for s in shape), dtype


def decode_npy_images(data: bytes) -> Images:
    """A `/classify` body -> uint8 (N, H, W, 3), or a list of (H, W, 3) for images of
    different sizes; every size checked before anything is allocated; never unpickles."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("expected an .npy body")
    data = bytes(data)
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError("request too large")
    buf = io.BytesIO(data)
    shape, dtype = _npy_header(buf)
    if dtype == np.uint8:
        if len(shape) != 4 or shape[3] != 3 or not 1 <= shape[0] <= MAX_IMAGES:
            raise ValueError(f"images must have shape (N, H, W, 3), got {shape}")
        _check_size(shape[1], shape[2])
        offset = buf.tell()
        expected = math.prod(shape)  # exact: numpy could overflow on a forged shape
        if len(data) - offset != expected:
            raise ValueError(f"payload holds {len(data) - offset} bytes, shape needs {expected}")
        return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)
    if dtype.kind not in "iu" or len(shape) != 2 or shape[1] != 2:
        raise ValueError("images must be uint8 (N, H, W, 3), or sizes (N, 2) then pixels")
    if not 1 <= shape[0] <= MAX_IMAGES:
        raise ValueError(f"1..{MAX_IMAGES} images per request")
    offset = buf.tell()
    if len(data) - offset < shape[0] * 2 * dtype.itemsize:
        raise ValueError("the sizes array is truncated")
    pairs = np.frombuffer(data, dtype=dtype, count=shape[0] * 2, offset=offset).reshape(shape)
    sizes = [(int(h), int(w)) for h, w in pairs.tolist()]
    for h, w in sizes:
        _check_size(h, w)
    buf.seek(offset + shape[0] * 2 * dtype.itemsize)
    pixel_shape, pixel_dtype = _npy_header(buf)
    total = sum(h * w * 3 for h, w in sizes)
    if pixel_dtype != np.uint8 or pixel_shape != (total,):
        raise ValueError(f"pixels must be uint8 ({total},), got {pixel_dtype} {pixel_shape}")
    offset = buf.tell()
    if len(data) - offset != total:
        raise ValueError(f"payload holds {len(data) - offset} pixel bytes, sizes need {total}")
    flat = np.frombuffer(data, dtype=np.uint8, offset=offset)
    out, start = [], 0
    for h, w in sizes:
        out.append(flat[start : start + h * w * 3].reshape(h, w, 3))
        start += h * w * 3
    return out


def _check_size(h: int, w: int) -> None:
    if h < 1 or w < 1 or h * w > MAX_PIXELS:
        raise ValueError(f"image of {h}x{w} pixels: sides must be >= 1, at most {MAX_PIXELS} px")


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _encode_if_array(value: t.Any) -> t.Any:
    return encode_npy(value) if isinstance(value, np.ndarray) else value


# `bytes` makes BentoML hand over the raw body; the validator turns it into images.
NpyImages = t.Annotated[bytes, AfterValidator(decode_npy_images), ContentType(NPY_MEDIA_TYPE)]
NpyTopK = t.Annotated[bytes, BeforeValidator(_encode_if_array), ContentType(NPY_MEDIA_TYPE)]


def rgb_image(image: PILImage.Image) -> PILImage.Image:
    """What the transformers pipeline makes of an image before its processor sees it."""
    return ImageOps.exif_transpose(image).convert("RGB")


# ------------------------------------------------------------ preprocessing


@dataclasses.dataclass(frozen=True)
class ResizeOnly:
    """A processor that resizes to a fixed size with PIL, then rescales and normalises:
    the resize is done with PIL per image (as the processor does it), the rest on the
    whole batch in torch."""

    height: int
    width: int
    resample: int  # a PIL filter code
    rescale: float | None
    mean: list[float] | None
    std: list[float] | None


# The processor methods whose generic PIL-backend versions make up ResizeOnly.
_GENERIC_METHODS = (
    "__call__", "preprocess", "_preprocess", "_preprocess_image_like_inputs",
    "_further_process_kwargs", "_validate_preprocess_kwargs", "process_image",
    "convert_to_rgb", "resize", "center_crop", "rescale", "normalize", "pad",
)  # fmt: skip


def _field(obj: t.Any, name: str) -> t.Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def resize_only(processor: t.Any) -> ResizeOnly | None:
    """The processor as ResizeOnly, or None when it may do anything else (a crop, a
    shortest-edge rule, padding, its own code, another backend)."""
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:
        return None
    cls = type(processor)
    if not isinstance(processor, PilBackend):
        return None
    processor = t.cast(t.Any, processor)
    if any(getattr(cls, m, None) is not getattr(PilBackend, m, None) for m in _GENERIC_METHODS):
        return None
    size = processor.size
    keys = {k for k in ("height", "width", "shortest_edge", "longest_edge", "max_height",
                        "max_width") if _field(size, k) is not None}  # fmt: skip
    if not processor.do_resize or keys != {"height", "width"}:
        return None
    if processor.do_center_crop or getattr(processor, "do_pad", None):
        return None
    resample = processor.resample if processor.resample is not None else 2
    if not isinstance(resample, int) or int(resample) not in range(6):
        return None
    mean = std = None
    if processor.do_normalize:
        n_mean, n_std = processor.image_mean, processor.image_std
        mean = [float(v) for v in (n_mean if isinstance(n_mean, list | tuple) else [n_mean] * 3)]
        std = [float(v) for v in (n_std if isinstance(n_std, list | tuple) else [n_std] * 3)]
    return ResizeOnly(
        height=int(_field(size, "height")),
        width=int(_field(size, "width")),
        resample=int(resample),
        rescale=float(processor.rescale_factor) if processor.do_rescale else None,
        mean=mean,
        std=std,
    )


def _score_function(config: t.Any) -> str:
    """The transformers pipeline's choice of scores for a classifier's logits."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


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
        from transformers import AutoImageProcessor, AutoModelForImageClassification

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
        self.score_function = _score_function(config)
        self.processor = AutoImageProcessor.from_pretrained(
            model_dir, trust_remote_code=False, local_files_only=True
        )
        self.resize = resize_only(self.processor)
        if self.resize is not None and not self._resize_only_agrees():
            self.resize = None

    # -- preprocessing

    def pixel_values(self, images: Images) -> list[tuple[list[int], t.Any]]:
        """RGB uint8 images -> the model's input, as (positions, tensor) groups of one shape
        (a processor without a crop may give images of several sizes)."""
        if self.resize is not None:
            return [(list(range(len(images))), self._resize_only(images))]
        pixels = self.processor(images=[PILImage.fromarray(np.asarray(a)) for a in images])
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pixels["pixel_values"]):
            groups.setdefault(tuple(np.shape(p)), []).append(i)
        values = pixels["pixel_values"]
        torch = self.torch
        return [
            (idx, torch.from_numpy(np.stack([np.asarray(values[i]) for i in idx])).to(self.device))
            for idx in groups.values()
        ]

    def _resize_only(self, images: Images) -> t.Any:
        """ResizeOnly on a batch: PIL resize where an image is not at the size yet, then
        rescale and normalise on the whole batch in torch."""
        torch, pre = self.torch, self.resize
        assert pre is not None
        size = (pre.height, pre.width, 3)
        if not (isinstance(images, np.ndarray) and images.shape[1:] == size):
            filt = PILImage.Resampling(pre.resample)
            target = (pre.width, pre.height)
            images = np.stack([
                np.asarray(a) if np.shape(a) == size
                else np.asarray(PILImage.fromarray(np.asarray(a)).resize(target, filt))
                for a in images
            ])  # fmt: skip
        if not (images.flags.writeable and images.flags.c_contiguous):
            images = np.array(images, order="C")  # a request body is read-only; torch wants to own
        # uint8 crosses to the device (4x less than float), then is converted there.
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()
        if pre.rescale is not None:
            x = x * pre.rescale
        if pre.mean is not None and pre.std is not None:
            mean = torch.tensor(pre.mean, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / torch.tensor(pre.std, device=x.device).view(1, -1, 1, 1)
        return x

    def _resize_only_agrees(self) -> bool:
        """The batched path gives the processor's own pixel values on sample images."""
        assert self.resize is not None
        rng = np.random.default_rng(0)
        h, w = self.resize.height, self.resize.width
        samples = [rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
                   for sh, sw in ((h, w), (h + 7, max(1, w // 2) + 3), (3, 5))]  # fmt: skip
        fast = self._resize_only(samples).cpu().numpy()
        ref = self.processor(images=[PILImage.fromarray(a) for a in samples])["pixel_values"]
        return all(
            np.shape(r) == f.shape and np.allclose(np.asarray(r), f, rtol=0, atol=1e-5)
            for r, f in zip(ref, fast, strict=True)
        )

    # -- inference

    def predict(self, images: Images) -> np.ndarray:
        """Top-k (index, score) per image as a structured (N, K) array, best first."""
        torch = self.torch
        out = np.empty((len(images), self.top_k), dtype=TOPK_DTYPE)
        with torch.inference_mode():
            for start in range(0, len(images), self.chunk_size):
                chunk = images[start : start + self.chunk_size]
                for positions, pixels in self.pixel_values(chunk):
                    rows = [start + i for i in positions]
                    scores, indices = self._scores(self.model(pixel_values=pixels).logits)
                    out["index"][rows] = indices
                    out["score"][rows] = scores
        return out

    def _scores(self, logits: t.Any) -> tuple[np.ndarray, np.ndarray]:
        logits = logits.float()
        if self.score_function == "softmax":
            probs = self.torch.softmax(logits, dim=-1)
        elif self.score_function == "sigmoid":
            probs = self.torch.sigmoid(logits)
        else:
            probs = logits
        scores, indices = probs.topk(self.top_k, dim=-1)
        return scores.cpu().numpy(), indices.cpu().numpy()

    def metadata(self) -> dict[str, t.Any]:
        pre = self.resize
        return {
            "protocol": PROTOCOL,
            "labels": self.labels,
            "classify": CLASSIFY_VERSION,
            "top_k": self.top_k,
            "architecture": self.architecture,
            "device": self.device.type,
            "resize": (
                {"height": pre.height, "width": pre.width, "resample": pre.resample}
                if pre is not None
                else None
            ),
        }


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
        pre = self.classifier.resize
        size = (pre.height, pre.width) if pre is not None else (224, 224)
        self.classifier.predict(np.zeros((1, size[0], size[1], 3), dtype=np.uint8))

    @bentoml.api
    def classify(self, images: NpyImages, /) -> NpyTopK:
        return t.cast(bytes, self.classifier.predict(t.cast(Images, images)))

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def classify_images(self, images: list[PILImage.Image]) -> list[dict[str, t.Any]]:
        batch = [np.asarray(rgb_image(img)) for img in images]
        top = self.classifier.predict(batch)
        labels = self.classifier.labels
        return [
            {"labels": [labels[i] for i in row["index"]], "scores": row["score"].tolist()}
            for row in top
        ]

    @bentoml.api
    def metadata(self) -> dict[str, t.Any]:
        return self.classifier.metadata()
