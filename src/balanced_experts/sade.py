"""SADE (Zhang et al., NeurIPS 2022): skill-diverse experts and their test-time aggregation.

**Training** (``DiverseExpertLoss`` in Vanint/SADE-AgnosticLT, ``model/loss.py``): three
experts on one :class:`.multi_expert.MultiExpertNet`, the batch's loss the sum of

1. softmax cross-entropy on expert 1's logits (it learns the long-tailed training prior:
   the *forward* expert);
2. balanced softmax on expert 2's: cross-entropy on ``z + log π`` (the *uniform* expert);
3. the inverse softmax on expert 3's: cross-entropy on ``z + log π - λ log π̃`` (the
   *backward* expert), with ``π̃`` the prior in reversed order (the most frequent class
   gets the rarest class's share) and λ (their configs' ``tau``) 2 for CIFAR-100-LT and
   ImageNet-LT, 1 for Places-LT and iNaturalist.

The model's logits are the experts' mean: its prediction on the balanced test set.

**Test-time aggregation** (their ``test_training_*.py``): on the *unlabeled* images of a test
set, learn weights ``w = softmax(v)`` of the experts' logits, ``Σ_k w_k z_k``, that maximise
the prediction stability, the mean cosine similarity of the aggregated softmax of two
augmented views of each image; ``v`` starts at 1/3 each (equal weights); SGD (their
training lr, momentum 0.9, weight decay 5e-4, Nesterov), batch 128, 5 epochs, stopping
after an epoch that leaves an expert a weight (rounded to 2 decimals) under 0.05. The
experts themselves stay fixed (eval mode), so each view's logits are computed once and
reused (:func:`learn_aggregation` takes them precomputed). The aggregated model then scores
that test set. It uses no label and not the test set's prior.

**Shifted test sets**: SADE draws each test distribution's images from the test set, as many
of each class as its share relative to the most frequent class allows
(:func:`shifted_counts`); :func:`shifted_test_sets` draws them for every distribution of
:data:`.shift.DISTRIBUTIONS`, seeded. Their accuracy estimates what :mod:`.shift` computes by
reweighting the balanced per-class accuracies (:func:`drawn_accuracy_moments`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .baselines import train_prior
from .logits import predict
from .shift import DISTRIBUTIONS, frequency_rank, shifted_prior
from .training import Criterion


NUM_EXPERTS = 3
"""SADE's experts: forward (softmax), uniform (balanced softmax), backward (inverse softmax)."""

INVERSE_PRIOR_POWER = 2.0
"""λ of the backward expert's loss in SADE's CIFAR-100-LT and ImageNet-LT configs (``tau: 2``)."""

_EPS = 1e-9  # inside SADE's logarithms of the priors


def inverse_prior(train_counts) -> np.ndarray:
    """The training prior in reversed frequency order: the class of frequency rank ``r`` gets
    the prior of the class of rank ``C - 1 - r`` (ranks of :func:`.shift.frequency_rank`)."""
    prior = train_prior(train_counts)
    rank = frequency_rank(train_counts)
    by_rank = np.sort(prior)[::-1]
    return by_rank[len(prior) - 1 - rank]


def expert_logit_adjustments(train_counts, inverse_prior_power: float = INVERSE_PRIOR_POWER) -> np.ndarray:
    """What each expert's loss adds to its logits (``3 x C``): nothing; ``log π``;
    ``log π - λ log π̃``."""
    log_prior = np.log(train_prior(train_counts) + _EPS)
    log_inverse = np.log(inverse_prior(train_counts) + _EPS)
    return np.stack([np.zeros_like(log_prior), log_prior, log_prior - inverse_prior_power * log_inverse])


def sade_prior(train_counts, inverse_prior_power: float = INVERSE_PRIOR_POWER) -> np.ndarray:
    """The class prior the probabilities of the experts' mean carry (for the shift table's
    prior adaptation): expert k's softmax, fitted by its loss, carries ``π``, uniform and
    ``∝ π̃^λ``; their logits are the balanced ones plus those log priors (up to constants), so
    the mean of the logits carries the geometric mean ``(π π̃^λ)^(1/3)``, normalised. For
    λ = 1 that is uniform; for λ = 2 and an exponential profile of imbalance ρ, a backward
    one of imbalance ρ^(1/3)."""
    log_priors = expert_logit_adjustments(train_counts, inverse_prior_power)  # 0, log π, log π - λ log π̃
    carried = -(log_priors - log_priors[1]).mean(0)  # the experts' own log priors log π, 0, λ log π̃: their mean
    prior = np.exp(carried - carried.max())
    return prior / prior.sum()


