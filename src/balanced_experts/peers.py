"""Peer methods: the one-stage long-tailed methods the field lists next to every new one.

A peer is trained like the base model (the dataset's backbone, data, augmentation, seed and
training recipe) with its own loss, and is then scored like every other model. Each entry
of :data:`PEERS` is a frozen dataclass of the method's hyperparameters, at its paper's
defaults, that gives what the pipeline needs of it:

* :meth:`Peer.backbone`: the model's backbone config with the classifier head it needs;
* :meth:`Peer.task`: what its training job trains (:class:`balanced_experts.tasks.Task`):
  the base model's task with the peer's model;
* :meth:`Peer.loss`: ``loss(epoch) -> criterion(logits, targets)``, the argument ``loss``
  of :func:`balanced_experts.training.fit`;
* :meth:`Peer.prior`: the class prior its test-time probabilities carry (for prior
  adaptation in :mod:`balanced_experts.shift`).

The one-stage peers:

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

The multi-expert peers (:class:`MultiExpertPeer`: a :class:`.multi_expert.MultiExpertNet`,
whose logits are its experts' mean):

* ``ride`` (Wang et al., ICLR 2021): RIDE's loss (:mod:`.ride`), without its router;
* ``sade`` (Zhang et al., NeurIPS 2022): SADE's three expert losses (:mod:`.sade`); its
  test-time aggregation is a stage of its own (``sade_test_time``).

docs/METHOD.md (Peers) and docs/multi_expert.md state what the papers leave out, what their
code does, and where this implementation deviates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from .baselines import log_prior, train_prior
from . import multi_expert, ride, sade
from .ldam import checked_counts, class_balanced_weights, class_margins, deferred_epochs, ldam_loss
from .lists import ImageList
from .methods import PEER_SWITCH
from .tasks import Task, base_task
from .training import Criterion

EpochLoss = Callable[[int], Criterion]
"""``loss(epoch)``: the criterion of each epoch (1, 2, ...), as fit's ``loss`` takes it."""


# -- the loss ------------------------------------------------------------------------------

def balanced_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(logits + log_prior)``: the softmax a model trained on
    the long-tailed set sees, when its plain logits are meant for the balanced one."""
    return nn.functional.cross_entropy(logits + log_prior, targets)


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

    def task(self, train_list: ImageList, val_list: ImageList, backbone_cfg: dict,
             log: Callable[[str], None] = print) -> Task:
        """What the peer's job trains: the base model's task (every image of every class, from
        the pretrained trunk where ``backbone_cfg`` names one) with the peer's head."""
        return base_task(train_list, val_list, self.backbone(backbone_cfg), log)

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


@dataclass(frozen=True)
class MultiExpertPeer(Peer):
    """A peer whose model is a :class:`.multi_expert.MultiExpertNet` (shared early stages, the
    later ones and a cosine classifier per expert); its logits are the experts' mean."""

    classifier: ClassVar[str] = multi_expert.DEFAULTS["classifier"]
    num_experts: ClassVar[int] = multi_expert.DEFAULTS["num_experts"]

    expert_width: float = multi_expert.DEFAULTS["expert_width"]  # of the expert stages, against the single model's
    classifier_scale: float = multi_expert.DEFAULTS["classifier_scale"]  # s of the experts' cosine classifiers

    def multi_expert_settings(self) -> dict:
        """The model's settings (:func:`.multi_expert.build_multi_expert`), in the weights' meta."""
        return {"num_experts": int(self.num_experts), "expert_width": float(self.expert_width),
                "classifier": self.classifier, "classifier_scale": float(self.classifier_scale)}

    def task(self, train_list: ImageList, val_list: ImageList, backbone_cfg: dict,
             log: Callable[[str], None] = print) -> Task:
        """The base model's task with a multi-expert model. Where the backbone has pretrained
        weights, the shared stages start from the trunk's and every expert's stages from a copy
        of its later ones (:func:`.multi_expert.copy_trunk`; needs ``expert_width: 1``)."""
        single = base_task(train_list, val_list, backbone_cfg, log)
        settings = self.multi_expert_settings()
        model = multi_expert.build_multi_expert(backbone_cfg, single.num_classes, settings)
        if backbone_cfg.get("pretrained"):
            multi_expert.copy_trunk(model, single.model.trunk)
            log(f"{model.num_experts} experts: shared stages and every expert's start from the pretrained trunk")
        return replace(single, model=model, parameters=list(model.parameters()), meta={"multi_expert": settings},
                       logits_of=multi_expert.mean_logits)


@dataclass(frozen=True)
class Ride(MultiExpertPeer):
    """RIDE without its router, at the defaults of ``RIDELoss`` (frank-xwang/RIDE-LongTailRecognition)."""

    num_experts: int = multi_expert.DEFAULTS["num_experts"]
    diversity_factor: float = ride.DEFAULTS["diversity_factor"]
    diversity_temperature: float = ride.DEFAULTS["diversity_temperature"]
    reweight_factor: float = ride.DEFAULTS["reweight_factor"]
    max_margin: float = ride.DEFAULTS["max_margin"]
    drw_start: float = ride.DEFAULTS["drw_start"]
    drw_beta: float = ride.DEFAULTS["drw_beta"]

    def loss(self, train_counts, epochs: int, device: torch.device | str = "cpu") -> EpochLoss:
        return ride.ride_loss(train_counts, epochs, self.classifier_scale, self.diversity_factor,
                              self.diversity_temperature, self.reweight_factor, self.max_margin, self.drw_start,
                              self.drw_beta)

    def prior(self, train_counts, epoch: int, epochs: int) -> np.ndarray:
        return ride.ride_prior(train_counts, epoch, epochs, self.drw_start, self.drw_beta)


def _test_time_defaults() -> dict:
    """SADE's test-time aggregation settings but the lr: unset, it is the dataset's base lr
    (SADE's configs use their training lr)."""
    return {k: v for k, v in asdict(sade.AggregationSettings()).items() if k != "lr"}


@dataclass(frozen=True)
class Sade(MultiExpertPeer):
    """SADE's three experts (forward, uniform, backward) at the defaults of its CIFAR-100-LT
    and ImageNet-LT configs (Vanint/SADE-AgnosticLT); ``test_time``: its aggregation's
    settings (:class:`.sade.AggregationSettings`), which the stage ``sade_test_time`` reads
    and its training does not."""

    num_experts: ClassVar[int] = sade.NUM_EXPERTS
    inverse_prior_power: float = sade.INVERSE_PRIOR_POWER  # lambda of the backward expert's loss
    test_time: dict = field(default_factory=_test_time_defaults)

    def loss(self, train_counts, epochs: int, device: torch.device | str = "cpu") -> EpochLoss:
        return sade.sade_loss(train_counts, self.inverse_prior_power)

    def prior(self, train_counts, epoch: int, epochs: int) -> np.ndarray:
        return sade.sade_prior(train_counts, self.inverse_prior_power)


PEERS: dict[str, type[Peer]] = {"balanced_softmax": BalancedSoftmax, "ldam_drw": LdamDrw, "ride": Ride,
                                "sade": Sade}
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
