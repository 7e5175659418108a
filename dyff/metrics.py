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

`Tally` takes the rows a batch at a time and gives the same document as `compute`
over all of them, bit for bit, in memory that does not grow with the rows.
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


def _bin_ids(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Each score's equal-width bin: (lo, hi], a score of exactly 0 in the first."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, n_bins - 1)


def calibration_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: row count, mean confidence, accuracy (0 for empty bins)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    ids = _bin_ids(confidence, n_bins)
    counts = np.bincount(ids, minlength=n_bins)
    conf_sum = np.bincount(ids, weights=confidence, minlength=n_bins)
    right = np.bincount(ids, weights=correct, minlength=n_bins)
    return counts, _ratio(conf_sum, counts), _ratio(right, counts)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Sum over bins of |accuracy - mean confidence|, weighted by the bin's share of rows."""
    return _ece(*calibration_bins(confidence, correct, n_bins))


def _ece(counts: np.ndarray, conf: np.ndarray, acc: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(np.sum(counts / total * np.abs(acc - conf)))


class Tally:
    """What `compute` needs of the rows, gathered a batch at a time (`add`, rows in order),
    so that the metrics of any number of rows take memory for one batch: integer counts
    (right rows, top-k hits, the confusion matrix with one extra column for predictions
    outside the classes, calibration bins) and the calibration bins' score sums, each
    continued in row order exactly as one `np.bincount` over every row would add them.
    `document` is therefore `compute` over all the rows at once, bit for bit."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.rows = 0
        self.right = 0
        width = n_classes + 1
        self.matrix = np.zeros(width * width, dtype=np.int64)
        self.bin_counts = np.zeros(ECE_BINS, dtype=np.int64)
        self.bin_scores: np.ndarray = np.zeros(ECE_BINS, dtype=np.float64)
        self.bin_right = np.zeros(ECE_BINS, dtype=np.int64)
        # Top-k: rows whose label is among their first w ids, for w = 1..TOP_K; the
        # narrowest top-k given (None: none given); whether some rows came without.
        self.top_hits = np.zeros(TOP_K + 1, dtype=np.int64)
        self.top_width: int | None = None
        self.top_missing = False

    def add(
        self,
        labels: np.ndarray,
        predicted: np.ndarray,
        score: np.ndarray,
        topk: np.ndarray | None = None,
    ) -> None:
        """The next rows: true ids, top-1 ids, top-1 scores, and (N, K) top-k ids or None."""
        labels = np.asarray(labels)
        predicted = np.asarray(predicted)
        n, k = len(labels), self.n_classes
        if topk is None:
            self.top_missing = True
        else:
            head = np.asarray(topk)[:, :TOP_K]
            width = head.shape[1]
            self.top_width = width if self.top_width is None else min(self.top_width, width)
            if n and width:
                hit = np.logical_or.accumulate(head == labels[:, None], axis=1)
                self.top_hits[1 : width + 1] += hit.sum(axis=0)
        if n == 0:
            return
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"true label ids must lie in 0..{k - 1}")
        self.rows += n
        right = labels == predicted
        self.right += int(np.count_nonzero(right))
        outside = (predicted < 0) | (predicted >= k)
        codes = labels.astype(np.int64) * (k + 1) + np.where(outside, k, predicted)
        self.matrix += np.bincount(codes, minlength=self.matrix.size)
        confidence = np.asarray(score, dtype=np.float64)
        ids = _bin_ids(confidence, ECE_BINS)
        self.bin_counts += np.bincount(ids, minlength=ECE_BINS)
        self.bin_right += np.bincount(ids, weights=right, minlength=ECE_BINS).astype(np.int64)
        # Each bin's running sum first, then this batch's scores in order: the very
        # additions one bincount over all the rows makes.
        self.bin_scores = np.bincount(
            np.concatenate([np.arange(ECE_BINS), ids]),
            weights=np.concatenate([self.bin_scores, confidence]),
            minlength=ECE_BINS,
        )

    def document(
        self, label_names: list[str], wanted: list[str], *, model_classes: int | None = None
    ) -> dict[str, Any]:
        """The metrics document (metrics.json) of the rows added (`compute`)."""
        n_classes = len(label_names)
        if n_classes != self.n_classes:
            raise ValueError(f"{n_classes} label names for {self.n_classes} classes")
        rows = self.rows
        doc: dict[str, Any] = {"labels": label_names, "rows": rows}
        if "accuracy" in wanted:
            doc["accuracy"] = self.right / rows if rows else 0.0
        classes = n_classes if model_classes is None else model_classes
        if "top5_accuracy" in wanted and classes <= TOP_K:
            doc["top5Omitted"] = (
                f"the model has {classes} classes: every one is in its top {TOP_K}, so "
                f"top-{TOP_K} accuracy would be 1.0 by construction"
            )
        elif "top5_accuracy" in wanted:
            width = self.top_width
            if width is None or self.top_missing:
                doc["top5Accuracy"] = None
            else:
                doc["top5Accuracy"] = int(self.top_hits[width]) / rows if rows else 0.0
        full = self.matrix.reshape(n_classes + 1, n_classes + 1)
        cm, missed = full[:n_classes, :n_classes], full[:n_classes, n_classes]
        outside = int(full[:, n_classes].sum())
        if outside:
            doc["predictedOutsideLabels"] = outside
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
            counts = self.bin_counts
            conf = _ratio(self.bin_scores, counts)
            acc = _ratio(self.bin_right.astype(np.float64), counts)
            doc["ece"] = _ece(counts, conf, acc)
            doc["calibration"] = {
                "bins": ECE_BINS,
                "counts": counts.tolist(),
                "confidence": conf.tolist(),
                "accuracy": acc.tolist(),
            }
        return doc


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
    `top5Accuracy`, and `top5Omitted` says why. (`Tally` gives the same document
    from rows added a batch at a time.)
    """
    tally = Tally(len(label_names))
    tally.add(labels, predicted, score, topk)
    return tally.document(label_names, wanted, model_classes=model_classes)


def summary(doc: dict[str, Any]) -> dict[str, float | None]:
    """The headline numbers of a metrics document (EvaluationStatus.metrics, wire form)."""
    return {
        "accuracy": doc.get("accuracy"),
        "top5Accuracy": doc.get("top5Accuracy"),
        "macroF1": (doc.get("macro") or {}).get("f1"),
        "ece": doc.get("ece"),
    }
