"""Post-hoc baselines on the cached base model: logit adjustment and tau-normalisation.

Both are computed from the base model's logits and classifier weights alone, so they cost
nothing beyond the base model, and their tau is chosen on the validation set.

* Logit adjustment (Menon et al., ICLR 2021): ``z_c - tau * log pi_c``, with ``pi`` the
  training class prior.
* tau-normalisation (Kang et al., ICLR 2020): the classifier weight of class ``c`` is divided
  by ``||w_c||^tau``. From cached logits ``z_c = f . w_c + b_c`` this is
  ``(z_c - b_c) / ||w_c||^tau``; like Kang et al.'s bias-free classifier, the bias is dropped.
"""

from __future__ import annotations

import numpy as np

TAU_GRID = np.round(np.arange(0.0, 2.0001, 0.05), 2)
"""The values of tau tried on the validation set."""


def train_prior(train_counts) -> np.ndarray:
    """The training set's class prior ``n_c / N``."""
    counts = np.asarray(train_counts, dtype=np.float64)
    return counts / counts.sum()


def log_prior(train_counts) -> np.ndarray:
    return np.log(train_prior(train_counts))


def logit_adjusted(logits, train_counts, tau: float) -> np.ndarray:
    return np.asarray(logits, dtype=np.float64) - tau * log_prior(train_counts)[None, :]


def weight_norms(weight) -> np.ndarray:
    """The norm of each class's classifier weight (a row of ``weight``)."""
    return np.linalg.norm(np.asarray(weight, dtype=np.float64), axis=1)


def tau_normalised(logits, weight, bias, tau: float, norms=None) -> np.ndarray:
    """``norms``: :func:`weight_norms` of ``weight``, where the caller has them already."""
    norms = weight_norms(weight) if norms is None else norms
    return (np.asarray(logits, dtype=np.float64) - np.asarray(bias)[None, :]) / norms[None, :] ** tau


def choose_tau(transform, val_logits, val_labels, grid=TAU_GRID, block_rows: int | None = None) -> tuple[float, float]:
    """The tau of ``grid`` with the best validation accuracy (the smallest on ties), and that accuracy.

    ``transform(logits, tau)`` works row by row; it is given ``block_rows`` rows at a time
    (all at once by default), which bounds its copies, not the result."""
    val_labels = np.asarray(val_labels)
    total = len(val_labels)
    block_rows = max(1, block_rows or total)
    hits = np.zeros(len(grid), dtype=np.int64)
    for start in range(0, total, block_rows):
        rows = slice(start, start + block_rows)
        for index, tau in enumerate(grid):
            hits[index] += int((transform(val_logits[rows], tau).argmax(1) == val_labels[rows]).sum())
    best_tau, best_acc = float(grid[0]), -1.0
    for tau, count in zip(grid, hits):
        acc = int(count) / total if total else float("nan")  # the mean of the hits, as numpy's
        if acc > best_acc:
            best_tau, best_acc = float(tau), acc
    return best_tau, 100.0 * best_acc


def softmax(logits) -> np.ndarray:
    """Row-wise softmax in float64, computed in one new array (``logits`` is left as it is)."""
    e = np.array(logits, dtype=np.float64)
    e -= e.max(1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(1, keepdims=True)
    return e
