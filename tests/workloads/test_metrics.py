"""dyff.metrics against scikit-learn on random data, and the metrics document."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from dyff import metrics
from dyff.schema import ALL_METRICS


def random_predictions(
    seed: int, n: int, classes: int, k: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a top-k that is right ~60% of the time, and softmax-like top-1 scores."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += rng.uniform(0, 3, n)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    topk = np.argsort(-probs, axis=1)[:, :k]
    score = probs[np.arange(n), topk[:, 0]].astype(np.float32)
    return labels, topk, score, probs


def sklearn_ece(correct: np.ndarray, score: np.ndarray, bins: int = 15) -> float:
    """ECE from scikit-learn's uniform calibration curve, weighted by its bins' counts."""
    prob_true, prob_pred = calibration_curve(correct, score, n_bins=bins, strategy="uniform")
    edges = np.linspace(0, 1, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], score), minlength=bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / len(score) * np.abs(prob_true - prob_pred)))


@pytest.mark.parametrize(("seed", "n", "classes"), [(0, 1000, 10), (1, 5000, 37), (2, 50, 3)])
def test_against_scikit_learn(seed: int, n: int, classes: int) -> None:
    labels, topk, score, probs = random_predictions(seed, n, classes, k=min(5, classes))
    predicted = topk[:, 0]
    assert metrics.accuracy(labels, predicted) == pytest.approx(
        skm.accuracy_score(labels, predicted)
    )
    if classes > 5:
        assert metrics.top_k_accuracy(labels, topk, 5) == pytest.approx(
            skm.top_k_accuracy_score(labels, probs, k=5, labels=range(classes))
        )
    cm = metrics.confusion_matrix(labels, predicted, classes)
    np.testing.assert_array_equal(
        cm, skm.confusion_matrix(labels, predicted, labels=range(classes))
    )
    scores = metrics.class_scores(cm)
    prec, rec, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=range(classes), zero_division=0
    )
    np.testing.assert_allclose(scores.precision, prec)
    np.testing.assert_allclose(scores.recall, rec)
    np.testing.assert_allclose(scores.f1, f1)
    np.testing.assert_array_equal(scores.support, support)
    for name in ("precision", "recall", "f1"):
        expected = getattr(skm, f"{name}_score")(
            labels, predicted, average="macro", zero_division=0
        )
        assert getattr(scores, f"macro_{name}") == pytest.approx(expected)
    correct = labels == predicted
    assert metrics.expected_calibration_error(score, correct) == pytest.approx(
        sklearn_ece(correct, score)
    )


def test_macro_average_over_classes_seen() -> None:
    """Classes never true nor predicted are left out, as scikit-learn does; a class only
    predicted counts with zero precision."""
    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 1, 1, 3])
    scores = metrics.class_scores(metrics.confusion_matrix(labels, predicted, 5))
    assert scores.macro_f1 == pytest.approx(skm.f1_score(labels, predicted, average="macro"))
    assert scores.precision[3] == 0 and scores.support[2] == 0


def test_ece_edges_and_extremes() -> None:
    # Perfectly calibrated: confidence 1 and always right.
    assert metrics.expected_calibration_error(np.ones(10), np.ones(10, bool)) == 0.0
    # Always wrong at confidence 1: the whole gap.
    assert metrics.expected_calibration_error(np.ones(10), np.zeros(10, bool)) == 1.0
    # A score on a bin edge belongs to the lower bin, (lo, hi].
    counts, _, _ = metrics.calibration_bins(np.array([1 / 15, 2 / 15]), np.array([1, 1]))
    assert counts[0] == 1 and counts[1] == 1
    assert metrics.expected_calibration_error(np.array([]), np.array([])) == 0.0


def test_confusion_matrix_refuses_ids_outside_labels() -> None:
    with pytest.raises(ValueError):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


def test_document_has_what_was_asked() -> None:
    labels, topk, score, _ = random_predictions(3, 200, 4, k=4)
    names = ["a", "b", "c", "d"]
    doc = metrics.compute(labels, topk[:, 0], score, topk, names, list(ALL_METRICS))
    assert doc["labels"] == names and doc["rows"] == 200
    assert len(doc["confusionMatrix"]) == 4 and sum(map(sum, doc["confusionMatrix"])) == 200
    assert [c["label"] for c in doc["perClass"]] == names
    # 4 classes: top-5 would be 1.0 by construction, so it is left out, saying why.
    assert "top5Accuracy" not in doc and "4 classes" in doc["top5Omitted"]
    assert sum(doc["calibration"]["counts"]) == 200 and doc["calibration"]["bins"] == 15
    assert metrics.summary(doc) == {
        "accuracy": doc["accuracy"], "top5Accuracy": None,
        "macroF1": doc["macro"]["f1"], "ece": doc["ece"],
    }  # fmt: skip
    only = metrics.compute(labels, topk[:, 0], score, None, names, ["accuracy", "recall"])
    assert set(only) == {"labels", "rows", "accuracy", "macro", "perClass"}
    assert set(only["macro"]) == {"recall"} and set(only["perClass"][0]) == {
        "label", "support", "recall",
    }  # fmt: skip
    assert metrics.summary(only)["macroF1"] is None


def test_top5_needs_more_than_five_model_classes() -> None:
    labels, topk, score, _ = random_predictions(4, 300, 12, k=5)
    names = [f"c{i}" for i in range(12)]
    doc = metrics.compute(labels, topk[:, 0], score, topk, names, ["top5_accuracy"])
    assert doc["top5Accuracy"] == pytest.approx(metrics.top_k_accuracy(labels, topk, 5))
    assert "top5Omitted" not in doc
    # A 5-class model over the same dataset labels: left out.
    few = metrics.compute(labels, topk[:, 0], score, topk, names, ["top5_accuracy"],
                          model_classes=5)  # fmt: skip
    assert "top5Accuracy" not in few and "5 classes" in few["top5Omitted"]
    # Too few kept per prediction for a model with more classes: null, as before.
    short = metrics.compute(labels, topk[:, 0], score, None, names, ["top5_accuracy"])
    assert short["top5Accuracy"] is None


def test_predictions_outside_the_dataset_labels_are_wrong_and_add_no_class() -> None:
    """A model label the dataset lacks has id >= len(labels): it counts as wrong, lowers the
    true class's recall, and adds no class, column or precision (scikit-learn with the
    dataset's labels, averaged over the classes seen)."""
    rng = np.random.default_rng(5)
    n, classes = 400, 4
    labels = rng.integers(0, classes, n)
    predicted = np.where(rng.random(n) < 0.6, labels, rng.integers(0, classes + 2, n))
    score = rng.uniform(0, 1, n).astype(np.float32)
    names = ["a", "b", "c", "d"]
    doc = metrics.compute(labels, predicted, score, None, names, list(ALL_METRICS))
    outside = predicted >= classes
    assert outside.any() and doc["predictedOutsideLabels"] == int(outside.sum())
    assert doc["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    cm = np.array(doc["confusionMatrix"])
    assert cm.shape == (4, 4) and cm.sum() == n - outside.sum()
    np.testing.assert_array_equal(
        cm, skm.confusion_matrix(labels, predicted, labels=range(classes))
    )
    assert [c["label"] for c in doc["perClass"]] == names and doc["labels"] == names
    prec, rec, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=range(classes), zero_division=0
    )
    per_class = doc["perClass"]
    np.testing.assert_allclose([c["precision"] for c in per_class], prec)
    np.testing.assert_allclose([c["recall"] for c in per_class], rec)
    np.testing.assert_allclose([c["f1"] for c in per_class], f1)
    assert [c["support"] for c in per_class] == support.tolist()
    assert doc["macro"]["f1"] == pytest.approx(
        skm.f1_score(labels, predicted, labels=range(classes), average="macro", zero_division=0)
    )


def test_true_labels_outside_the_labels_are_refused() -> None:
    with pytest.raises(ValueError):
        metrics.compute(np.array([0, 4]), np.array([0, 1]), np.ones(2), None, ["a", "b"], [])
