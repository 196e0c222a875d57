"""Peer methods: the one-stage long-tailed methods the field lists next to every new one.

A peer is trained like the base model (the dataset's backbone, data, augmentation, seed and
training recipe) with its own loss, and is then scored like every other model. Each entry
of :data:`PEERS` is a frozen dataclass of the method's hyperparameters, at its paper's
defaults, that gives what the pipeline needs of it:

* :meth:`Peer.backbone`: the model's backbone config with the classifier head it needs;
* :meth:`Peer.loss`: ``loss(epoch) -> criterion(logits, targets)``, the argument ``loss``
  of :func:`balanced_experts.training.fit`;
* :meth:`Peer.prior`: the class prior its test-time probabilities carry (for prior
  adaptation in :mod:`balanced_experts.shift`).

The two peers:

* ``balanced_softmax`` (Ren et al., NeurIPS 2020): softmax cross-entropy on ``z + log pi``,
  with ``pi`` the training prior; the plain logits ``z`` at test time. A plain linear
  classifier; no hyperparameters.
* ``ldam_drw`` (Cao et al., NeurIPS 2019): a cosine classifier times the scale ``s``; the
  LDAM loss is cross-entropy after subtracting the class margin from the true class's
  cosine, ``m_c = C / n_c^(1/4)`` with ``C`` such that the largest margin is
  ``max_margin``; deferred re-weighting (DRW): after the first ``drw_start`` of the epochs,
  every sample's loss is weighted by its class's class-balanced weight
  ``(1 - beta) / (1 - beta^n_c)`` (Cui et al., CVPR 2019), the weights normalised to sum to
  the number of classes. Test time: the scaled cosines, no margin.

docs/METHOD.md (Peers) states what the papers leave out, what their code does, and where this
implementation deviates.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from .baselines import log_prior, train_prior
from .methods import PEER_SWITCH
from .training import Criterion

EpochLoss = Callable[[int], Criterion]
"""``loss(epoch)``: the criterion of each epoch (1, 2, ...), as fit's ``loss`` takes it."""

def checked_counts(train_counts) -> np.ndarray:
    counts = np.asarray(train_counts, dtype=np.float64)
    empty = np.flatnonzero(counts <= 0)
    if empty.size:
        raise ValueError(f"classes {empty[:20].tolist()} have no training images: their margins, weights "
                         f"and log prior are undefined")
    return counts


# -- the losses ---------------------------------------------------------------------------

def balanced_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(logits + log_prior)``: the softmax a model trained on
    the long-tailed set sees, when its plain logits are meant for the balanced one."""
    return nn.functional.cross_entropy(logits + log_prior, targets)


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


# -- the registry -------------------------------------------------------------------------

@dataclass(frozen=True)
class Peer(ABC):
    """A peer method; its fields are its hyperparameters, the defaults its paper's (its
    report row's description: balanced_experts.methods.PEER_METHODS)."""

    classifier: ClassVar[str]  # its model's head: one of models.CLASSIFIERS

    @classmethod
    def from_config(cls, cfg: dict | None, key: str) -> "Peer":
        """The settings of a ``peers.<name>`` config section (``key`` names it in errors);
        unset keys take the paper's defaults and ``enabled`` is left to the caller."""
        cfg = {k: v for k, v in (cfg or {}).items() if k != PEER_SWITCH}
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise ValueError(f"{key}: unknown key {', '.join(unknown)}; known: {', '.join([PEER_SWITCH, *known])}")
        return cls(**cfg)

    def backbone(self, backbone_cfg: dict) -> dict:
        """The backbone config of this peer's model: the dataset's, with its classifier head.
        It goes into the weights' metadata, from which :func:`balanced_experts.models.load_model`
        rebuilds the model."""
        return dict(backbone_cfg)

    @abstractmethod
    def loss(self, train_counts, epochs: int, device: torch.device | str = "cpu") -> EpochLoss:
        """``loss(epoch)``: the criterion of each epoch of an ``epochs``-epoch run."""

    @abstractmethod
    def prior(self, train_counts, epoch: int, epochs: int) -> np.ndarray:
        """The class prior the test-time probabilities of the weights kept after ``epoch``
        (the best epoch) of an ``epochs``-epoch run carry."""


