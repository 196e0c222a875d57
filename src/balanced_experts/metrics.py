"""Four-fold top-1 accuracy: Many / Medium / Few / All."""

from __future__ import annotations

import numpy as np

from . import SPLIT_NAMES


def per_class_accuracy(predictions, labels, num_classes: int) -> np.ndarray:
    """Top-1 accuracy (%) of each class; NaN for a class with no samples."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    totals = np.bincount(labels, minlength=num_classes).astype(float)
    hits = np.bincount(labels[predictions == labels], minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * hits / totals, np.nan)


def four_fold_accuracy(predictions, labels, class_split) -> dict[str, float]:
    """Accuracy (%) over the test samples of each class split, and over all of them.

    ``class_split[c]`` is ``"many"``, ``"medium"`` or ``"few"``. Each fold is the accuracy
    over the samples whose true class lies in that split (the OLTR convention; on a balanced
    test set it equals the mean per-class accuracy). A split with no samples gives NaN.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    class_split = np.asarray(class_split, dtype=object)
    correct = predictions == labels
    sample_split = class_split[labels]
    out = {}
    for name in SPLIT_NAMES:
        mask = sample_split == name
        out[name] = 100.0 * correct[mask].mean() if mask.any() else float("nan")
    out["all"] = 100.0 * correct.mean()
    return out


def negative_log_likelihood(probs, labels, eps: float = 1e-12) -> float:
    """Mean ``-log p(true class)``; probabilities are clipped at ``eps`` so a zero gives a finite value."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    return negative_log_likelihood_of(probs[np.arange(len(labels)), labels], eps)


def negative_log_likelihood_of(true_probs, eps: float = 1e-12) -> float:
    """:func:`negative_log_likelihood` from each sample's probability of its true class."""
    return float(-np.log(np.clip(np.asarray(true_probs, dtype=np.float64), eps, None)).mean())


def reliability_bins(confidence, correct, bins: int = 15):
    """Per confidence bin (equal width on [0, 1]): count, mean confidence and accuracy.

    ``confidence`` is the top-1 probability of each sample, ``correct`` whether the top-1
    is the true class. Bin ``b`` holds confidences in ``(b/bins, (b+1)/bins]``.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return count, mean_conf, accuracy


def binned_calibration_error(count, mean_conf, accuracy) -> float:
    """ECE (%) from :func:`reliability_bins`: the count-weighted mean |confidence - accuracy|."""
    used = count > 0
    return float(100.0 * np.sum(count[used] * np.abs(mean_conf[used] - accuracy[used])) / count.sum())


def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """ECE (%) of the top-1 prediction of ``probs`` (N x C) against ``labels``."""
    probs = np.asarray(probs, dtype=np.float64)
    correct = probs.argmax(1) == np.asarray(labels)
    return binned_calibration_error(*reliability_bins(probs.max(1), correct, bins))
