"""dyff.perturbations: the robustness criteria's image perturbations (issue 12)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dyff import perturbations as P

ROOT = Path(__file__).resolve().parents[2]


def natural(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth shading, an object with an edge, mild sensor noise; kept off 0 and 255 so no
    kind saturates at severity 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = 0.5 + 0.25 * np.sin(2 * np.pi * (1.5 * xx + 0.5 * yy)) * np.cos(2 * np.pi * yy)
    disk = ((yy - 0.55) ** 2 + (xx - 0.4) ** 2) < 0.06
    channels = [base, 0.6 * base + 0.3 * disk, 0.4 + 0.3 * np.cos(3 * np.pi * xx) * disk]
    image = np.stack(channels, axis=-1) + 0.04 * rng.standard_normal((height, width, 3))
    return np.rint(np.clip(image, 0.05, 0.95) * 255).astype(np.uint8)


IMAGE = natural(48, 64)
ALL = [(kind, severity) for kind in P.KINDS for severity in P.SEVERITIES]


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


# --- the tables ------------------------------------------------------------------------


def test_tables_are_imagenet_c_and_dyffs_rotate() -> None:
    assert {k: v.table for k, v in P.KINDS.items()} == {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "gaussian_blur": (1, 2, 3, 4, 6),
        "jpeg": (25, 18, 15, 10, 7),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "rotate": (5, 10, 15, 20, 30),
    }
    assert len({k.stream for k in P.KINDS.values()}) == len(P.KINDS)
    assert {k for k, v in P.KINDS.items() if v.random} == {"gaussian_noise", "rotate"}
    assert P.parameter("jpeg", 4) == 10
    assert P.parameter("contrast", 5) == 0.05


# --- shape, dtype, sizes ---------------------------------------------------------------


@pytest.mark.parametrize(("kind", "severity"), ALL)
def test_shape_dtype_and_input_untouched(kind: str, severity: int) -> None:
    image = IMAGE.copy()
    out = P.perturb(image, kind, severity, seed=0, row_id=0)
    assert out.shape == image.shape
    assert out.dtype == np.uint8
    assert np.array_equal(image, IMAGE)
    assert not np.shares_memory(out, image)


@pytest.mark.parametrize("kind", list(P.KINDS))
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (5, 3), (2, 9), (8, 8)])
def test_tiny_and_odd_sizes(kind: str, shape: tuple[int, int]) -> None:
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for severity in P.SEVERITIES:
        out = P.perturb(image, kind, severity, seed=2, row_id=3)
        assert out.shape == (*shape, 3)
        assert out.dtype == np.uint8


def test_large_image_and_non_contiguous_input() -> None:
    large = natural(1024, 768, seed=5)
    for kind in P.KINDS:
        out = P.perturb(large, kind, 5, seed=0, row_id=0)
        assert out.shape == large.shape
        assert mad(out, large) > 1.0
    strided = natural(40, 60)[::2, ::3]
    for kind in P.KINDS:
        assert np.array_equal(
            P.perturb(strided, kind, 3, seed=1, row_id=1),
            P.perturb(np.ascontiguousarray(strided), kind, 3, seed=1, row_id=1),
        )


# --- determinism -----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "severity"), ALL)
def test_same_arguments_same_bytes(kind: str, severity: int) -> None:
    a = P.perturb(IMAGE, kind, severity, seed=7, row_id=11)
    b = P.perturb(IMAGE.copy(), kind, severity, seed=7, row_id=11)
    assert a.tobytes() == b.tobytes()


def test_noise_differs_by_row_seed_and_severity_stream() -> None:
    base = P.perturb(IMAGE, "gaussian_noise", 2, seed=0, row_id=0)
    assert not np.array_equal(base, P.perturb(IMAGE, "gaussian_noise", 2, seed=0, row_id=1))
    assert not np.array_equal(base, P.perturb(IMAGE, "gaussian_noise", 2, seed=1, row_id=0))
    # seed and row id are not interchangeable
    assert not np.array_equal(
        P.perturb(IMAGE, "gaussian_noise", 2, seed=1, row_id=2),
        P.perturb(IMAGE, "gaussian_noise", 2, seed=2, row_id=1),
    )
    # the two random kinds and two severities draw from different streams
    z1 = P.rng_for("gaussian_noise", 1, seed=0, row_id=0).standard_normal(8)
    z2 = P.rng_for("gaussian_noise", 2, seed=0, row_id=0).standard_normal(8)
    z3 = P.rng_for("rotate", 1, seed=0, row_id=0).standard_normal(8)
    assert not np.array_equal(z1, z2)
    assert not np.array_equal(z1, z3)


def test_rotate_direction_is_drawn_per_row() -> None:
    image = natural(21, 21)
    ccw = P.to_uint8(P.rotate(image / 255.0, 15.0))
    cw = P.to_uint8(P.rotate(image / 255.0, -15.0))
    seen = []
    for row in range(40):
        out = P.perturb(image, "rotate", 3, seed=4, row_id=row)
        if np.array_equal(out, ccw):
            seen.append(1)
        else:
            assert np.array_equal(out, cw)
            seen.append(-1)
    assert 10 <= seen.count(1) <= 30  # both directions, roughly half each


@pytest.mark.parametrize("kind", ["gaussian_blur", "jpeg", "brightness", "contrast"])
def test_deterministic_kinds_ignore_seed_and_row(kind: str) -> None:
    a = P.perturb(IMAGE, kind, 3, seed=0, row_id=0)
    assert np.array_equal(a, P.perturb(IMAGE, kind, 3, seed=99, row_id=12345))


def test_order_and_batching_do_not_matter() -> None:
    images = [natural(16, 20, seed=i) for i in range(6)]
    calls = [(row, kind, sev) for row in range(6) for kind in P.KINDS for sev in (1, 5)]
    forward = {c: P.perturb(images[c[0]], c[1], c[2], seed=3, row_id=c[0]) for c in calls}
    shuffled = list(calls)
    np.random.default_rng(0).shuffle(shuffled)
    # interleave unrelated draws from numpy's global and other generators
    for call in shuffled:
        np.random.standard_normal(5)
        row, kind, sev = call
        out = P.perturb(images[row], kind, sev, seed=3, row_id=row)
        assert out.tobytes() == forward[call].tobytes(), call


def test_blocks_do_not_change_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    image = natural(37, 23, seed=2)
    usual = {c: P.perturb(image, *c, seed=1, row_id=2) for c in ALL}
    for block in (1, 7, 23 * 5 + 1, 10**9):
        monkeypatch.setattr(P, "BLOCK_PIXELS", block)
        for call, expected in usual.items():
            assert np.array_equal(P.perturb(image, *call, seed=1, row_id=2), expected), call


def _digest_of_outputs() -> str:
    h = hashlib.sha256()
    for kind, severity in ALL:
        h.update(P.perturb(IMAGE, kind, severity, seed=5, row_id=9).tobytes())
    return h.hexdigest()


def test_same_bytes_in_another_process() -> None:
    script = (
        "import sys; sys.path.insert(0, 'tests/unit'); sys.path.insert(0, '.');"
        "import numpy as np; np.random.seed(123);"
        "import test_perturbations as t; print(t._digest_of_outputs())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == _digest_of_outputs()


# --- severity --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(P.KINDS))
def test_damage_grows_with_severity(kind: str) -> None:
    for row in range(3):
        damage = [mad(P.perturb(IMAGE, kind, s, seed=0, row_id=row), IMAGE) for s in P.SEVERITIES]
        assert damage[0] > 0.5
        assert all(a < b for a, b in itertools.pairwise(damage)), (kind, damage)


# --- formulas against hand-computed references ------------------------------------------


def test_contrast_on_a_two_by_two_image() -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[..., 0] = [[10, 20], [30, 40]]  # mean 25
    image[..., 1] = [[0, 0], [0, 200]]  # mean 50
    image[..., 2] = 255  # mean 255
    # severity 1: c = 0.4 -> mean + (x - mean) * 0.4
    out = P.perturb(image, "contrast", 1, seed=0, row_id=0)
    assert out[..., 0].tolist() == [[19, 23], [27, 31]]
    assert out[..., 1].tolist() == [[30, 30], [30, 110]]
    assert out[..., 2].tolist() == [[255, 255], [255, 255]]
    # severity 3: c = 0.2
    out = P.perturb(image, "contrast", 3, seed=0, row_id=0)
    assert out[..., 0].tolist() == [[22, 24], [26, 28]]
    assert out[..., 1].tolist() == [[40, 40], [40, 80]]


def test_contrast_keeps_the_mean_and_scales_the_spread() -> None:
    pixels = IMAGE.reshape(-1, 3).astype(np.float64)
    for severity in P.SEVERITIES:
        c = P.parameter("contrast", severity)
        out = P.perturb(IMAGE, "contrast", severity, seed=0, row_id=0).reshape(-1, 3)
        assert np.allclose(out.mean(axis=0), pixels.mean(axis=0), atol=0.3)
        # rounding to levels adds at most ~0.3 of spread
        assert np.allclose(out.std(axis=0), c * pixels.std(axis=0), atol=0.35)


def test_hsv_of_known_colours() -> None:
    colours = np.array(
        [
            [1, 0, 0],  # red
            [0, 1, 0],  # green
            [0, 0, 1],  # blue
            [1, 1, 0],  # yellow: red and green tie
            [0, 1, 1],  # cyan
            [1, 0, 1],  # magenta
            [1, 1, 1],  # white
            [0, 0, 0],  # black
            [0.5, 0.25, 0.25],
        ],
        dtype=np.float64,
    )[None]
    hsv = P.rgb_to_hsv(colours)[0]
    expected = np.array(
        [
            [0, 1, 1],
            [1 / 3, 1, 1],
            [2 / 3, 1, 1],
            [1 / 6, 1, 1],
            [1 / 2, 1, 1],
            [5 / 6, 1, 1],
            [0, 0, 1],
            [0, 0, 0],
            [0, 0.5, 0.5],
        ]
    )
    assert np.allclose(hsv, expected, atol=1e-15)
    assert np.allclose(P.hsv_to_rgb(P.rgb_to_hsv(colours)), colours, atol=1e-15)


def test_hsv_round_trip_and_hue_sectors() -> None:
    rgb = np.random.default_rng(3).random((50, 40, 3))
    rgb[0, :, :] = rgb[0, :, :1]  # greys
    rgb[1, :, 1] = rgb[1, :, 2]  # ties
    hsv = P.rgb_to_hsv(rgb)
    assert hsv.min() >= 0.0
    assert hsv.max() <= 1.0
    assert np.allclose(P.hsv_to_rgb(hsv), rgb, atol=1e-12)
    # each hue sector: sector i = floor(6h) has the documented order of channels
    h = np.linspace(0, 1, 12, endpoint=False) + 1 / 24
    hsv = np.stack([h, np.full(12, 0.5), np.full(12, 0.8)], axis=-1)
    rgb = P.hsv_to_rgb(hsv)
    order = np.argsort(-rgb, axis=-1)[:, 0].tolist()  # the largest channel
    assert order == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]


def test_brightness_on_known_colours() -> None:
    image = np.array([[[100, 40, 20], [250, 50, 100], [0, 0, 0], [255, 0, 0]]], np.uint8)
    # severity 2, c = 0.2 = 51/255: V rises by 51, hue and saturation stay, so the
    # channels scale by V'/V; V is capped at 1
    out = P.perturb(image, "brightness", 2, seed=0, row_id=0)
    assert out[0].tolist() == [[151, 60, 30], [255, 51, 102], [51, 51, 51], [255, 0, 0]]
    out = P.perturb(image, "brightness", 5, seed=0, row_id=0)  # c = 0.5
    assert out[0, 0].tolist() == [228, 91, 46]  # 100+127.5 = 227.5 -> V' = 227.5/255
    assert out[0, 1].tolist() == [255, 51, 102]
    # 0.5 * 255 = 127.5 rounds half to even
    assert out[0, 2].tolist() == [128, 128, 128]


def test_brightness_equals_scaling_by_new_value() -> None:
    x = IMAGE / 255.0
    v = x.max(axis=-1, keepdims=True)
    for severity in P.SEVERITIES:
        c = P.parameter("brightness", severity)
        expected = x * np.minimum(v + c, 1.0) / v  # IMAGE has no black pixel
        out = P.perturb(IMAGE, "brightness", severity, seed=0, row_id=0)
        assert np.array_equal(out, P.to_uint8(expected))


def test_noise_is_the_documented_draw() -> None:
    for severity in P.SEVERITIES:
        out = P.perturb(IMAGE, "gaussian_noise", severity, seed=8, row_id=21)
        z = P.rng_for("gaussian_noise", severity, seed=8, row_id=21).standard_normal(IMAGE.shape)
        expected = P.to_uint8(IMAGE / 255.0 + z * P.parameter("gaussian_noise", severity))
        assert np.array_equal(out, expected)


def test_noise_statistics() -> None:
    grey = np.full((256, 256, 3), 128, dtype=np.uint8)
    out = P.perturb(grey, "gaussian_noise", 1, seed=0, row_id=0)
    residual = (out.astype(np.float64) - 128) / 255
    n = residual.size
    assert abs(residual.mean()) < 4 * 0.08 / math.sqrt(n)
    assert residual.std() == pytest.approx(0.08, rel=0.02)
    # the channels are independent
    r, g = residual[..., 0].ravel(), residual[..., 1].ravel()
    assert abs(np.corrcoef(r, g)[0, 1]) < 0.02
    # severity 5 (sd 0.38 around 128/255) clips P(z < -1.32) ~ 9.3 % of values at 0 and
    # P(z > 1.31) ~ 9.5 % at 255
    out = P.perturb(grey, "gaussian_noise", 5, seed=0, row_id=0)
    assert 0.088 < (out == 0).mean() < 0.099
    assert 0.090 < (out == 255).mean() < 0.101


def _kernel(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * taps**2 / sigma**2)
    return k / k.sum()


@pytest.mark.parametrize("severity", [1, 2])
def test_blur_of_an_impulse_is_the_truncated_kernel(severity: int) -> None:
    sigma = P.parameter("gaussian_blur", severity)
    k = _kernel(sigma)
    radius = len(k) // 2
    size = 2 * radius + 5
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[size // 2, size // 2, :] = 255
    out = P.perturb(image, "gaussian_blur", severity, seed=0, row_id=0)
    expected = np.zeros((size, size))
    c = size // 2
    expected[c - radius : c + radius + 1, c - radius : c + radius + 1] = np.outer(k, k)
    for channel in range(3):
        assert np.array_equal(out[..., channel], P.to_uint8(expected))


def test_blur_border_is_nearest_not_reflect() -> None:
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    image[0, 0, :] = 255
    k = _kernel(1.0)
    # 'nearest': every tap left of the corner samples the corner itself
    corner = (k[: len(k) // 2 + 1].sum()) ** 2
    out = P.perturb(image, "gaussian_blur", 1, seed=0, row_id=0)
    assert out[0, 0, 0] == round(corner * 255) == 125


def test_blur_is_scipy_per_channel_and_constant_images_stay() -> None:
    x = IMAGE / 255.0
    for severity in P.SEVERITIES:
        sigma = P.parameter("gaussian_blur", severity)
        expected = np.stack(
            [ndimage.gaussian_filter(x[..., c], sigma, mode="nearest") for c in range(3)],
            axis=-1,
        )
        out = P.perturb(IMAGE, "gaussian_blur", severity, seed=0, row_id=0)
        assert np.array_equal(out, P.to_uint8(expected))
    flat = np.full((9, 7, 3), [10, 200, 77], dtype=np.uint8)
    for kind in ("gaussian_blur", "contrast", "rotate"):
        for severity in P.SEVERITIES:
            assert np.array_equal(P.perturb(flat, kind, severity, seed=0, row_id=0), flat)


@pytest.mark.parametrize("severity", list(P.SEVERITIES))
def test_jpeg_is_pillow_at_the_table_quality(severity: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(IMAGE).save(buffer, format="JPEG", quality=[25, 18, 15, 10, 7][severity - 1])
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    assert np.array_equal(P.perturb(IMAGE, "jpeg", severity, seed=0, row_id=0), expected)


def test_rotate_geometry() -> None:
    x = np.random.default_rng(4).random((9, 9, 3))
    # counter-clockwise as displayed, like np.rot90
    assert np.allclose(P.rotate(x, 90.0), np.rot90(x), atol=1e-12)
    assert np.allclose(P.rotate(x, -90.0), np.rot90(x, -1), atol=1e-12)
    assert np.allclose(P.rotate(x, 0.0), x, atol=1e-15)
    rect = np.random.default_rng(5).random((13, 30, 3))
    for degrees in (5.0, -10.0, 15.0, -20.0, 30.0):
        expected = np.stack(
            [
                ndimage.rotate(rect[..., c], degrees, reshape=False, order=1, mode="reflect")
                for c in range(3)
            ],
            axis=-1,
        )
        assert np.allclose(P.rotate(rect, degrees), expected, atol=1e-9)


def test_rotate_reflects_the_border_instead_of_filling_it() -> None:
    bright = np.full((40, 40, 3), 200, dtype=np.uint8)
    bright[::4] = 180  # stripes, so rotation changes something
    out = P.perturb(bright, "rotate", 5, seed=0, row_id=0)
    assert out.min() >= 180  # no black (or other constant) corners
    assert not np.array_equal(out, bright)


# --- errors ----------------------------------------------------------------------------


def test_unknown_kind_names_the_kinds() -> None:
    with pytest.raises(ValueError, match=r"unknown perturbation kind 'fog'.*gaussian_noise"):
        P.perturb(IMAGE, "fog", 1, seed=0, row_id=0)
    with pytest.raises(ValueError, match="unknown perturbation kind"):
        P.perturbation_key("jpeg_compression", 1, 0)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3", None])
def test_bad_severity(severity: object) -> None:
    with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
        P.perturb(IMAGE, "contrast", severity, seed=0, row_id=0)  # type: ignore[arg-type]


def test_numpy_integers_are_accepted() -> None:
    a = P.perturb(IMAGE, "gaussian_noise", np.int64(2), seed=np.int32(1), row_id=np.uint64(4))  # type: ignore[arg-type]
    assert np.array_equal(a, P.perturb(IMAGE, "gaussian_noise", 2, seed=1, row_id=4))


@pytest.mark.parametrize(("seed", "row_id"), [(-1, 0), (0, -1), (1.5, 0), (0, "7")])
def test_bad_seed_or_row(seed: object, row_id: object) -> None:
    with pytest.raises(ValueError, match="must be a non-negative integer"):
        P.perturb(IMAGE, "gaussian_noise", 1, seed=seed, row_id=row_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 1), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
)
def test_bad_image(image: object) -> None:
    with pytest.raises(ValueError, match="image must"):
        P.perturb(image, "brightness", 1, seed=0, row_id=0)  # type: ignore[arg-type]


# --- cache keys ------------------------------------------------------------------------


def test_key_names_what_changes_the_bytes() -> None:
    key = P.perturbation_key("gaussian_noise", 3, 17)
    assert key["kind"] == "gaussian_noise"
    assert key["severity"] == 3
    assert key["parameter"] == 0.18
    assert key["seed"] == 17
    assert key["version"] == P.PERTURBATIONS_VERSION
    assert key["libraries"] == {"numpy": np.__version__}
    json.dumps(key)
    assert P.perturbation_key("gaussian_blur", 1, 17)["seed"] is None
    assert set(P.perturbation_key("jpeg", 1, 0)["libraries"]) == {"pillow", "libjpeg"}
    assert set(P.perturbation_key("gaussian_blur", 1, 0)["libraries"]) == {"numpy", "scipy"}


def test_digest_changes_with_each_part(monkeypatch: pytest.MonkeyPatch) -> None:
    shard = "ab" * 32
    d = P.perturbation_digest(shard, "rotate", 2, 0)
    assert len(d) == 64
    assert d == P.perturbation_digest(shard, "rotate", 2, 0)
    others = {
        P.perturbation_digest("cd" * 32, "rotate", 2, 0),
        P.perturbation_digest(shard, "rotate", 3, 0),
        P.perturbation_digest(shard, "rotate", 2, 1),
        P.perturbation_digest(shard, "gaussian_noise", 2, 0),
    }
    assert d not in others
    assert len(others) == 4
    # a deterministic kind's perturbed shard is shared whatever the seed
    assert P.perturbation_digest(shard, "jpeg", 2, 0) == P.perturbation_digest(shard, "jpeg", 2, 9)
    monkeypatch.setattr(P, "PERTURBATIONS_VERSION", P.PERTURBATIONS_VERSION + 1)
    assert P.perturbation_digest(shard, "rotate", 2, 0) != d
    with pytest.raises(ValueError, match="shard_digest"):
        P.perturbation_digest("", "rotate", 2, 0)
    with pytest.raises(ValueError, match="seed"):
        P.perturbation_digest(shard, "rotate", 2, -3)


# --- corruption error ------------------------------------------------------------------


def test_corruption_error_by_hand() -> None:
    ce = P.corruption_error(0.1, {3: 0.4, 1: 0.2, 5: 0.6})
    assert ce.severities == (1, 3, 5)
    assert ce.mean_error == pytest.approx(0.4)
    assert ce.relative_error == pytest.approx(0.3)
    assert ce.degradation == pytest.approx({1: 0.1, 3: 0.3, 5: 0.5})
    d = ce.to_dict()
    assert d["severities"] == [1, 3, 5]
    assert d["errors"] == {"1": 0.2, "3": 0.4, "5": 0.6}
    assert d["relativeError"] == pytest.approx(0.3)
    json.dumps(d)
    # a perturbation that helps gives a negative relative error
    assert P.corruption_error(0.3, {1: 0.2}).relative_error == pytest.approx(-0.1)
    both = P.mean_over_kinds({"jpeg": ce, "contrast": P.corruption_error(0.1, {1: 0.1, 2: 0.3})})
    assert both == pytest.approx({"meanError": 0.3, "relativeError": 0.2})


@pytest.mark.parametrize(
    ("clean", "perturbed", "match"),
    [
        (0.1, {}, "at least one severity"),
        (1.5, {1: 0.2}, "clean_error"),
        (float("nan"), {1: 0.2}, "clean_error"),
        (0.1, {0: 0.2}, "severities"),
        (0.1, {6: 0.2}, "severities"),
        (0.1, {2: -0.1}, "severity 2"),
    ],
)
def test_corruption_error_refuses(clean: float, perturbed: dict[int, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        P.corruption_error(clean, perturbed)


def test_mean_over_no_kinds_refused() -> None:
    with pytest.raises(ValueError, match="at least one kind"):
        P.mean_over_kinds({})
