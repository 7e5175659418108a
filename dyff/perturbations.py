"""Image perturbations for robustness criteria (issue 12): what they compute, exactly.

An evaluation may ask for its dataset's images perturbed, one kind at one severity (1..5) at
a time, and for metrics per (kind, severity). `perturb` perturbs one decoded image; the
caller applies it to every row of a shard, after decoding, EXIF orientation and
`convert("RGB")` (so greyscale, palette and RGBA images arrive here as RGB: this module
takes only `(H, W, 3)` uint8), and before the model's processor. `perturbation_key` and
`perturbation_digest` name a perturbed shard for its cache; `corruption_error` sums up the
errors of one kind over its severities.

Kinds and severity tables
-------------------------
Five kinds follow Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019), ImageNet-C, as `make_imagenet_c.py` in
github.com/hendrycks/robustness computes them (values checked against that file). Pixels
are first scaled to x = value / 255 in [0, 1] (float64).

- ``gaussian_noise``: c = [0.08, 0.12, 0.18, 0.26, 0.38]; x + N(0, c²) per pixel and
  channel, clipped to [0, 1]. The only random kind with ``rotate``.
- ``gaussian_blur``: sigma = [1, 2, 3, 4, 6] pixels; each channel filtered with
  `scipy.ndimage.gaussian_filter(mode="nearest", truncate=4.0)`, which is what ImageNet-C's
  `skimage.filters.gaussian(x, sigma, multichannel=True)` runs (its defaults: mode
  "nearest", truncate 4.0, no smoothing across channels), so this equals ImageNet-C's
  filtered values.
- ``jpeg``: ImageNet-C's ``jpeg_compression``: quality = [25, 18, 15, 10, 7]; encoded by
  Pillow at that quality with Pillow's other defaults (4:2:0 chroma subsampling), as
  ImageNet-C calls it, then decoded.
- ``brightness``: c = [0.1, 0.2, 0.3, 0.4, 0.5]; RGB -> HSV, V := clip(V + c, 0, 1),
  HSV -> RGB, with skimage's `rgb2hsv`/`hsv2rgb` formulas (written here in numpy, see
  `rgb_to_hsv` / `hsv_to_rgb`; pure black has hue and saturation 0, so it becomes grey c).
- ``contrast``: c = [0.4, 0.3, 0.2, 0.1, 0.05]; per channel m = mean of x over the
  image, (x - m) * c + m, clipped to [0, 1].

``rotate`` is dyff's own (ImageNet-C has none; its "P" set's rotations are video
sequences, not a severity table):

- ``rotate``: degrees = [5, 10, 15, 20, 30] about the image centre ((H-1)/2, (W-1)/2),
  counter-clockwise or clockwise by one seeded draw per row (half the rows each way, so a
  dataset's own tilt does not make one direction count twice), output the same size,
  bilinear interpolation, and the border filled by reflecting the image about its edges
  (half-sample symmetric: ``d c b a | a b c d | d c b a``, scipy.ndimage's "reflect").
  Reflection rather than a constant fill because a constant fills the corners with
  wedges of one colour, 4 % of a square image at 5 degrees and 15.5 % at 30: a second
  corruption (occlusion, and a shift of the image's mean that the normalisation
  carries), which would make the rotate metric measure two things. Reflection keeps the
  corners' colours and textures local to the image; its mirror seams are the smaller
  price.

Differences from ImageNet-C, on purpose
---------------------------------------
- Rounding: the result is `round(clip(x, 0, 1) * 255)` to uint8 (ties to even, see
  `to_uint8`). ImageNet-C stores `np.uint8(...)`, which truncates: every pixel ~0.5 level
  darker on average, and a value of exactly k can come back as k - 1 through float error.
  Rounding keeps the perturbation the only change (contrast 1.0 or noise 0 would give the
  image back).
- No re-encoding: the released ImageNet-C files were then saved as JPEG at quality 85;
  here the perturbed pixels go straight to the processor.
- Image size: ImageNet-C perturbs 224 x 224 centre crops (after a resize to 256). Here the
  image is perturbed at its decoded size, before the processor, and parameters are in
  pixels of that image (blur sigma, the JPEG 8 x 8 blocks, per-pixel noise): on images
  much larger than 224 px, the processor's downscaling softens blur, noise and JPEG
  artefacts, so a severity is milder than ImageNet-C's; brightness, contrast and rotate
  do not depend on size. Any size from 1 x 1 up works.
- Randomness: noise is drawn from numpy's PCG64 `Generator` seeded with
  `[SEED_DOMAIN, seed, row_id, kind stream id, severity]`, not the global legacy
  `np.random` state, so it depends on nothing else: not on the process, the order or the
  batches the rows come in. numpy does not promise a `Generator`'s streams across
  versions, so the key of a random kind carries numpy's version.

Corruption error
----------------
ImageNet-C's CE divides a model's summed errors by AlexNet's; dyff has no AlexNet, so
`corruption_error` gives the unnormalised parts (see there): the mean error over the
severities asked and the relative corruption error, mean over severities of
(err_s - err_clean).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

# Bump when a formula, a table or the rounding changes: every cached perturbed shard's
# key changes with it.
PERTURBATIONS_VERSION: Final = 1

# Mixed into every seed so these streams never coincide with another use of the same
# user seed elsewhere in dyff (bootstrap intervals take a seed too). ASCII "pert".
SEED_DOMAIN: Final = 0x70657274

SEVERITIES: Final = (1, 2, 3, 4, 5)

Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Kind:
    """One perturbation kind: its five severity parameters and where they come from."""

    name: str
    parameter: str  # what the table's numbers are
    table: tuple[float, float, float, float, float]  # severity 1..5
    source: str
    stream: int  # fixed id in the seed; never reuse one for another kind
    random: bool  # whether the seed and row id change the result
    libraries: tuple[str, ...]  # whose versions can change the bytes


KINDS: Final[Mapping[str, Kind]] = {
    k.name: k
    for k in (
        Kind(
            "gaussian_noise",
            "standard deviation of the noise, on pixels scaled to [0, 1]",
            (0.08, 0.12, 0.18, 0.26, 0.38),
            "ImageNet-C gaussian_noise",
            1,
            True,
            ("numpy",),
        ),
        Kind(
            "gaussian_blur",
            "sigma of the Gaussian kernel, in pixels",
            (1, 2, 3, 4, 6),
            "ImageNet-C gaussian_blur",
            2,
            False,
            ("numpy", "scipy"),
        ),
        Kind(
            "jpeg",
            "JPEG quality (Pillow)",
            (25, 18, 15, 10, 7),
            "ImageNet-C jpeg_compression",
            3,
            False,
            ("pillow", "libjpeg"),
        ),
        Kind(
            "brightness",
            "added to V in HSV, on [0, 1]",
            (0.1, 0.2, 0.3, 0.4, 0.5),
            "ImageNet-C brightness",
            4,
            False,
            ("numpy",),
        ),
        Kind(
            "contrast",
            "factor on the distance from the per-channel image mean",
            (0.4, 0.3, 0.2, 0.1, 0.05),
            "ImageNet-C contrast",
            5,
            False,
            ("numpy",),
        ),
        Kind(
            "rotate",
            "degrees, direction drawn per row; bilinear, border reflected",
            (5, 10, 15, 20, 30),
            "dyff (not in ImageNet-C)",
            6,
            True,
            ("numpy",),
        ),
    )
}


def kind_of(kind: str, severity: int) -> Kind:
    """The kind, after checking the kind and the severity; ValueError naming what is
    allowed otherwise."""
    found = KINDS.get(kind) if isinstance(kind, str) else None
    if found is None:
        raise ValueError(f"unknown perturbation kind {kind!r}; the kinds are: {', '.join(KINDS)}")
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int | np.integer)
        or int(severity) not in SEVERITIES
    ):
        raise ValueError(f"perturbation severity must be an integer from 1 to 5, not {severity!r}")
    return found


def parameter(kind: str, severity: int) -> float:
    """The table's value for (kind, severity)."""
    return kind_of(kind, severity).table[int(severity) - 1]


