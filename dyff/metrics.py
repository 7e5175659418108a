"""Classification metrics over an evaluation's predictions: pure numpy, no I/O.

Every function takes plain arrays (true label ids, predicted ids, top-1
scores, top-k ids), so the same code serves a 100-row test and 10 million
rows read from Parquet. Conventions follow scikit-learn where it has the
metric (and the tests hold them to it):

- precision / recall / F1 per class with `zero_division=0`; the macro average
  is over the classes that occur among the true *or* predicted labels
  (scikit-learn's default label set);
- predicted ids outside the label list (a model label the dataset lacks) are
  wrong: they lower the true class's recall and add no class, no column of
  the confusion matrix, no precision (`predictedOutsideLabels` counts them);
- top-5 accuracy is left out when the model has at most 5 classes: every label
  it knows is then in its top 5, so the number would be 1.0 by construction
  (`top5Omitted` says why);
- expected calibration error uses 15 equal-width bins on the top-1 score,
  each bin `(lo, hi]` (the first also takes 0), weighted by its share of rows
  — the binning of `sklearn.calibration.calibration_curve(strategy="uniform")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

ECE_BINS = 15
TOP_K = 5  # the k of top-k accuracy


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Share of rows whose top-1 prediction is the true label."""
    if len(labels) == 0:
        return 0.0
    return float(np.mean(np.asarray(labels) == np.asarray(predicted)))


def top_k_accuracy(labels: np.ndarray, topk: np.ndarray, k: int = 5) -> float:
    """Share of rows whose true label is among the first `k` columns of `topk` (N, K)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    head = np.asarray(topk)[:, :k]
    return float(np.mean((head == labels[:, None]).any(axis=1)))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; row = true label, column = predicted."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if len(labels) and (
        min(labels.min(), predicted.min()) < 0 or max(labels.max(), predicted.max()) >= n_classes
    ):
        raise ValueError(f"label ids must lie in 0..{n_classes - 1}")
    flat = np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


@dataclass(frozen=True)
class ClassScores:
    """Per-class precision, recall, F1 and support (true rows), and their macro averages."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    macro_precision: float
    macro_recall: float
    macro_f1: float


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def class_scores(cm: np.ndarray, missed: np.ndarray | None = None) -> ClassScores:
    """Precision, recall and F1 from a confusion matrix (zero where undefined). `missed`:
    per true class, rows predicted outside the classes (they count in its support)."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    if missed is not None:
        support = support + np.asarray(missed, dtype=np.int64)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    # scikit-learn's label set: the classes seen as true or predicted labels.
    seen = (support > 0) | (predicted > 0)
    if not seen.any():
        return ClassScores(precision, recall, f1, support, 0.0, 0.0, 0.0)
    return ClassScores(
        precision,
        recall,
        f1,
        support,
        float(precision[seen].mean()),
        float(recall[seen].mean()),
        float(f1[seen].mean()),
    )


def calibration_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: row count, mean confidence, accuracy (0 for empty bins)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # (lo, hi] bins; a score of exactly 0 falls into the first one.
    ids = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, n_bins - 1)
    counts = np.bincount(ids, minlength=n_bins)
    conf_sum = np.bincount(ids, weights=confidence, minlength=n_bins)
    right = np.bincount(ids, weights=correct, minlength=n_bins)
    return counts, _ratio(conf_sum, counts), _ratio(right, counts)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Sum over bins of |accuracy - mean confidence|, weighted by the bin's share of rows."""
    counts, conf, acc = calibration_bins(confidence, correct, n_bins)
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(np.sum(counts / total * np.abs(acc - conf)))


def compute(
    labels: np.ndarray,
    predicted: np.ndarray,
    score: np.ndarray,
    topk: np.ndarray | None,
    label_names: list[str],
    wanted: list[str],
    *,
    model_classes: int | None = None,
) -> dict[str, Any]:
    """The metrics document (metrics.json) for the metrics named in `wanted`.

    `label_names` are the classes (the dataset's labels); predicted ids outside
    them are wrong and add no class. `topk` is (N, K) label ids, best first, or
    None when the stored predictions cannot answer top-5 (fewer than 5 kept
    while the model has more labels): `top5Accuracy` is then null. A model of
    at most 5 classes (`model_classes`, default the number of labels) gets no
    `top5Accuracy`, and `top5Omitted` says why.
    """
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    n_classes = len(label_names)
    doc: dict[str, Any] = {"labels": label_names, "rows": len(labels)}
    if "accuracy" in wanted:
        doc["accuracy"] = accuracy(labels, predicted)
    classes = n_classes if model_classes is None else model_classes
    if "top5_accuracy" in wanted and classes <= TOP_K:
        doc["top5Omitted"] = (
            f"the model has {classes} classes: every one is in its top {TOP_K}, so top-{TOP_K} "
            "accuracy would be 1.0 by construction"
        )
    elif "top5_accuracy" in wanted:
        doc["top5Accuracy"] = None if topk is None else top_k_accuracy(labels, topk, TOP_K)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"true label ids must lie in 0..{n_classes - 1}")
    # Predictions outside the classes go to one extra column, then leave the matrix.
    outside = (predicted < 0) | (predicted >= n_classes)
    full = confusion_matrix(labels, np.where(outside, n_classes, predicted), n_classes + 1)
    cm, missed = full[:n_classes, :n_classes], full[:n_classes, n_classes]
    if outside.any():
        doc["predictedOutsideLabels"] = int(outside.sum())
    per_class = {"precision", "recall", "f1"} & set(wanted)
    if per_class:
        scores = class_scores(cm, missed)
        doc["macro"] = {
            name: getattr(scores, f"macro_{name}") for name in ("precision", "recall", "f1")
            if name in per_class
        }  # fmt: skip
        doc["perClass"] = [
            {
                "label": label_names[i],
                "support": int(scores.support[i]),
                **{name: float(getattr(scores, name)[i]) for name in sorted(per_class)},
            }
            for i in range(n_classes)
        ]
    if "confusion_matrix" in wanted:
        doc["confusionMatrix"] = cm.tolist()
    if "ece" in wanted:
        correct = labels == predicted
        counts, conf, acc = calibration_bins(score, correct)
        doc["ece"] = expected_calibration_error(score, correct)
        doc["calibration"] = {
            "bins": ECE_BINS,
            "counts": counts.tolist(),
            "confidence": conf.tolist(),
            "accuracy": acc.tolist(),
        }
    return doc


def summary(doc: dict[str, Any]) -> dict[str, float | None]:
    """The headline numbers of a metrics document (EvaluationStatus.metrics, wire form)."""
    return {
        "accuracy": doc.get("accuracy"),
        "top5Accuracy": doc.get("top5Accuracy"),
        "macroF1": (doc.get("macro") or {}).get("f1"),
        "ece": doc.get("ece"),
    }
