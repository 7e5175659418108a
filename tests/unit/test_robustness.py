"""What the model is sent for a perturbed image: exactly the corrupted pixels of the image
as the client decodes it, whatever the source format (dyff.robustness)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dyff import perturbations
from dyff.evaluation import Variant
from dyff.robustness import perturbed_images, perturbed_png
from dyff.runtime.client import decode_image

ORIENTATION = 0x0112


def encoded(mode: str, fmt: str, *, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(13, 21, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    if mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    image.save(out, format=fmt, exif=exif.tobytes()) if orientation else image.save(out, format=fmt)
    return out.getvalue()


SOURCES = [
    ("RGB", "PNG", None),
    ("L", "PNG", None),
    ("P", "PNG", None),
    ("RGBA", "PNG", None),
    ("RGB", "JPEG", None),
    ("RGB", "JPEG", 6),  # rotated by EXIF: decoded upright, as the pipeline loads it
    ("L", "JPEG", None),
]


@pytest.mark.parametrize(("mode", "fmt", "orientation"), SOURCES)
@pytest.mark.parametrize("kind", sorted(perturbations.KINDS))
def test_the_png_sent_decodes_to_the_corrupted_pixels(
    mode: str, fmt: str, orientation: int | None, kind: str
) -> None:
    data = encoded(mode, fmt, orientation=orientation)
    variant = Variant(kind, 3, seed=5)
    sent = perturbed_png(data, 42, variant)
    expected = perturbations.perturb(decode_image(data), kind, 3, seed=5, row_id=42)
    assert np.array_equal(decode_image(sent), expected)
    if orientation == 6:
        assert decode_image(sent).shape[:2] == (21, 13)


def test_rows_are_seeded_by_their_own_id() -> None:
    data = [encoded("RGB", "PNG")] * 3
    variant = Variant("gaussian_noise", 2, seed=1)
    forward = list(perturbed_images(data, [7, 8, 9], variant))
    backward = list(perturbed_images(data[::-1], [9, 8, 7], variant))
    assert forward == backward[::-1]
    assert len(set(forward)) == 3  # the same picture, other rows: other noise
    with pytest.raises(ValueError):
        list(perturbed_images(data, [1, 2], variant))  # a row id for every image