@dataclass(frozen=True)
class BalancedSoftmax(Peer):
    """Balanced Softmax: no hyperparameters."""

    classifier: ClassVar[str] = "linear"

    def loss(self, train_counts, epochs: int, device: torch.device | str = "cpu") -> EpochLoss:
        shift = torch.as_tensor(log_prior(checked_counts(train_counts)), dtype=torch.float32, device=device)
        criterion = partial(balanced_softmax_loss, log_prior=shift)
        return lambda epoch: criterion

    def prior(self, train_counts, epoch: int, epochs: int) -> np.ndarray:
        """Uniform: ``softmax(z + log pi)`` is fit to the training labels, so it estimates the
        training posterior ``pi_y p(x|y) / p(x)``, and ``softmax(z)`` the balanced one."""
        counts = checked_counts(train_counts)
        return np.full(len(counts), 1.0 / len(counts))


@dataclass(frozen=True)
class LdamDrw(Peer):
    """LDAM-DRW, at the defaults of Cao et al.'s code (cifar_train.py)."""

    classifier: ClassVar[str] = "cosine"

    max_margin: float = 0.5  # the largest (rarest class's) margin, on the cosine
    scale: float = 30.0  # s: the logits are s * cos(features, class weight)
    drw_start: float = 0.8  # the fraction of the epochs trained before re-weighting (160 of 200)
    drw_beta: float = 0.9999  # beta of the effective number

    def __post_init__(self):
        for name, value, valid, rule in (
                ("max_margin", self.max_margin, self.max_margin > 0, "> 0"),
                ("scale", self.scale, self.scale > 0, "> 0"),
                ("drw_start", self.drw_start, 0 <= self.drw_start <= 1, "in [0, 1]"),
                ("drw_beta", self.drw_beta, 0 <= self.drw_beta < 1, "in [0, 1)")):
            if not valid:
                raise ValueError(f"peers.ldam_drw.{name} must be {rule}, got {value!r}")

    def backbone(self, backbone_cfg: dict) -> dict:
        return {**backbone_cfg, "classifier": self.classifier, "classifier_scale": float(self.scale)}

    def reweighted(self, epoch: int, epochs: int) -> bool:
        """Whether epoch ``epoch`` (1, 2, ...) of an ``epochs``-epoch run is re-weighted."""
        return epoch > deferred_epochs(epochs, self.drw_start)

    def loss(self, train_counts, epochs: int, device: torch.device | str = "cpu") -> EpochLoss:
        counts = checked_counts(train_counts)
        margins = torch.as_tensor(self.scale * class_margins(counts, self.max_margin), dtype=torch.float32,
                                  device=device)
        weights = torch.as_tensor(class_balanced_weights(counts, self.drw_beta), dtype=torch.float32, device=device)
        plain, reweighted = partial(ldam_loss, margins=margins), partial(ldam_loss, margins=margins, weight=weights)
        return lambda epoch: reweighted if self.reweighted(epoch, epochs) else plain

    def prior(self, train_counts, epoch: int, epochs: int) -> np.ndarray:
        """Weights kept from a re-weighted epoch: ``n_c w_c`` normalised. A loss weighted by
        ``w_y`` is the loss of a training set in which class ``c`` has ``n_c w_c`` images,
        and that is the prior its minimiser carries; with ``beta = 0.9999`` it is nearly
        uniform wherever ``n_c`` is small against ``1 / (1 - beta) = 10^4``. From an earlier
        epoch: the training prior. Either way the margins are left out: they act on the
        true class only during training, which no prior over the test-time logits models."""
        counts = checked_counts(train_counts)
        if not self.reweighted(epoch, epochs):
            return train_prior(counts)
        mass = counts * class_balanced_weights(counts, self.drw_beta)
        return mass / mass.sum()


PEERS: dict[str, type[Peer]] = {"balanced_softmax": BalancedSoftmax, "ldam_drw": LdamDrw}
"""Every peer method, in the report's order: its name (model and report row) -> its settings."""


def default_config() -> dict:
    """The ``peers`` section of the config's ``defaults``: every peer on, at its paper's
    hyperparameters."""
    return {name: {PEER_SWITCH: True, **asdict(peer())} for name, peer in PEERS.items()}


def peer_settings(name: str, section: dict | None) -> Peer:
    """The settings of peer ``name`` from its ``peers.<name>`` config section."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    return PEERS[name].from_config(section, f"peers.{name}")
