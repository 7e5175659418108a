"""dyff's predictions equal plain transformers', for every processor family.

For six families of image processors (fixed-size resize bilinear and bicubic,
ConvNext's crop_pct, resize-then-crop, shortest-edge-then-crop, no resize at
all), each paired with a tiny random-weight model of a matching architecture,
a dataset of images of mixed sizes and modes (square, portrait, landscape,
grayscale, RGBA, palette, 16-bit, CMYK and EXIF-rotated JPEG) goes through the
real path: the ingest workloads, a Bento built by dyff, `bentoml serve`, the
evaluate workload. Per row, its top-k labels must equal the transformers
image-classification pipeline's and every score must be within 1e-5; the
metrics must equal those computed from the pipeline's outputs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from PIL import Image

from dyff import metrics
from dyff.tinymodels import FAMILIES, FAMILY_LABELS, random_family_model
from tests.workloads.evaluation_fixtures import Platform

pytestmark = pytest.mark.slow

ACCOUNT = "ref"
DATASET = "mixed"
TOP_K = len(FAMILY_LABELS)
SCORE_TOLERANCE = 1e-5


def _encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def mixed_images(seed: int = 0) -> list[bytes]:
    """Images as people's datasets hold them: every size and mode a PNG or JPEG takes."""
    rng = np.random.default_rng(seed)

    def rgb(h: int, w: int) -> Image.Image:
        # Smooth gradients plus noise: resampling filters matter, as on photographs.
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1),
                         (x + y) * 255 // max(1, h + w - 2)], axis=-1)  # fmt: skip
        noise = rng.integers(-40, 40, (h, w, 3))
        return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")

    out = [
        _encode(rgb(40, 40), "PNG"),  # square
        _encode(rgb(70, 30), "PNG"),  # portrait
        _encode(rgb(20, 90), "PNG"),  # landscape
        _encode(rgb(16, 16), "PNG"),  # already at the ViT size
        _encode(rgb(33, 47).convert("L"), "PNG"),  # grayscale
        _encode(rgb(25, 50).convert("LA"), "PNG"),  # grayscale + alpha
        _encode(rgb(61, 29).convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG"),
        _encode(rgb(12, 200), "JPEG", quality=85),  # very wide
        _encode(rgb(48, 64), "JPEG", quality=90),
        _encode(rgb(37, 21).convert("L"), "JPEG", quality=90),
        _encode(rgb(30, 44).convert("CMYK"), "JPEG", quality=90),
    ]
    rgba = np.concatenate(
        [np.asarray(rgb(50, 25)), rng.integers(0, 256, (50, 25, 1), dtype=np.uint8)], axis=-1
    )
    out.append(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    sixteen = np.asarray(rgb(24, 36).convert("L"), dtype=np.uint16) * 257
    out.append(_encode(Image.fromarray(sixteen), "PNG"))  # 16-bit grayscale
    rotated = rgb(24, 40)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    out.append(_encode(rotated, "JPEG", quality=90, exif=exif.tobytes()))
    out += [_encode(rgb(int(h), int(w)), "PNG") for h, w in rng.integers(14, 80, (6, 2))]
    return out


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> tuple[Platform, list[tuple[bytes, int]]]:
    p = Platform(tmp_path_factory.mktemp("reference"))
    images = mixed_images()
    labels = np.random.default_rng(1).integers(0, len(FAMILY_LABELS), len(images))
    examples = list(zip(images, (int(t) for t in labels), strict=True))
    p.add_dataset(DATASET, examples, shard_rows=7, account=ACCOUNT, names=FAMILY_LABELS)
    return p, examples


def pipeline_predictions(model_dir: Path, images: list[bytes]) -> list[list[dict[str, Any]]]:
    """What a user's notebook gives: the transformers image-classification pipeline."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    model = AutoModelForImageClassification.from_pretrained(model_dir, use_safetensors=True)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    classify = pipeline("image-classification", model=model, image_processor=processor)
    return [classify(Image.open(io.BytesIO(data)), top_k=TOP_K) for data in images]


@pytest.mark.parametrize("family", FAMILIES)
def test_predictions_equal_the_transformers_pipeline(
    family: str, platform: tuple[Platform, list[tuple[bytes, int]]], tmp_path: Path
) -> None:
    from dyff.models import package_transformers
    from dyff.workloads.evaluate import run_evaluation

    p, examples = platform
    name = family.replace("_", "-")
    model_dir = random_family_model(family, tmp_path / "model")
    bento = package_transformers(model_dir, tmp_path / "package")
    p.add_model(name, model_dir, bento, account=ACCOUNT)
    p.order(ACCOUNT, name, model=name, dataset=DATASET, model_owner=ACCOUNT,
            dataset_owner=ACCOUNT, top_k=TOP_K, batch_size=5, concurrency=2)  # fmt: skip
    outcome = run_evaluation(p.records, p.blobs, ACCOUNT, name)
    assert outcome is not None and outcome.images == len(examples)

    got = pl.read_parquet([str(p.blobs.root / key) for key in p.manifest(ACCOUNT, name)]).sort(
        "row_id"
    )
    assert got["row_id"].to_list() == list(range(len(examples)))
    reference = pipeline_predictions(model_dir, [img for img, _ in examples])
    for row, (ref, ids, scores) in enumerate(
        zip(reference, got["topk_labels"].to_list(), got["topk_scores"].to_list(), strict=True)
    ):
        ref_scores = [r["score"] for r in ref]
        # The model's classes are far apart, so the order is the computation's, not noise's.
        assert min(-np.diff(ref_scores)) > 10 * SCORE_TOLERANCE, (row, ref_scores)
        assert [FAMILY_LABELS[i] for i in ids] == [r["label"] for r in ref], row
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=SCORE_TOLERANCE)

    labels = np.array([t for _, t in examples])
    names = [[FAMILY_LABELS.index(r["label"]) for r in ref] for ref in reference]
    expected = metrics.compute(
        labels,
        np.array([n[0] for n in names]),
        np.array([ref[0]["score"] for ref in reference]),
        np.array([n[:5] for n in names]),
        FAMILY_LABELS,
        ["accuracy", "precision", "recall", "f1", "confusion_matrix", "ece"],
    )
    doc = p.metrics_doc(ACCOUNT, name)
    for key, value in expected.items():
        assert _close(doc[key], value), f"{key}: {doc[key]} != {value}"


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        # Score averages (ECE, calibration) may differ as much as the scores do.
        return abs(float(a) - float(b)) <= SCORE_TOLERANCE
    return bool(a == b)


PERTURBED = [("gaussian_noise", 3, 11), ("rotate", 2, 4), ("jpeg", 5, 0)]


@pytest.mark.parametrize("family", ["deit_crop", "mobilenet_no_resize"])
def test_perturbed_predictions_equal_the_pipeline_on_the_perturbed_images(
    family: str, platform: tuple[Platform, list[tuple[bytes, int]]], tmp_path: Path
) -> None:
    """Robustness criteria: what dyff reports for a perturbed variant is what the user's
    pipeline gives on the image loaded as it loads it, then corrupted."""
    from PIL import ImageOps

    from dyff import perturbations
    from dyff.evaluation import Variant, resolve
    from dyff.models import package_transformers
    from dyff.workloads.evaluate import run_evaluation

    p, examples = platform
    name = f"robust-{family.replace('_', '-')}"
    model_dir = random_family_model(family, tmp_path / "model")
    bento = package_transformers(model_dir, tmp_path / "package")
    p.add_model(name, model_dir, bento, account=ACCOUNT)
    spec = [{"kind": k, "severities": [s], "seed": seed} for k, s, seed in PERTURBED]
    p.order(ACCOUNT, name, model=name, dataset=DATASET, model_owner=ACCOUNT,
            dataset_owner=ACCOUNT, top_k=TOP_K, batch_size=5, concurrency=2,
            criteria={"perturbations": spec})  # fmt: skip
    outcome = run_evaluation(p.records, p.blobs, ACCOUNT, name)
    assert outcome is not None
    shards = len(outcome.plan.shards)
    assert {k: len(v) for k, v in outcome.perturbed.items()} == {
        f"perturbation {k}/{s}": shards for k, s, _ in PERTURBED
    }
    inputs = resolve(p.records, p.blobs, p.evaluation(ACCOUNT, name))
    doc = p.metrics_doc(ACCOUNT, name)
    robust = {r["kind"]: r for r in doc["robustness"]["perturbations"]}
    assert set(robust) == {k for k, _, _ in PERTURBED}
    for kind, severity, seed in PERTURBED:
        keys = [inputs.prediction_key(s, Variant(kind, severity, seed)) for s in inputs.shards]
        got = pl.read_parquet([str(p.blobs.root / k) for k in keys]).sort("row_id")
        loaded = [
            ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
            for data, _ in examples
        ]
        corrupted = [
            perturbations.perturb(np.asarray(img), kind, severity, seed=seed, row_id=row)
            for row, img in enumerate(loaded)
        ]
        encoded = [_encode(Image.fromarray(c, "RGB"), "PNG") for c in corrupted]
        reference = pipeline_predictions(model_dir, encoded)
        for row, (ref, ids, scores) in enumerate(
            zip(reference, got["topk_labels"].to_list(), got["topk_scores"].to_list(), strict=True)
        ):
            assert [FAMILY_LABELS[i] for i in ids] == [r["label"] for r in ref], (kind, row)
            np.testing.assert_allclose(
                scores, [r["score"] for r in ref], rtol=0, atol=SCORE_TOLERANCE
            )
        labels = np.array([t for _, t in examples])
        top1 = np.array([FAMILY_LABELS.index(ref[0]["label"]) for ref in reference])
        (entry,) = robust[kind]["bySeverity"]
        assert entry["accuracy"] == pytest.approx(float(np.mean(top1 == labels)))
        assert robust[kind]["relativeError"] == pytest.approx(
            (1 - entry["accuracy"]) - (1 - doc["accuracy"])
        )

    # Ordered again with one more severity: only that severity is inferred.
    spec[0]["severities"] = [3, 1]
    p.order(ACCOUNT, f"{name}-more", model=name, dataset=DATASET, model_owner=ACCOUNT,
            dataset_owner=ACCOUNT, top_k=TOP_K, batch_size=5, concurrency=2,
            criteria={"perturbations": spec})  # fmt: skip
    again = run_evaluation(p.records, p.blobs, ACCOUNT, f"{name}-more")
    assert again is not None and again.inferred == []
    assert again.perturbed == {"perturbation gaussian_noise/1": [s.sha256 for s in inputs.shards]}
    progress = p.evaluation(ACCOUNT, f"{name}-more").status.progress
    assert progress is not None and progress.by_criterion is not None
    reused = {c.criterion: c.shards_reused for c in progress.by_criterion}
    assert reused["predictions"] == shards and reused["perturbation gaussian_noise/1"] == 0
    assert reused["perturbation gaussian_noise/3"] == shards