def _check_id(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _check_image(image: Any) -> Image:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, not {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            "image must be (H, W, 3) uint8 RGB (convert greyscale, palette and RGBA "
            f"images to RGB first), not {image.shape} {image.dtype}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must have at least one pixel, not shape {image.shape}")
    return image


def rng_for(kind: str, severity: int, *, seed: int, row_id: int) -> np.random.Generator:
    """The generator of one row's perturbation: a function of its arguments alone."""
    k = kind_of(kind, severity)
    entropy = [
        SEED_DOMAIN,
        _check_id("seed", seed),
        _check_id("row_id", row_id),
        k.stream,
        int(severity),
    ]
    return np.random.default_rng(entropy)


def perturb(image: Image, kind: str, severity: int, *, seed: int, row_id: int) -> Image:
    """`image` (H, W, 3) uint8 RGB perturbed by `kind` at `severity` (1..5): a new uint8
    array of the same shape. The same arguments always give the same bytes (with the same
    library versions, which `perturbation_key` names). `seed` and `row_id` (non-negative
    integers) matter only to the random kinds (``gaussian_noise``, ``rotate``), but are
    checked for every kind. ValueError for an unknown kind, a severity outside 1..5, a
    negative seed or row id, or an image that is not (H, W, 3) uint8."""
    k = kind_of(kind, severity)
    rng = rng_for(kind, severity, seed=seed, row_id=row_id)
    image = _check_image(image)
    c = k.table[int(severity) - 1]
    if k.name == "jpeg":
        return _jpeg(image, int(c))
    if k.name == "gaussian_blur":
        return _levels(_blur(np.divide(image, 255.0, dtype=np.float64), c))
    if k.name == "contrast":
        x = np.divide(image, 255.0, dtype=np.float64)
        means = x.reshape(-1, 3).mean(axis=0)
        x -= means
        x *= c
        x += means
        return _levels(x)
    # The pixel-wise kinds and rotate go through the image in blocks of rows: their many
    # temporaries stay small enough for the allocator to reuse, where whole-image ones
    # (1.2 MB of float64 at 224 x 224) are fresh pages each time, and page faults cost
    # more than the arithmetic.
    out = np.empty(image.shape, dtype=np.uint8)
    if k.name == "rotate":
        direction = 1.0 if rng.integers(2) == 0 else -1.0
        for rows, block in _rotated_blocks(image, direction * c):
            out[rows] = _levels(block)
        return out
    for rows in _row_blocks(image.shape[0], image.shape[1]):
        x = np.divide(image[rows], 255.0, dtype=np.float64)
        if k.name == "gaussian_noise":
            # Drawn in row order, block after block: the same numbers as one draw of the
            # whole image's shape.
            noise = rng.standard_normal(x.shape)
            noise *= c
            x += noise
        elif k.name == "brightness":
            hsv = rgb_to_hsv(x)
            value = hsv[..., 2]
            value += c
            np.clip(value, 0.0, 1.0, out=value)
            x = hsv_to_rgb(hsv)
        else:  # pragma: no cover - KINDS and this dispatch are kept together
            raise AssertionError(k.name)
        out[rows] = _levels(x)
    return out


# Pixels per block of rows (`_row_blocks`): 4096 x 3 float64 is 96 KiB.
BLOCK_PIXELS: Final = 4096


def _row_blocks(height: int, width: int) -> list[slice]:
    step = max(1, BLOCK_PIXELS // width)
    return [slice(start, min(start + step, height)) for start in range(0, height, step)]


def to_uint8(x: Floats) -> Image:
    """[0, 1] floats to uint8: clipped, times 255, rounded to the nearest level, ties to
    even. Values first snap to 1e-6 of a level, so that float error never decides a tie:
    brightness's odd severities (c * 255 = 25.5, 76.5, 127.5) put every pixel's brightest
    channel on one, and 179.49999999999997 and 179.5 must round alike."""
    return _levels(np.array(x, dtype=np.float64))


def _levels(x: Floats) -> Image:
    """`to_uint8`, overwriting `x`."""
    np.clip(x, 0.0, 1.0, out=x)
    x *= 255.0
    np.round(x, 6, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


def _blur(x: Floats, sigma: float) -> Floats:
    from scipy import ndimage

    out: Floats = ndimage.gaussian_filter(
        x, sigma=(sigma, sigma, 0.0), mode="nearest", truncate=4.0
    )
    return out


def _jpeg(image: Image, quality: int) -> Image:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with PILImage.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def rgb_to_hsv(rgb: Floats) -> Floats:
    """RGB in [0, 1] (..., 3) to HSV in [0, 1], as skimage's `rgb2hsv`: V = max,
    S = (max - min) / max (0 where max = min), H in sixths of a turn from the channel that
    is the maximum (blue, then green, then red when several are), 0 where max = min."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    grey = delta == 0.0
    blue_max = b == v
    green_max = g == v
    numerator = np.where(blue_max, r - g, np.where(green_max, b - r, g - b))
    offset = np.where(blue_max, 4.0, np.where(green_max, 2.0, 0.0))
    out = np.empty(rgb.shape, dtype=np.float64)
    # Where max = min the divisor is 1 (and the numerator 0): no 0 / 0 anywhere.
    hue = (offset + numerator / np.where(grey, 1.0, delta)) / 6.0 % 1.0
    hue[grey] = 0.0
    out[..., 0] = hue
    out[..., 1] = delta / np.where(grey, 1.0, v)
    out[..., 2] = v
    return out


# For each sixth of the hue circle, which of (v, t, p, q) is red, green, blue.
_SECTORS: Final = np.array(
    [[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]], dtype=np.intp
)


def hsv_to_rgb(hsv: Floats) -> Floats:
    """HSV in [0, 1] (..., 3) to RGB, as skimage's `hsv2rgb` (Smith's hexcone): with
    i = floor(6h) mod 6, f = 6h - floor(6h), p = v(1 - s), q = v(1 - fs),
    t = v(1 - (1 - f)s), RGB is (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q) for
    i = 0..5."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    shape = h.shape
    size = h.size
    h6 = h * 6.0
    sector = np.floor(h6)
    f = h6 - sector
    parts = np.empty((4, *shape), dtype=np.float64)
    parts[0] = v
    np.multiply(v, 1.0 - (1.0 - f) * s, out=parts[1])
    np.multiply(v, 1.0 - s, out=parts[2])
    np.multiply(v, 1.0 - f * s, out=parts[3])
    # One gather from the four planes: pixel n's channel c is parts[_SECTORS[i, c], n].
    which = _SECTORS[sector.astype(np.intp).ravel() % 6]
    which *= size
    which += np.arange(size, dtype=np.intp)[:, None]
    out: Floats = np.take(parts.ravel(), which).reshape((*shape, 3))
    return out


def _reflect(index: npt.NDArray[np.intp], n: int) -> npt.NDArray[np.intp]:
    """Indices mirrored into [0, n), half-sample symmetric (d c b a | a b c d | d c b a):
    through a table over the indices' range, cheaper than a modulo per pixel."""
    low = int(index.min())
    span = np.arange(low, int(index.max()) + 1, dtype=np.intp)
    folded = np.mod(span, 2 * n)
    table = np.where(folded >= n, 2 * n - 1 - folded, folded)
    out: npt.NDArray[np.intp] = np.take(table, index - low)
    return out


def rotate(x: Floats, degrees: float) -> Floats:
    """(H, W, C) floats rotated by `degrees` counter-clockwise as displayed (negative:
    clockwise) about the centre ((H-1)/2, (W-1)/2), same shape, bilinear, the outside
    reflected about the edges: scipy.ndimage.rotate(reshape=False, order=1,
    mode="reflect") up to float rounding (~1e-11), in one pass over all channels."""
    out = np.empty(x.shape, dtype=np.float64)
    for rows, block in _rotated_blocks(x, degrees):
        out[rows] = block
    return out


def _rotated_blocks(source: npt.NDArray[Any], degrees: float) -> Iterator[tuple[slice, Floats]]:
    """`rotate`'s output, block of rows by block of rows. A uint8 `source` is read as
    source / 255 (exactly what `rotate(source / 255.0)` reads)."""
    height, width, channels = source.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    xs = np.arange(width, dtype=np.float64) - cx
    # Channel planes, so each gather and each product runs along contiguous memory.
    planes = np.ascontiguousarray(np.moveaxis(source, -1, 0)).reshape(channels, -1)
    scaled = source.dtype == np.uint8

    def gather(index: npt.NDArray[np.intp]) -> Floats:
        values = np.take(planes, index, axis=1)
        if scaled:
            return np.divide(values, 255.0, dtype=np.float64)
        return values.astype(np.float64, copy=False)

    for rows in _row_blocks(height, width):
        ys = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None] - cy
        # Where each output pixel comes from: the inverse rotation (rows grow downwards).
        src_y = (xs * sin + ys * cos + cy).ravel()
        src_x = (xs * cos - ys * sin + cx).ravel()
        y0 = np.floor(src_y)
        x0 = np.floor(src_x)
        wy = src_y - y0
        wx = src_x - x0
        above = _reflect(y0.astype(np.intp), height)
        below = _reflect(y0.astype(np.intp) + 1, height)
        above *= width
        below *= width
        left = _reflect(x0.astype(np.intp), width)
        right = _reflect(x0.astype(np.intp) + 1, width)
        top = gather(above + left)
        step = gather(above + right)
        step -= top
        step *= wx
        top += step
        bottom = gather(below + left)
        step = gather(below + right)
        step -= bottom
        step *= wx
        bottom += step
        bottom -= top
        bottom *= wy
        top += bottom
        yield rows, np.moveaxis(top.reshape(channels, rows.stop - rows.start, width), 0, -1)


def library_versions(kind: str) -> dict[str, str]:
    """The versions of the libraries whose code can change `kind`'s bytes."""
    versions: dict[str, str] = {}
    for name in kind_of(kind, 1).libraries:
        if name == "numpy":
            versions[name] = np.__version__
        elif name == "scipy":
            import scipy

            versions[name] = scipy.__version__
        elif name == "pillow":
            import PIL

            versions[name] = PIL.__version__
        elif name == "libjpeg":
            from PIL import features

            versions[name] = str(features.version("jpg"))
    return versions


def perturbation_key(kind: str, severity: int, seed: int) -> dict[str, Any]:
    """What names a perturbation's output, beside the shard: kind, severity, the table's
    parameter, PERTURBATIONS_VERSION, the versions of the libraries that compute it, and
    the seed for the random kinds only (``seed`` is None for the others, so their
    perturbed shards are shared whatever seed an evaluation asks). JSON-able."""
    k = kind_of(kind, severity)
    seed = _check_id("seed", seed)
    return {
        "kind": k.name,
        "severity": int(severity),
        "parameter": k.table[int(severity) - 1],
        "seed": seed if k.random else None,
        "version": PERTURBATIONS_VERSION,
        "libraries": library_versions(kind),
    }


def perturbation_digest(shard_digest: str, kind: str, severity: int, seed: int) -> str:
    """The cache identity (sha256 hex) of one shard perturbed: the shard's digest and
    `perturbation_key`, as canonical JSON."""
    if not isinstance(shard_digest, str) or not shard_digest:
        raise ValueError("shard_digest must be a non-empty string")
    key = {"shard": shard_digest, "perturbation": perturbation_key(kind, severity, seed)}
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class CorruptionError:
    """One kind's errors over the severities asked. Errors are top-1 error rates
    (1 - accuracy) in [0, 1].

    - ``mean_error`` = mean over the severities s asked of err_s (ImageNet-C's CE before
      its division by AlexNet's errors, and as a mean rather than a sum).
    - ``relative_error`` = mean over s of (err_s - err_clean) = mean_error - clean_error
      (ImageNet-C's relative CE, unnormalised likewise); negative when the perturbation
      helps.
    - ``degradation`` = err_s - err_clean per severity.

    Means over different sets of severities do not compare: `severities` says which."""

    clean_error: float
    severities: tuple[int, ...]
    errors: dict[int, float]
    mean_error: float
    relative_error: float
    degradation: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cleanError": self.clean_error,
            "severities": list(self.severities),
            "errors": {str(s): e for s, e in self.errors.items()},
            "meanError": self.mean_error,
            "relativeError": self.relative_error,
            "degradation": {str(s): d for s, d in self.degradation.items()},
        }


