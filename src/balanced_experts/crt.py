"""Classifier re-training (cRT, Kang et al., ICLR 2020) on the frozen base model.

The base model's features (after fc + ReLU) are computed once, without augmentation; a
fresh linear classifier is then trained on them with class-balanced sampling (each draw
picks a class uniformly, then one of its images), using the same training loop as every
other model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def extract_features(model, batches, num_samples: int) -> torch.Tensor:
    """``model.features`` of every sample in batch order, in one preallocated tensor."""
    model.eval()
    out = None
    start = 0
    for x, _ in batches:
        f = model.features(x).float().cpu()
        if out is None:
            out = torch.empty((num_samples, f.shape[1]), dtype=torch.float32)
        out[start:start + len(f)] = f
        start += len(f)
    if start != num_samples:
        raise RuntimeError(f"extracted {start} feature rows, expected {num_samples}")
    return out


def class_balanced_indices(labels: torch.Tensor, num_draws: int, generator: torch.Generator) -> torch.Tensor:
    """``num_draws`` indices: a uniformly drawn class, then a uniformly drawn image of it."""
    counts = torch.bincount(labels).float()
    weights = 1.0 / counts[labels]
    return torch.multinomial(weights, num_draws, replacement=True, generator=generator)


def balanced_feature_batches(features, labels, batch_size: int, device, generator):
    """One epoch (as many draws as samples) of class-balanced feature batches."""
    order = class_balanced_indices(labels, len(labels), generator)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield features[idx].to(device), labels[idx].to(device)


def feature_batches(features, labels, batch_size: int, device):
    for start in range(0, len(labels), batch_size):
        yield features[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)


def fresh_classifier(in_features: int, num_classes: int) -> nn.Linear:
    return nn.Linear(in_features, num_classes)
