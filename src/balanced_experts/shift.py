"""Accuracy under shifted test label distributions, plain and with prior adaptation.

The balanced test set scores every class equally. A deployed classifier meets other label
distributions: the training set's own long tail, or its reverse. The test-agnostic protocol
(Zhang et al., SADE, NeurIPS 2022) scores a method on *forward* long-tailed test
distributions (the training order: the most frequent training class is the most frequent
test class), the *uniform* one, and *backward* ones (the order reversed), at imbalance
ratios 2, 5, 10, 25 and 50. Class ``c`` at rank ``r_c`` (0 = most training images; ties
by class id) gets weight ``rho ** (-r_c / (C - 1))`` forward and ``rho ** (-(C - 1 - r_c) /
(C - 1))`` backward, normalised to sum to 1 (SADE's exponential profile).

No new test images are needed: with per-class accuracies ``a_c`` measured on the balanced
test set, the expected top-1 accuracy under label distribution ``pi`` is ``sum_c pi_c a_c``.
The uniform distribution therefore reproduces the balanced test accuracy.

*Prior adaptation* re-targets a method's predictions to the known test prior: add
``log(pi_test / pi_assumed)`` to its log-probabilities and predict again, where
``pi_assumed`` is the class prior the method's probabilities carry (:func:`assumed_prior`).
This is the Bayes-optimal correction when the probabilities are right up to the prior.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import SPLIT_NAMES
from .baselines import train_prior
from .metrics import per_class_accuracy

IMBALANCES = (50, 25, 10, 5, 2)
DISTRIBUTIONS: tuple[tuple[str, float], ...] = (
    tuple(("forward", rho) for rho in IMBALANCES)
    + (("uniform", 1),)
    + tuple(("backward", rho) for rho in reversed(IMBALANCES))
)
"""Every test distribution scored, in plotting order: forward 50 ... uniform ... backward 50."""

SHIFT_COLUMNS = ["method", "distribution", "imbalance", "accuracy", "accuracy_adapted"]


def frequency_rank(train_counts) -> np.ndarray:
    """Rank of each class by training count: 0 for the most frequent, ties by class id."""
    counts = np.asarray(train_counts)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(len(counts), dtype=np.int64)
    rank[order] = np.arange(len(counts))
    return rank


def shifted_prior(train_counts, distribution: str, imbalance: float) -> np.ndarray:
    """The class prior of one test distribution (sums to 1)."""
    rank = frequency_rank(train_counts).astype(np.float64)
    last = max(len(rank) - 1, 1)
    if distribution == "uniform":
        exponent = np.zeros_like(rank)
    elif distribution == "forward":
        exponent = rank / last
    elif distribution == "backward":
        exponent = (last - rank) / last
    else:
        raise ValueError(f"unknown test distribution {distribution!r}; known: forward, uniform, backward")
    weights = float(imbalance) ** (-exponent)
    return weights / weights.sum()


def expected_accuracy(class_accuracy, prior) -> float:
    """``sum_c prior_c * accuracy_c`` (%). Classes without test images (NaN accuracy) are
    left out and the prior is renormalised over the others."""
    accuracy, prior = np.asarray(class_accuracy, dtype=np.float64), np.asarray(prior, dtype=np.float64)
    present = ~np.isnan(accuracy)
    return float(np.sum(prior[present] * accuracy[present]) / np.sum(prior[present]))


def log_probabilities(probabilities) -> np.ndarray:
    with np.errstate(divide="ignore"):  # a probability that underflowed to 0 stays impossible
        return np.log(np.asarray(probabilities, dtype=np.float64))


def adapted_predictions(log_probs, target_prior, assumed_prior) -> np.ndarray:
    """Top-1 after adding ``log(target_prior / assumed_prior)`` to the log-probabilities."""
    shift = np.log(np.asarray(target_prior, dtype=np.float64)) - np.log(np.asarray(assumed_prior, dtype=np.float64))
    return (np.asarray(log_probs) + shift[None, :]).argmax(1)


def assumed_prior(method: str, train_counts, class_split, logit_adjustment_tau: float) -> np.ndarray:
    """The class prior a report method's probabilities carry.

    - ``base``: the training prior ``pi`` (plain cross-entropy on the long-tailed set).
    - ``base_logit_adjusted``: the logits ``z - tau log pi`` are those of a model trained
      under the prior ``pi^(1 - tau)`` (normalised): uniform for tau = 1.
    - ``base_tau_norm``, ``base_crt``, ``base_lws``: balanced classifiers (re-scaled
      weights; a classifier trained with class-balanced sampling): uniform.
    - ``experts_calibrated``: uniform: the calibration is fit by maximum likelihood on the
      balanced validation set, which sets every class's bias to the balanced prior.
    - ``experts_naive``, ``experts_prior``: each expert was trained on its split's images,
      so within a split its class probabilities carry that split's training prior
      ``n_c / N_split``; the fusion gives each expert one vote (its non-reject mass), so
      every split carries the same total mass, 1 / (number of splits).
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    if method == "base":
        return train_prior(counts)
    if method == "base_logit_adjusted":
        tempered = train_prior(counts) ** (1.0 - logit_adjustment_tau)
        return tempered / tempered.sum()
    if method in ("experts_naive", "experts_prior"):
        class_split = np.asarray(class_split, dtype=object)
        names = [name for name in SPLIT_NAMES if (class_split == name).any()]
        prior = np.zeros_like(counts)
        for name in names:
            members = class_split == name
            prior[members] = counts[members] / counts[members].sum() / len(names)
        return prior
    return np.full(len(counts), 1.0 / len(counts))