def sade_loss(train_counts, inverse_prior_power: float = INVERSE_PRIOR_POWER) -> Callable[[int], Criterion]:
    """``loss_for_epoch(epoch) -> criterion(outputs, targets)`` (the same every epoch): SADE's
    loss of a batch, ``outputs`` the three experts' logits ``N x 3 x C``."""
    adjustments = torch.tensor(expert_logit_adjustments(train_counts, inverse_prior_power), dtype=torch.float32)

    def criterion(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.dim() != 3 or outputs.shape[1] != NUM_EXPERTS:
            raise ValueError(f"SADE's loss needs the logits of {NUM_EXPERTS} experts (N x {NUM_EXPERTS} x C), "
                             f"got {tuple(outputs.shape)}")
        adjusted = outputs + adjustments.to(outputs.device)[None]
        return sum(F.cross_entropy(adjusted[:, k], targets) for k in range(NUM_EXPERTS))

    return lambda epoch: criterion


# ---------------------------------------------------------------------------
# Test-time self-supervised aggregation

@dataclass(frozen=True)
class AggregationSettings:
    """SADE's test-time training: their ``test_time_*.json`` configs (lr: the dataset's
    training lr, 0.1 for CIFAR-100-LT, 0.025 ImageNet-LT, 0.01 Places-LT)."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    min_weight: float = 0.05  # an epoch that leaves an expert less (rounded to 2 decimals) ends it
    seed: int = 0  # the order of the images in each epoch

    @classmethod
    def from_config(cls, cfg: dict | None) -> "AggregationSettings":
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown test-time aggregation setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**cfg)


@dataclass
class Aggregation:
    weights: np.ndarray  # E, summing to 1
    epochs_run: int
    stability: list[float] = field(default_factory=list)  # mean cosine similarity of the views, per epoch


def aggregate(expert_logits, weights) -> np.ndarray:
    """``Σ_k w_k z_k``: ``N x E x C`` logits and ``E`` weights to ``N x C`` logits."""
    return np.einsum("nec,e->nc", np.asarray(expert_logits, dtype=np.float64), np.asarray(weights, dtype=np.float64))


def learn_aggregation(view_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                      settings: AggregationSettings = AggregationSettings()) -> Aggregation:
    """SADE's aggregation weights from the experts' logits on two augmented views of the same
    unlabeled images: ``view_pairs[j]`` is ``(view 1, view 2)``, each ``N x E x C``, row ``i``
    the same image. Epoch ``e`` uses pair ``e mod len(view_pairs)``: one pair is reused every
    epoch; SADE draws new views every epoch (pass one pair per epoch to do the same)."""
    pairs = [(torch.as_tensor(np.asarray(a), dtype=torch.float32), torch.as_tensor(np.asarray(b), dtype=torch.float32))
             for a, b in view_pairs]
    if not pairs or any(a.shape != b.shape or a.dim() != 3 for a, b in pairs) or len({a.shape for a, _ in pairs}) > 1:
        raise ValueError("view_pairs must be one or more pairs of equally shaped N x E x C logits")
    count, num_experts, _ = pairs[0][0].shape
    raw = nn.Parameter(torch.full((num_experts,), 1.0 / num_experts))
    optimizer = torch.optim.SGD([raw], lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay, nesterov=settings.nesterov)
    generator = torch.Generator().manual_seed(settings.seed)
    stability, epochs_run = [], 0
    for epoch in range(settings.epochs):
        first, second = pairs[epoch % len(pairs)]
        order = torch.randperm(count, generator=generator)
        total = 0.0
        for start in range(0, count, settings.batch_size):
            rows = order[start:start + settings.batch_size]
            weights = torch.softmax(raw, dim=0)[None, :, None]
            probs = [torch.softmax((weights * view[rows]).sum(1), dim=1) for view in (first, second)]
            similarity = F.cosine_similarity(probs[0], probs[1], dim=1, eps=1e-6).mean()
            optimizer.zero_grad(set_to_none=True)
            (-similarity).backward()
            optimizer.step()
            total += similarity.item() * len(rows)
        stability.append(total / count)
        epochs_run = epoch + 1
        if (np.round(torch.softmax(raw.detach(), 0).numpy(), 2) < settings.min_weight).any():
            break
    weights = torch.softmax(raw.detach(), 0).double().numpy()
    return Aggregation(weights=weights, epochs_run=epochs_run, stability=stability)


class _Flat(nn.Module):
    """A multi-expert model's ``N x E x C`` logits as ``N x E*C`` rows, for :func:`.logits.predict`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).flatten(1)


def expert_logits(model: nn.Module, batches: Iterable, num_samples: int, amp: bool = False) -> np.ndarray:
    """Every expert's logits of ``batches`` (``N x E x C``, float32), the model in eval mode.
    For the views, the batches are the test images augmented as for training, in list order
    (``ImageSource.batches(..., train=True, shuffle=False)``): one call per view."""
    shape = (model.num_experts, model.num_outputs)
    flat = predict(_Flat(model), batches, num_samples, shape[0] * shape[1], amp=amp)
    return flat.reshape(num_samples, *shape)


# ---------------------------------------------------------------------------
# Shifted test sets drawn from the test images

def shifted_counts(available, prior) -> np.ndarray:
    """Images per class of a test set drawn for ``prior`` from ``available`` images per class:
    ``floor(s * prior_c / max prior)`` with the largest ``s`` every class can supply (the number
    of test images per class when they are balanced), as SADE's shifted CIFAR and ImageNet-LT
    test sets are built. Classes with no test image get none."""
    available = np.asarray(available, dtype=np.int64)
    ratio = np.asarray(prior, dtype=np.float64) / np.max(prior)
    present = available > 0
    scale = np.min(available[present] / ratio[present])
    return np.where(present, np.floor(scale * ratio + 1e-9), 0).astype(np.int64)


def draw_shifted_test_set(labels, prior, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of a test set drawn from ``labels`` for ``prior``: per class
    :func:`shifted_counts` images, a uniform draw without replacement."""
    labels = np.asarray(labels)
    available = np.bincount(labels, minlength=len(prior))
    counts = shifted_counts(available, prior)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(n), replace=False)
              for c, n in enumerate(counts) if n > 0]
    return np.sort(np.concatenate(chosen))


_DIRECTIONS = tuple(dict.fromkeys(name for name, _ in DISTRIBUTIONS))  # forward, uniform, backward


def shifted_test_sets(labels, train_counts, seed: int) -> list[tuple[str, float, np.ndarray]]:
    """``(distribution, imbalance, indices)`` for every test distribution of
    :data:`.shift.DISTRIBUTIONS`, each drawn from its own generator of ``seed``, the
    distribution and the imbalance (so one draw does not depend on which others are made)."""
    sets = []
    for distribution, imbalance in DISTRIBUTIONS:
        rng = np.random.default_rng([seed, _DIRECTIONS.index(distribution), int(imbalance)])
        prior = shifted_prior(train_counts, distribution, imbalance)
        sets.append((distribution, imbalance, draw_shifted_test_set(labels, prior, rng)))
    return sets


def drawn_accuracy_moments(class_accuracy, counts, available) -> tuple[float, float]:
    """Mean and standard deviation (%) of the accuracy on a drawn test set, for a fixed model
    with ``class_accuracy`` (%) on the ``available`` test images per class, ``counts`` drawn
    per class without replacement: per class the hits are hypergeometric. The mean is the
    reweighted accuracy ``Σ_c (n_c / N) a_c`` (:func:`.shift.expected_accuracy` with the
    drawn counts as the prior)."""
    accuracy = np.nan_to_num(np.asarray(class_accuracy, dtype=np.float64) / 100.0)
    counts, available = np.asarray(counts, dtype=np.float64), np.asarray(available, dtype=np.float64)
    total = counts.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = np.where(available > 1, (available - counts) / (available - 1), 0.0)
    variance = np.sum(counts * accuracy * (1 - accuracy) * finite)
    return float(100.0 * np.sum(counts * accuracy) / total), float(100.0 * np.sqrt(variance) / total)


AGNOSTIC_COLUMNS = ["distribution", "imbalance", "images", "accuracy", "accuracy_equal_weights", "epochs_run"]


def agnostic_shift_table(test_logits, view_pairs, labels, train_counts, seed: int,
                    settings: AggregationSettings = AggregationSettings()) -> pd.DataFrame:
    """SADE's test-agnostic row: for every test distribution, draw its test set
    (:func:`shifted_test_sets`), learn the aggregation weights on its images' views and score
    the aggregated logits on it (top-1 %, ``accuracy``; ``accuracy_equal_weights``: the model's
    own logits, the experts' mean, on the same images). ``test_logits`` (``N x E x C``, the
    un-augmented test images) and every view of ``view_pairs`` cover the whole test set, in
    the order of ``labels``; columns ``weight_<k>`` hold the learned weights."""
    test_logits, labels = np.asarray(test_logits), np.asarray(labels)
    rows = []
    for distribution, imbalance, indices in shifted_test_sets(labels, train_counts, seed):
        learned = learn_aggregation([(a[indices], b[indices]) for a, b in view_pairs], settings)
        truth = labels[indices]
        equal = np.full(test_logits.shape[1], 1.0 / test_logits.shape[1])
        row = {"distribution": distribution, "imbalance": imbalance, "images": len(indices),
               "accuracy": 100.0 * float(np.mean(aggregate(test_logits[indices], learned.weights).argmax(1) == truth)),
               "accuracy_equal_weights": 100.0 * float(np.mean(aggregate(test_logits[indices], equal).argmax(1)
                                                                == truth)),
               "epochs_run": learned.epochs_run}
        row.update({f"weight_{k}": float(w) for k, w in enumerate(learned.weights)})
        rows.append(row)
    weights = [f"weight_{k}" for k in range(test_logits.shape[1])]
    return pd.DataFrame(rows, columns=AGNOSTIC_COLUMNS + weights)
