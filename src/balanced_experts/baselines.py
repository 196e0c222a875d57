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


def tau_normalised(logits, weight, bias, tau: float) -> np.ndarray:
    norms = np.linalg.norm(np.asarray(weight, dtype=np.float64), axis=1)
    return (np.asarray(logits, dtype=np.float64) - np.asarray(bias)[None, :]) / norms[None, :] ** tau


def choose_tau(transform, val_logits, val_labels, grid=TAU_GRID) -> tuple[float, float]:
    """The tau of ``grid`` with the best validation accuracy (the smallest on ties), and that accuracy."""
    val_labels = np.asarray(val_labels)
    best_tau, best_acc = float(grid[0]), -1.0
    for tau in grid:
        acc = float((transform(val_logits, tau).argmax(1) == val_labels).mean())
        if acc > best_acc:
            best_tau, best_acc = float(tau), acc
    return best_tau, 100.0 * best_acc


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)
