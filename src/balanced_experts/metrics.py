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
