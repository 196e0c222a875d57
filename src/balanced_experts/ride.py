"""RIDE's training loss (Wang et al., ICLR 2021): per expert, an LDAM-DRW loss and a diversity term.

As ``RIDELoss`` in frank-xwang/RIDE-LongTailRecognition (``model/loss.py``) computes it, for
a batch with the experts' logits ``z_k`` (``N x E x C`` from :class:`.multi_expert.MultiExpertNet`,
already ``scale * cos``) and their mean ``z̄``, summed over the experts ``k``:

- **individual loss**: LDAM on ``z_k``: the target logit lowered by ``scale * m_y``, margins
  ``m_c ∝ n_c^(-1/4)`` with the largest ``max_margin`` (0.5); cross-entropy, from the
  deferral epoch on with the class-balanced weights of the effective number
  (``(1 - β) / (1 - β^n_c)``, β = 0.9999, normalised to sum to C) as a weighted mean (DRW).
- **diversity loss**: ``diversity_factor * T̄² * KL(softmax(z̄ / T) || softmax(z_k / T))``
  (batch mean), the mean distribution held constant (no gradient). The factor is negative:
  the experts are pushed apart. ``T`` is ``diversity_temperature`` (1) before the deferral
  epoch; from it on it is per class, ``diversity_temperature * t_c`` with
  ``t_c ∝ C π_c r + 1 - r`` (``r = reweight_factor``) scaled to a largest value of 1: the
  tail classes are compared at a lower temperature. ``T̄`` is the mean of ``T`` over classes.

Defaults: ``RIDELoss``'s own (``additional_diversity_factor`` -0.2, ``reweight_factor`` 0.05).
Its configs set -0.45 / 0.05 for CIFAR-100-LT, -0.2 / 0.02 for ImageNet-LT (ResNet-10,
ResNet-50, ResNeXt-50), -0.2 / 0.015 for iNaturalist, and defer at epoch 160 of 200 (CIFAR)
or 80 of 100 (the others): ``drw_start`` 0.8; their trainer counts epochs from 1, as
:func:`.training.fit` does, and reweights when ``epoch > reweight_epoch`` (161-200 of 200),
as LDAM-DRW's peer (``ldam.deferred_epochs``). The expert-assignment router (RIDE's
second stage) is not built: a model trained with this loss is "RIDE without router", every
expert scoring every image.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .baselines import train_prior
from .ldam import checked_counts, class_balanced_weights, class_margins, deferred_epochs, ldam_loss
from .training import Criterion

DEFAULTS = {"diversity_factor": -0.2, "diversity_temperature": 1.0, "reweight_factor": 0.05, "max_margin": 0.5,
            "drw_start": 0.8, "drw_beta": 0.9999}
"""RIDE's loss settings, as ``RIDELoss``'s defaults (and ``reweight_epoch`` 80 of 100)."""


# -- RIDE ---------------------------------------------------------------------------------

def diversity_temperatures(train_counts, reweight_factor: float) -> np.ndarray:
    """RIDE's per-class temperature factors ``C π_c r + 1 - r``, scaled to a largest value of 1."""
    prior = np.asarray(train_counts, dtype=np.float64)
    prior = prior / prior.sum()
    factors = len(prior) * prior * reweight_factor + 1.0 - reweight_factor
    if not np.all(factors > 0):
        raise ValueError(f"reweight_factor {reweight_factor} is too large: a class's diversity temperature is <= 0")
    return factors / factors.max()


def ride_loss(train_counts, epochs: int, scale: float, diversity_factor: float = DEFAULTS["diversity_factor"],
              diversity_temperature: float = DEFAULTS["diversity_temperature"],
              reweight_factor: float = DEFAULTS["reweight_factor"], max_margin: float = DEFAULTS["max_margin"],
              drw_start: float = DEFAULTS["drw_start"], drw_beta: float = DEFAULTS["drw_beta"]
              ) -> Callable[[int], Criterion]:
    """``loss_for_epoch(epoch) -> criterion(outputs, targets)``: RIDE's loss of a batch, ``outputs``
    the experts' logits ``N x E x C`` (scaled by the cosine classifier's ``scale``, which sets
    the margins' scale too), ``targets`` N class ids. ``epochs``: the schedule's length; epoch
    ``e`` (1, 2, ...) is re-weighted when ``e > deferred_epochs(epochs, drw_start)``."""
    counts = checked_counts(train_counts)
    margins = torch.tensor(scale * class_margins(counts, max_margin), dtype=torch.float32)
    drw_weights = torch.tensor(class_balanced_weights(counts, drw_beta), dtype=torch.float32)
    temperatures = torch.tensor(diversity_temperature * diversity_temperatures(counts, reweight_factor),
                                dtype=torch.float32)
    deferred = deferred_epochs(epochs, drw_start)

    def loss_for_epoch(epoch: int) -> Criterion:
        reweighted = epoch > deferred
        # T̄ as a number, once per epoch: no device-to-host copy per batch.
        mean_temperature = float(temperatures.mean()) if reweighted else diversity_temperature

        def criterion(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            device = outputs.device
            weight = drw_weights.to(device) if reweighted else None
            temperature = temperatures.to(device)[None, :] if reweighted else diversity_temperature
            with torch.no_grad():
                mean_distribution = F.softmax(outputs.mean(1) / temperature, dim=1)
            total = outputs.new_zeros(())
            for k in range(outputs.shape[1]):
                logits = outputs[:, k]
                total = total + ldam_loss(logits, targets, margins.to(device), weight)
                divergence = F.kl_div(F.log_softmax(logits / temperature, dim=1), mean_distribution,
                                      reduction="batchmean")
                total = total + diversity_factor * mean_temperature ** 2 * divergence
            return total

        return criterion

    return loss_for_epoch


def ride_prior(train_counts, epoch: int, epochs: int, drw_start: float = DEFAULTS["drw_start"],
               drw_beta: float = DEFAULTS["drw_beta"]) -> np.ndarray:
    """The class prior the probabilities of the experts' mean carry (for the shift table's
    prior adaptation), of the weights kept after ``epoch`` of an ``epochs``-epoch run: each
    expert's individual loss is LDAM-DRW's, so LDAM-DRW's (``peers.LdamDrw.prior``):
    the training prior before the deferral, ``n_c w_c`` normalised after it; the mean of
    logits that carry one prior carries it too. The diversity term sets no prior."""
    counts = checked_counts(train_counts)
    if epoch <= deferred_epochs(epochs, drw_start):
        return train_prior(counts)
    mass = counts * class_balanced_weights(counts, drw_beta)
    return mass / mass.sum()
