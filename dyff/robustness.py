"""Robustness: a model's metrics on corrupted images (`spec.criteria.perturbations`).

Inference. A perturbed variant's shards go through the model like the clean ones, but
each image is first decoded exactly as the client decodes it for the model
(`runtime.client.decode_image`: EXIF orientation, then RGB), corrupted
(`perturbations.perturb`, seeded by the row id, so any order of rows or pods gives the
same pixels) and encoded as lossless PNG. That PNG decodes to exactly the corrupted
pixels, so dyff's own server (the client resizes where the processor would, the server
runs the rest) and a user's service (which gets image files) both see the corrupted
image, as a user's own script running the pipeline on it would. Each variant's
predictions are cached under their own key (`evaluation.Inputs.variant_digest`).

Results. Per kind and severity: accuracy and error (1 - accuracy), and top-5 accuracy
where the clean metrics answer it; per kind, the errors relative to the clean images
(`perturbations.corruption_error`); over the kinds, their means. The metrics come from
the same code as the clean ones (`results.stream_metrics`), a batch at a time.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dyff import perturbations, results
from dyff.evaluation import Inputs, Plan, Variant
from dyff.runtime.client import decode_image
from dyff.stores.blobs import BlobStore

ROBUSTNESS_VERSION = 1


def perturbed_png(data: bytes, row_id: int, variant: Variant) -> bytes:
    """One image as the model sees it under `variant`: decoded as for inference,
    corrupted, then lossless PNG."""
    from PIL import Image

    assert variant.kind is not None, "the clean variant is not perturbed"
    pixels = decode_image(data)
    corrupted = perturbations.perturb(
        pixels, variant.kind, variant.severity, seed=variant.seed, row_id=int(row_id)
    )
    out = io.BytesIO()
    # compress_level 1: the PNG lives for one request; its pixels are what matter.
    Image.fromarray(corrupted, mode="RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()


def perturbed_images(
    images: Iterable[bytes], row_ids: Sequence[int] | np.ndarray, variant: Variant
) -> Iterator[bytes]:
    """A shard's images under `variant`, lazily, in order."""
    for data, row_id in zip(images, row_ids, strict=True):
        yield perturbed_png(data, int(row_id), variant)


def robustness_results(
    inputs: Inputs, blobs: BlobStore, plan: Plan, clean: dict[str, Any], scratch: Path
) -> dict[str, Any] | None:
    """The `robustness` section of metrics.json (None without perturbations). `clean`:
    the clean metrics document (its accuracy is the baseline; its top-5 says whether
    top-5 means anything here)."""
    if not plan.perturbed:
        return None
    clean_accuracy = float(clean["accuracy"])
    top5 = clean.get("top5Accuracy") is not None
    by_kind: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for part in plan.perturbed:
        variant = part.variant
        assert variant.kind is not None
        paths = results.local_paths(blobs, part.keys, scratch / "perturbed")
        doc = results.stream_metrics(
            paths,
            inputs.dataset_labels,
            ["accuracy", "top5_accuracy"] if top5 else ["accuracy"],
            expected_rows=plan.rows_total,
            top5=top5,
            model_classes=inputs.model_classes,
        )
        row: dict[str, Any] = {
            "severity": variant.severity,
            "parameter": perturbations.parameter(variant.kind, variant.severity),
            "accuracy": doc["accuracy"],
            "error": 1.0 - doc["accuracy"],
        }
        if top5:
            row["top5Accuracy"] = doc.get("top5Accuracy")
        by_kind.setdefault((variant.kind, variant.seed), []).append(row)
    return robustness_doc(clean_accuracy, by_kind)


def robustness_doc(
    clean_accuracy: float, rows_by_kind: Mapping[tuple[str, int], list[dict[str, Any]]]
) -> dict[str, Any]:
    """The `robustness` section from the clean accuracy and, per (kind, seed) in order, its
    rows by severity (each with `severity`, `parameter`, `accuracy`, `error` and, where
    top-5 means anything, `top5Accuracy`): per kind its corruption error
    (`perturbations.corruption_error`), over the kinds their means. Pure: the tests build
    documents with it."""
    kinds = []
    summaries = {}
    for (kind, seed), rows in rows_by_kind.items():
        summary = perturbations.corruption_error(
            1.0 - clean_accuracy, {r["severity"]: r["error"] for r in rows}
        )
        summaries[kind] = summary
        kinds.append({"kind": kind, "seed": seed, **summary.to_dict(), "bySeverity": rows})
    return {
        "version": ROBUSTNESS_VERSION,
        "perturbationsVersion": perturbations.PERTURBATIONS_VERSION,
        "clean": {"accuracy": clean_accuracy, "error": 1.0 - clean_accuracy},
        "perturbations": kinds,
        **perturbations.mean_over_kinds(summaries),
    }
