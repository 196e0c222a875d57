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
or 80 of 100 (the others): ``drw_fraction`` 0.8 (reweighted from epoch ``0.8 E + 1``, the
epochs counted from 1 as :func:`.training.fit` does, as ``epoch > reweight_epoch`` in
RIDE's trainer). The expert-assignment router (RIDE's second stage) is not built: a model
trained with this loss is "RIDE without router", every expert scoring every image.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULTS = {"diversity_factor": -0.2, "diversity_temperature": 1.0, "reweight_factor": 0.05, "max_margin": 0.5,
            "drw_fraction": 0.8, "beta": 0.9999}
"""RIDE's loss settings, as ``RIDELoss``'s defaults (and ``reweight_epoch`` 80 of 100)."""


def ldam_margins(train_counts, max_margin: float) -> np.ndarray:
    """LDAM's per-class margins ``m_c ∝ n_c^(-1/4)``, the largest ``max_margin``."""
    margins = 1.0 / np.sqrt(np.sqrt(np.asarray(train_counts, dtype=np.float64)))
    return margins * (max_margin / margins.max())


def class_balanced_weights(train_counts, beta: float) -> np.ndarray:
    """Class-balanced weights of the effective number ``(1 - β) / (1 - β^n_c)``, summing to C."""
    counts = np.asarray(train_counts, dtype=np.float64)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights / weights.sum() * len(counts)


def first_reweighted_epoch(epochs: int, fraction: float) -> int:
    """The first epoch (counted from 1) of the deferred re-weighting: ``floor(fraction * epochs) + 1``
    (epoch 161 of 200 at 0.8, as LDAM-DRW's and RIDE's ``epoch > 160``)."""
    return int(fraction * epochs + 1e-9) + 1


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
              drw_fraction: float = DEFAULTS["drw_fraction"], beta: float = DEFAULTS["beta"]
              ) -> Callable[[int], Criterion]:
    """``loss_for_epoch(epoch) -> criterion(outputs, targets)``: RIDE's loss of a batch, ``outputs``
    the experts' logits ``N x E x C`` (scaled by the cosine classifier's ``scale``, which sets
    the margins' scale too), ``targets`` N class ids. ``epochs``: the schedule's length."""
    margins = torch.tensor(ldam_margins(train_counts, max_margin) * scale, dtype=torch.float32)
    drw_weights = torch.tensor(class_balanced_weights(train_counts, beta), dtype=torch.float32)
    temperatures = torch.tensor(diversity_temperature * diversity_temperatures(train_counts, reweight_factor),
                                dtype=torch.float32)
    first = first_reweighted_epoch(epochs, drw_fraction)

    def loss_for_epoch(epoch: int) -> Criterion:
        reweighted = epoch >= first
        # T̄ as a number, once per epoch: no device-to-host copy per batch.
        mean_temperature = float(temperatures.mean()) if reweighted else diversity_temperature

        def criterion(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            device = outputs.device
            weight = drw_weights.to(device) if reweighted else None
            temperature = temperatures.to(device)[None, :] if reweighted else diversity_temperature
            target_margin = F.one_hot(targets, outputs.shape[2]) * margins.to(device)[targets][:, None]
            with torch.no_grad():
                mean_distribution = F.softmax(outputs.mean(1) / temperature, dim=1)
            total = outputs.new_zeros(())
            for k in range(outputs.shape[1]):
                logits = outputs[:, k]
                total = total + F.cross_entropy(logits - target_margin, targets, weight=weight)
                divergence = F.kl_div(F.log_softmax(logits / temperature, dim=1), mean_distribution,
                                      reduction="batchmean")
                total = total + diversity_factor * mean_temperature ** 2 * divergence
            return total

        return criterion

    return loss_for_epoch
