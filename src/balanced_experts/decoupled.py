"""Decoupled classifiers on the frozen base model (Kang et al., "Decoupling representation
and classifier for long-tailed recognition", ICLR 2020): cRT and LWS.

The base model's representation (trunk, and fc when the model has one) stays frozen; only
the classifier is learned again, from class-balanced batches:

* cRT (classifier re-training): a fresh linear classifier.
* LWS (learnable weight scaling): the base classifier kept, each class's logit multiplied
  by a learnable scale, ``z_c = s_c * (w_c . f + b_c)``, ``s`` starting at 1. As in Kang
  et al.'s code, the scale multiplies the bias too (their paper writes it on ``w_c``).

As Kang et al. run them (``features: images``): each epoch their class-aware sampler
(:func:`class_aware_indices`, 4 images per class in a row) draws ``floor(N / batch)``
batches of augmented training images, which pass through the frozen backbone; the whole
model is in train mode, so the backbone's BatchNorm layers re-estimate their statistics
on the class-balanced batches (``frozen_bn: train``; ``eval`` keeps the base model's).
The best epoch on the validation set is kept. ``features: cached`` is a faster deviation:
the features of every train and val image are computed once, without augmentation and
with the backbone in eval mode, and the classifier trains on those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch
from torch import nn

from .logits import predict
from .models import save_checkpoint, set_learnable_modules

FEATURE_SOURCES = ("images", "cached")
"""What a decoupled classifier trains on (``features``; the schema's enum, a test holds them equal)."""


@dataclass(frozen=True)
class DecoupledSettings:
    """What a ``crt`` or ``lws`` config section adds to its training settings."""

    features: str = "images"  # "images" (Kang et al.) | "cached" (features computed once)
    samples_per_class: int = 4  # images drawn from a class in a row (Kang et al.'s num_samples_cls)

    @classmethod
    def from_config(cls, cfg: dict) -> "DecoupledSettings":
        settings = cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__})
        if settings.features not in FEATURE_SOURCES:
            raise ValueError(f"features must be one of {', '.join(FEATURE_SOURCES)}, got {settings.features!r}")
        return settings


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Batches per epoch: ``floor(N / batch)`` as in Kang et al. (at least one)."""
    return max(1, num_images // batch_size)


def class_aware_indices(labels, num_draws: int, samples_per_class: int, generator: torch.Generator
                        ) -> torch.Tensor:
    """``num_draws`` indices into ``labels`` drawn by Kang et al.'s class-aware sampler.

    Classes are visited in a random order that is reshuffled after every pass over all
    classes; each visit takes the next ``samples_per_class`` images of that class, from
    a cycle through its images that is reshuffled after every pass. So every class gets
    the same number of draws (``num_draws / (C * samples_per_class)`` visits each when
    that divides evenly, at most one visit apart otherwise), and a class's images repeat
    only once all of them have been drawn. Unlike Kang et al.'s sampler, whose cycles carry
    on across epochs, each call (epoch) starts fresh cycles from ``generator``; that keeps
    an epoch a function of the generator state, which the epoch checkpoint saves.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    num_classes = int(labels.max()) + 1
    visits = -(-num_draws // samples_per_class)
    passes = -(-visits // num_classes)
    class_order = torch.cat([torch.randperm(num_classes, generator=generator) for _ in range(passes)])[:visits]
    per_class = torch.bincount(class_order, minlength=num_classes) * samples_per_class
    queues = []
    for c in range(num_classes):
        images = torch.nonzero(labels == c).flatten()
        if len(images) == 0:
            raise ValueError(f"class {c} has no training images")
        cycles = -(-int(per_class[c]) // len(images))
        queues.append(torch.cat([images[torch.randperm(len(images), generator=generator)]
                                 for _ in range(cycles)]) if cycles else images[:0])
    taken = [0] * num_classes
    order = []
    for c in class_order.tolist():
        order.append(queues[c][taken[c]:taken[c] + samples_per_class])
        taken[c] += samples_per_class
    return torch.cat(order)[:num_draws]


class ScaledClassifier(nn.Module):
    """LWS: a frozen linear classifier whose class ``c`` logit is multiplied by a learnable
    ``scales[c]`` (initially 1). The frozen weight and bias are buffers, so the scales are
    the module's only parameters."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", linear.bias.detach().clone())
        self.scales = nn.Parameter(torch.ones(linear.out_features, device=linear.weight.device))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(features, self.weight, self.bias) * self.scales

    def folded(self) -> nn.Linear:
        """The same map as one linear layer: ``s_c (w_c . f + b_c) = (s_c w_c) . f + s_c b_c``."""
        linear = nn.Linear(self.weight.shape[1], self.weight.shape[0]).to(self.weight.device)
        with torch.no_grad():
            linear.weight.copy_(self.weight * self.scales[:, None])
            linear.bias.copy_(self.bias * self.scales)
        return linear


def decoupled_head(method: str, base_classifier: nn.Linear) -> nn.Module:
    """The classifier a method trains: cRT a fresh linear layer (torch's default init, as
    Kang et al.), LWS the base classifier with per-class scales."""
    if method == "crt":
        return nn.Linear(base_classifier.in_features, base_classifier.out_features).to(base_classifier.weight.device)
    if method == "lws":
        return ScaledClassifier(base_classifier)
    raise ValueError(f"unknown decoupled classifier {method!r}; expected crt or lws")


def as_linear(head: nn.Module) -> nn.Linear:
    """The trained head as the plain linear classifier every saved model has."""
    return head.folded() if isinstance(head, ScaledClassifier) else head


def tensor_batches(features: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, batch_size: int, device):
    """Batches of precomputed features (``features: cached``) in the given order."""
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield features[idx].to(device), labels[idx].to(device)


class Feed(NamedTuple):
    """What trains in a decoupled classifier's job, and what one epoch feeds it."""

    module: nn.Module  # the module :func:`balanced_experts.training.fit` trains and keeps the best state of
    parameters: list[nn.Parameter]  # the head's
    train_batches: Callable[[torch.Generator], Iterable]  # one epoch of class-aware batches
    val_batches: Callable[[], Iterable]


def image_feed(model: nn.Module, head: nn.Module, sources: dict, labels: dict[str, torch.Tensor],
               class_aware_order: Callable[[torch.Generator], torch.Tensor], batch_size: int,
               eval_batch_size: int, device: torch.device) -> Feed:
    """Kang et al.'s way: ``head`` in place of ``model``'s classifier, augmented images through
    the frozen backbone every epoch. ``sources``, ``labels``: the train and val splits' image
    sources (:class:`balanced_experts.images.source.ImageSource`) and labels, by split name;
    ``class_aware_order(generator)``: an epoch's training images in sampler order."""
    model.classifier = head

    def train_batches(generator):
        order = class_aware_order(generator)
        return sources["train"].batches(order, labels["train"][order], batch_size, True, device, generator,
                                        shuffle=False)

    def val_batches():
        return sources["val"].batches(np.arange(len(labels["val"])), labels["val"], eval_batch_size, False, device)

    return Feed(model, set_learnable_modules(model, [head]), train_batches, val_batches)


def cached_feed(model: nn.Module, head: nn.Module, sources: dict, labels: dict[str, torch.Tensor],
                class_aware_order: Callable[[torch.Generator], torch.Tensor], batch_size: int,
                eval_batch_size: int, amp: bool, device: torch.device, log: Callable[[str], None] = print) -> Feed:
    """The faster deviation: the backbone's features of every train and val image, computed
    once (no augmentation, eval mode); ``head`` alone trains on them. As :func:`image_feed`."""
    features = {}
    for split, source in sources.items():
        batches = source.batches(np.arange(len(source)), labels[split], eval_batch_size, False, device)
        features[split] = torch.from_numpy(predict(model, batches, len(source), model.feature_dim, amp=amp,
                                                   features=True))
        log(f"features of {len(source)} {split} images: {tuple(features[split].shape)}")

    def train_batches(generator):
        return tensor_batches(features["train"], labels["train"], class_aware_order(generator), batch_size, device)

    def val_batches():
        return tensor_batches(features["val"], labels["val"], torch.arange(len(labels["val"])), eval_batch_size,
                              device)

    return Feed(head, list(head.parameters()), train_batches, val_batches)


def save_decoupled(path: str | Path, model: nn.Module, head: nn.Module, feed: Feed, result: dict, base_meta: dict,
                   method: str, features: str) -> None:
    """The best epoch's head (``result``: :func:`balanced_experts.training.fit`'s) in ``model``
    as a plain linear classifier (LWS's scales folded in), saved with the base model's
    metadata and what this method adds: its name, its feature source, the best epoch and
    its val accuracy, and LWS's scales."""
    feed.module.load_state_dict(result["state_dict"])
    model.classifier = as_linear(head)
    extra = {"lws_scales": [float(s) for s in head.scales.detach().cpu()]} if method == "lws" else {}
    save_checkpoint(path, model, {**base_meta, "model": method, "features": features,
                                  "best_epoch": int(result["best_epoch"]),
                                  "best_val_acc": float(result["best_val_acc"]), **extra})
