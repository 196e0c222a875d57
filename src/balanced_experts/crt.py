"""Classifier re-training (cRT, Kang et al., ICLR 2020) on the frozen base model.

The base model's features (after fc + ReLU) are computed once, without augmentation
(:func:`balanced_experts.logits.predict` with ``features=True``); a fresh linear
classifier is then trained on them with class-balanced sampling (each draw picks a class
uniformly, then one of its images), using the same training loop as every other model.
"""

from __future__ import annotations

import torch


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

