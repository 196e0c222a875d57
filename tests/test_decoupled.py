"""The decoupled classifiers (Kang et al. 2020): the class-aware sampler, LWS, what an
epoch feeds the head (real images through a real base model), and the weights they end as."""

import functools

import numpy as np
import pytest
import torch

from balanced_experts import DECOUPLED_METHODS
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.decoupled import (ScaledClassifier, as_linear, cached_feed, class_aware_indices, decoupled_head,
                                        image_feed, save_decoupled, steps_per_epoch)
from balanced_experts.lists import read_list
from balanced_experts.methods import METHODS
from balanced_experts.models import build_model, load_model
from balanced_experts.synthetic import SyntheticSpec, generate

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


BACKBONE = {"name": "resnet_cifar8", "width": 4, "embed_dim": 8}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """The train and val splits of real images: ``(sources, labels)`` by split name."""
    root = tmp_path_factory.mktemp("images")
    generate(SyntheticSpec(num_classes=3, max_count=12, imbalance=3, val_per_class=2, test_per_class=1,
                           image_size=12, seed=0), root, log=lambda _: None)
    spec = InputSpec(size=12, augment="crop_flip", preload=True, pad=2, workers=0)
    lists = {split: read_list(root / f"{split}.txt") for split in ("train", "val")}
    sources = {split: ImageSource.open(root, lists[split], spec) for split in lists}
    labels = {split: torch.as_tensor(lists[split].labels) for split in lists}
    return sources, labels


def _order(labels, batch_size):
    return functools.partial(class_aware_indices, labels["train"], 2 * batch_size, 2)


def test_the_image_feed_trains_the_head_in_the_model_on_class_aware_batches(splits):
    sources, labels = splits
    model = build_model(BACKBONE, 3)
    head = decoupled_head("crt", model.classifier)
    feed = image_feed(model, head, sources, labels, _order(labels, 4), 4, 5, torch.device("cpu"))
    assert feed.module is model and model.classifier is head
    assert {id(p) for p in feed.parameters} == {id(p) for p in head.parameters()}
    assert not any(p.requires_grad for name, p in model.named_parameters() if not name.startswith("classifier."))
    batches = list(feed.train_batches(torch.Generator().manual_seed(0)))
    expected = labels["train"][class_aware_indices(labels["train"], 8, 2, torch.Generator().manual_seed(0))]
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 12, 12)] * 2
    assert torch.equal(torch.cat([y for _, y in batches]), expected)  # the sampler's order, not shuffled
    assert torch.equal(torch.cat([y for _, y in feed.val_batches()]), labels["val"])


def test_the_cached_feed_trains_the_head_alone_on_features_computed_once(splits):
    sources, labels = splits
    model = build_model(BACKBONE, 3)
    head = decoupled_head("lws", model.classifier)
    lines = []
    feed = cached_feed(model, head, sources, labels, _order(labels, 4), 4, 5, False, torch.device("cpu"),
                       lines.append)
    assert feed.module is head and feed.parameters == [head.scales]
    assert lines == [f"features of {len(labels[s])} {s} images: ({len(labels[s])}, 8)" for s in ("train", "val")]
    # The val features are the base model's, in eval mode and list order.
    model.eval()
    with torch.no_grad():
        x = torch.cat([x for x, _ in sources["val"].batches(np.arange(len(labels["val"])), labels["val"], 5, False,
                                                            torch.device("cpu"))])
        features = torch.cat([f for f, _ in feed.val_batches()])
        torch.testing.assert_close(features, model.features(x))
    order = class_aware_indices(labels["train"], 8, 2, torch.Generator().manual_seed(1))
    train = list(feed.train_batches(torch.Generator().manual_seed(1)))
    assert [tuple(f.shape) for f, _ in train] == [(4, 8)] * 2
    assert torch.equal(torch.cat([y for _, y in train]), labels["train"][order])


def test_saved_lws_weights_are_a_plain_model_with_its_scales_folded_in(splits, tmp_path):
    sources, labels = splits
    model = build_model(BACKBONE, 3)
    base_meta = {"model": "base", "backbone": BACKBONE, "num_classes": 3, "output_class_ids": [0, 1, 2],
                 "best_epoch": 5, "best_val_acc": 40.0}
    head = decoupled_head("lws", model.classifier)
    feed = cached_feed(model, head, sources, labels, _order(labels, 4), 4, 5, False, torch.device("cpu"),
                       lambda _: None)
    best = {**head.state_dict(), "scales": torch.tensor([2.0, 0.5, 1.0])}
    save_decoupled(tmp_path / "lws.pt", model, head, feed, {"state_dict": best, "best_epoch": 2, "best_val_acc": 50.0},
                   base_meta, "lws", "cached")
    saved, meta = load_model(tmp_path / "lws.pt")
    assert meta == {**base_meta, "model": "lws", "features": "cached", "best_epoch": 2, "best_val_acc": 50.0,
                    "lws_scales": [2.0, 0.5, 1.0]}
    f = torch.randn(4, 8)
    torch.testing.assert_close(saved.classifier(f), head(f))  # the best epoch's scales, folded
    torch.testing.assert_close(saved.classifier.weight, best["weight"] * best["scales"][:, None])
