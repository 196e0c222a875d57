"""The decoupled classifiers (Kang et al. 2020): the class-aware sampler and LWS."""

import pytest
import torch

from balanced_experts import DECOUPLED_METHODS
from balanced_experts.decoupled import (ScaledClassifier, as_linear, class_aware_indices, decoupled_head,
                                        steps_per_epoch)
from balanced_experts.report import METHODS

COUNTS = [50, 20, 7, 3, 1]  # long-tailed: class c has COUNTS[c] images
LABELS = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
LABELS = LABELS[torch.randperm(len(LABELS), generator=torch.Generator().manual_seed(0))]


def _draw(num_draws, seed=0, per_class=4):
    return class_aware_indices(LABELS, num_draws, per_class, torch.Generator().manual_seed(seed))


def test_class_aware_sampler_balances_classes_exactly():
    """Three passes over the 5 classes, 4 images per visit: 12 draws of every class, whatever
    its size; 4 in a row from one class; every pass visits each class once; a class's images
    repeat only after all of them were drawn."""
    order = _draw(3 * len(COUNTS) * 4)
    assert len(order) == 60
    drawn = LABELS[order]
    assert torch.bincount(drawn, minlength=5).tolist() == [12] * 5
    visits = drawn.view(-1, 4)
    assert (visits == visits[:, :1]).all()
    for one_pass in visits[:, 0].view(3, 5):
        assert sorted(one_pass.tolist()) == [0, 1, 2, 3, 4]
    for c, count in enumerate(COUNTS):
        times = torch.bincount(order[drawn == c], minlength=len(LABELS))[LABELS == c]
        # 12 draws over `count` images: each image 12 // count or one more time.
        assert times.sum() == 12 and times.max() - times.min() <= 1 and times.min() == 12 // count


def test_class_aware_epoch_of_uneven_length():
    """An epoch of floor(N / batch) batches (Kang et al.): draws per class at most one visit apart."""
    assert steps_per_epoch(10_847, 256) == 42 and steps_per_epoch(10, 32) == 1
    order = _draw(steps_per_epoch(81, 16) * 16)
    counts = torch.bincount(LABELS[order], minlength=5)
    assert counts.sum() == 80 and counts.max() - counts.min() <= 4
    assert torch.equal(order, _draw(80)) and not torch.equal(order, _draw(80, seed=1))


def test_lws_scales_the_frozen_classifier_logits():
    """Kang et al.'s LWS: logit c = s_c * (w_c . f + b_c), by hand."""
    linear = torch.nn.Linear(2, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.0]]))
        linear.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    head = decoupled_head("lws", linear)
    assert isinstance(head, ScaledClassifier) and [p.shape for p in head.parameters()] == [(3,)]
    f = torch.tensor([[1.0, 1.0]])
    assert head(f).tolist() == [[3.5, -2.0, 5.0]]  # scales start at 1: the base classifier
    with torch.no_grad():
        head.scales.copy_(torch.tensor([2.0, 0.5, -1.0]))
    assert head(f).tolist() == [[7.0, -1.0, -5.0]]
    assert as_linear(head)(f).tolist() == [[7.0, -1.0, -5.0]]  # folded into one linear layer
    head(f).sum().backward()
    assert head.scales.grad.tolist() == [3.5, -2.0, 5.0]  # d logit_c / d s_c = w_c . f + b_c
    assert torch.equal(head.weight, linear.weight) and torch.equal(head.bias, linear.bias)


def test_crt_head_is_a_fresh_classifier():
    linear = torch.nn.Linear(4, 3)
    head = decoupled_head("crt", linear)
    assert isinstance(head, torch.nn.Linear) and head is not linear and head.weight.shape == (3, 4)
    assert as_linear(head) is head
    with pytest.raises(ValueError, match="unknown decoupled classifier"):
        decoupled_head("ncm", linear)


def test_every_decoupled_classifier_has_a_report_row():
    rows = [m for m in METHODS if m.removeprefix("base_") in DECOUPLED_METHODS]
    assert rows == [f"base_{m}" for m in DECOUPLED_METHODS]