SHIFT_BLOCK_ROWS = 1024
"""Rows of probabilities :func:`shift_table` takes logarithms of at a time."""


def shift_predictions(probabilities, assumed_prior, train_counts) -> np.ndarray:
    """``(1 + len(DISTRIBUTIONS))`` x N top-1 predictions of ``probabilities`` (N x C, a
    method's, carrying ``assumed_prior``): as predicted, then adapted to each distribution's
    prior. Rows are independent: a block of rows gives those rows' predictions."""
    log_probs = log_probabilities(probabilities)
    out = np.empty((1 + len(DISTRIBUTIONS), len(log_probs)), dtype=np.int64)
    out[0] = log_probs.argmax(1)
    for index, (distribution, imbalance) in enumerate(DISTRIBUTIONS, start=1):
        out[index] = adapted_predictions(log_probs, shifted_prior(train_counts, distribution, imbalance),
                                         assumed_prior)
    return out


def shift_rows(method: str, predictions, labels, train_counts) -> pd.DataFrame:
    """The rows of ``method`` of the shift table (``SHIFT_COLUMNS``) from its
    :func:`shift_predictions` on the balanced test set of ``labels``."""
    labels = np.asarray(labels)
    num_classes = len(train_counts)
    plain = per_class_accuracy(predictions[0], labels, num_classes)
    rows = []
    for (distribution, imbalance), adapted_pred in zip(DISTRIBUTIONS, predictions[1:]):
        prior = shifted_prior(train_counts, distribution, imbalance)
        adapted = per_class_accuracy(adapted_pred, labels, num_classes)
        rows.append({"method": method, "distribution": distribution, "imbalance": imbalance,
                     "accuracy": expected_accuracy(plain, prior),
                     "accuracy_adapted": expected_accuracy(adapted, prior)})
    return pd.DataFrame(rows, columns=SHIFT_COLUMNS)


def shift_table(probabilities: dict, assumed_priors: dict, labels, train_counts,
                block_rows: int = SHIFT_BLOCK_ROWS) -> pd.DataFrame:
    """Expected accuracy (%) of every method under every test distribution, plain and
    adapted to that distribution's prior. ``probabilities[method]`` is N x C over the
    balanced test set, ``assumed_priors[method]`` the prior it carries. The methods' rows
    are independent: the table of several methods is their tables, concatenated in order.
    ``block_rows`` rows are taken at a time (the same table for any block size)."""
    block_rows = max(1, block_rows)
    frames = []
    for method, probs in probabilities.items():
        probs = np.asarray(probs)
        predictions = np.concatenate(
            [shift_predictions(probs[start:start + block_rows], assumed_priors[method], train_counts)
             for start in range(0, max(len(probs), 1), block_rows)], axis=1)
        frames.append(shift_rows(method, predictions, labels, train_counts))
    if not frames:
        return pd.DataFrame([], columns=SHIFT_COLUMNS)
    return pd.concat(frames, ignore_index=True)