def _check_error(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be an error rate in [0, 1], not {value!r}")
    return value


def corruption_error(clean_error: float, perturbed_errors: Mapping[int, float]) -> CorruptionError:
    """The summary of one kind: see `CorruptionError`. `perturbed_errors` maps each
    severity asked (1..5, at least one) to the error on the perturbed rows."""
    clean = _check_error("clean_error", clean_error)
    if not perturbed_errors:
        raise ValueError("perturbed_errors needs at least one severity")
    errors: dict[int, float] = {}
    for severity in sorted(perturbed_errors):
        if isinstance(severity, bool) or int(severity) not in SEVERITIES:
            raise ValueError(f"severities must be integers from 1 to 5, not {severity!r}")
        errors[int(severity)] = _check_error(
            f"the error at severity {severity}", perturbed_errors[severity]
        )
    mean_error = math.fsum(errors.values()) / len(errors)
    degradation = {s: e - clean for s, e in errors.items()}
    return CorruptionError(
        clean_error=clean,
        severities=tuple(errors),
        errors=errors,
        mean_error=mean_error,
        relative_error=math.fsum(degradation.values()) / len(degradation),
        degradation=degradation,
    )


def mean_over_kinds(per_kind: Mapping[str, CorruptionError]) -> dict[str, float]:
    """The unweighted means over kinds of `mean_error` and `relative_error` (ImageNet-C's
    mCE and relative mCE, unnormalised); only comparable between evaluations that asked
    the same kinds and severities."""
    if not per_kind:
        raise ValueError("per_kind needs at least one kind")
    n = len(per_kind)
    return {
        "meanError": math.fsum(c.mean_error for c in per_kind.values()) / n,
        "relativeError": math.fsum(c.relative_error for c in per_kind.values()) / n,
    }
