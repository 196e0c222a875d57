"""LDAM-DRW's parts (Cao et al., NeurIPS 2019): the label-distribution-aware margins, the LDAM
loss, the class-balanced weights of the effective number (Cui et al., CVPR 2019) and the
deferral of the re-weighting. The LDAM-DRW peer (:mod:`.peers`) and RIDE's loss (:mod:`.ride`)
are built of them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def checked_counts(train_counts) -> np.ndarray:
    counts = np.asarray(train_counts, dtype=np.float64)
    empty = np.flatnonzero(counts <= 0)
    if empty.size:
        raise ValueError(f"classes {empty[:20].tolist()} have no training images: their margins, weights "
                         f"and log prior are undefined")
    return counts


def class_margins(train_counts, max_margin: float) -> np.ndarray:
    """LDAM's margins ``C / n_c^(1/4)``, ``C`` chosen so that the largest (the rarest class's)
    is ``max_margin``."""
    margins = checked_counts(train_counts) ** -0.25
    return margins * (max_margin / margins.max())


def class_balanced_weights(train_counts, beta: float) -> np.ndarray:
    """Class-balanced weights from the effective number of samples (Cui et al. 2019):
    ``(1 - beta) / (1 - beta^n_c)``, normalised to sum to the number of classes (as
    LDAM-DRW's code does). ``beta = 0`` gives 1 for every class."""
    counts = checked_counts(train_counts)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights * (len(counts) / weights.sum())


def ldam_loss(logits: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy after subtracting ``margins[y]`` from each sample's true-class logit.

    ``margins`` are in logit units (LDAM's margins times the classifier's scale, which the
    logits already carry). With ``weight``, torch's weighted mean: ``sum_i w_{y_i} l_i /
    sum_i w_{y_i}`` over the batch, as LDAM-DRW's code computes it.
    """
    margin = torch.zeros_like(logits).scatter_(1, targets[:, None], margins[targets][:, None])
    return nn.functional.cross_entropy(logits - margin, targets, weight=weight)


def deferred_epochs(epochs: int, fraction: float) -> int:
    """The number of epochs DRW trains without weights: ``fraction * epochs`` to the nearest
    whole epoch (halves up); 160 of 200 at the paper's 0.8. Epoch ``e`` (1, 2, ...) is
    re-weighted when ``e > deferred_epochs(epochs, fraction)``."""
    return int(math.floor(fraction * epochs + 0.5))
