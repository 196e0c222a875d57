"""The peer methods (Balanced Softmax, LDAM-DRW): losses against hand-computed cases, the
cosine classifier, the priors their probabilities carry, and the training loop's loss hook."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from balanced_experts.models import (CLASSIFIERS, CosineClassifier, build_model, load_model, save_checkpoint,
                                     set_learnable)
from balanced_experts.methods import METHODS, PEER_METHODS, enabled_peers
from balanced_experts.ldam import class_balanced_weights, class_margins, deferred_epochs, ldam_loss
from balanced_experts.peers import PEERS, LdamDrw, default_config, peer_settings
from balanced_experts.training import TrainSettings, fit

TINY_BACKBONE = {"name": "resnet_cifar8", "width": 2, "embed_dim": 8}


# -- the losses, by hand ------------------------------------------------------------------

def test_ldam_margins_are_inverse_fourth_roots_with_the_largest_at_max_margin():
    # n^(-1/4) of 16, 81, 256, 1 is 1/2, 1/3, 1/4, 1: scaled so that the largest is 0.5.
    assert class_margins([16, 81, 256, 1], 0.5) == pytest.approx([0.25, 0.5 / 3, 0.125, 0.5])
    assert class_margins([10, 10], 0.3) == pytest.approx([0.3, 0.3])


def test_drw_weights_are_effective_number_weights_summing_to_the_class_count():
    # beta 0.5, counts 1 and 2: (1 - b) / (1 - b^n) = 1 and 2/3; times 2 / (5/3).
    assert class_balanced_weights([1, 2], 0.5) == pytest.approx([1.2, 0.8])
    # beta 0 (DRW's first phase in Cao et al.'s code): every weight 1.
    assert class_balanced_weights([500, 20, 5], 0.0) == pytest.approx([1, 1, 1])
    weights = class_balanced_weights([5000, 500, 50, 5], 0.9999)
    assert weights.sum() == pytest.approx(4) and np.all(np.diff(weights) > 0)


def test_drw_defers_to_the_stated_fraction_of_the_epochs():
    assert deferred_epochs(200, 0.8) == 160  # the paper's epoch 160 of 200
    assert deferred_epochs(15, 0.8) == 12
    assert deferred_epochs(16, 0.8) == 13  # 12.8: the nearest epoch
    assert deferred_epochs(10, 0.25) == 3  # 2.5: halves up
    assert (deferred_epochs(30, 0.0), deferred_epochs(30, 1.0)) == (0, 30)
    peer = LdamDrw()
    assert [e for e in range(1, 201) if peer.reweighted(e, 200)] == list(range(161, 201))


def test_ldam_drw_loss_by_hand_before_and_after_the_deferral():
    """Counts 1 and 16: margins 0.5 and 0.25 on the cosine, 1.0 and 0.5 in logits at s = 2.
    Logits 0, targets 0 and 1: the true logit drops by its margin, so the losses are
    log(1 + e^1) and log(1 + e^0.5); plain mean for epochs 1-8 of 10, then the mean
    weighted by the beta-0.5 weights of the classes."""
    peer = LdamDrw(scale=2.0, drw_start=0.8, drw_beta=0.5)
    loss = peer.loss([1, 16], epochs=10)
    logits, targets = torch.zeros(2, 2), torch.tensor([0, 1])
    per_sample = [math.log(1 + math.e), math.log(1 + math.exp(0.5))]
    for epoch in range(1, 9):
        assert loss(epoch)(logits, targets).item() == pytest.approx(sum(per_sample) / 2, rel=1e-6)
    w = [0.5 / (1 - 0.5), 0.5 / (1 - 0.5 ** 16)]  # normalising them to sum 2 cancels in the weighted mean
    weighted = (w[0] * per_sample[0] + w[1] * per_sample[1]) / (w[0] + w[1])
    for epoch in (9, 10):
        assert loss(epoch)(logits, targets).item() == pytest.approx(weighted, rel=1e-6)


def test_ldam_subtracts_the_margin_from_the_true_class_only():
    logits = torch.tensor([[3.0, 1.0, -2.0]])
    margins = torch.tensor([0.5, 0.7, 0.9])
    expected = nn.functional.cross_entropy(torch.tensor([[3.0, 0.3, -2.0]]), torch.tensor([1]))
    assert ldam_loss(logits, torch.tensor([1]), margins).item() == pytest.approx(expected.item())


def test_balanced_softmax_adds_the_log_training_prior():
    """Counts 1 and 3 (prior 1/4, 3/4), logits 0: the loss of a class-0 sample is -log(1/4),
    of a class-1 sample -log(3/4); with logits log 3 and 0 the shift is undone (loss log 2)."""
    loss = PEERS["balanced_softmax"]().loss([1, 3], epochs=5)
    zeros = torch.zeros(1, 2)
    assert loss(1)(zeros, torch.tensor([0])).item() == pytest.approx(math.log(4))
    assert loss(5)(zeros, torch.tensor([1])).item() == pytest.approx(math.log(4 / 3))
    balanced = torch.tensor([[math.log(3), 0.0]])
    assert loss(3)(balanced, torch.tensor([0])).item() == pytest.approx(math.log(2), rel=1e-6)


def test_peers_refuse_classes_without_training_images():
    with pytest.raises(ValueError, match=r"classes \[1\] have no training images"):
        PEERS["balanced_softmax"]().loss([3, 0, 2], epochs=5)
    with pytest.raises(ValueError, match="no training images"):
        LdamDrw().loss([3, 0, 2], epochs=5)


# -- the priors their probabilities carry ------------------------------------------------

def _bias_only_minimiser(loss, num_classes: int, counts) -> np.ndarray:
    """softmax(b) for the bias b that minimises ``loss`` over a training set with ``counts``
    images per class (a model that sees no input: its logits are b for every image)."""
    targets = torch.repeat_interleave(torch.arange(num_classes), torch.tensor(counts))
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([bias], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss(bias.expand(len(targets), -1), targets)
        value.backward()
        return value

    optimizer.step(closure)
    return torch.softmax(bias.detach().double(), 0).numpy()


def test_balanced_softmax_carries_the_uniform_prior():
    counts = [40, 10, 3]
    minimiser = _bias_only_minimiser(PEERS["balanced_softmax"]().loss(counts, 1)(1), 3, counts)
    assert minimiser == pytest.approx([1 / 3] * 3, abs=1e-4)
    assert PEERS["balanced_softmax"]().prior(counts, 1, 1) == pytest.approx([1 / 3] * 3)


def test_drw_weighted_loss_carries_the_reweighted_prior():
    """Without margins, the weighted loss's minimiser is n_c w_c normalised: the prior the
    ldam_drw peer states for weights from a re-weighted epoch; the training prior before."""
    counts = [40, 10, 3]
    peer = LdamDrw(drw_beta=0.9)  # a beta at which n_c w_c is far from uniform for these counts
    weights = torch.tensor(class_balanced_weights(counts, peer.drw_beta), dtype=torch.float32)
    minimiser = _bias_only_minimiser(lambda z, y: ldam_loss(z, y, torch.zeros(3), weights), 3, counts)
    stated = peer.prior(counts, epoch=10, epochs=10)
    assert minimiser == pytest.approx(stated, abs=1e-4)
    mass = np.multiply(counts, weights.numpy())
    assert stated == pytest.approx(mass / mass.sum()) and 1 / 3 < stated[0] < 40 / 53
    assert peer.prior(counts, epoch=8, epochs=10) == pytest.approx(np.array(counts) / 53)


# -- the cosine classifier ----------------------------------------------------------------

def test_cosine_classifier_is_scale_times_cosine():
    torch.manual_seed(0)
    head = CosineClassifier(5, 3, scale=30.0)
    assert head.weight.detach().norm(dim=1) == pytest.approx([1.0, 1.0, 1.0])
    assert not hasattr(head, "bias")
    features = torch.rand(4, 5)
    cosine = (features / features.norm(dim=1, keepdim=True)) @ (head.weight / head.weight.norm(dim=1)[:, None]).T
    assert torch.allclose(head(features), 30.0 * cosine, atol=1e-5)
    assert torch.allclose(head(7.0 * features), head(features), atol=1e-5)  # the feature length is ignored
    assert head(features).abs().max() <= 30.0 + 1e-4


def test_ldam_model_has_the_cosine_head_and_rebuilds_from_its_weights(tmp_path):
    peer = peer_settings("ldam_drw", {"scale": 16})
    backbone = peer.backbone(TINY_BACKBONE)
    assert TINY_BACKBONE == {"name": "resnet_cifar8", "width": 2, "embed_dim": 8}  # not changed in place
    model = build_model(backbone, 4)
    assert isinstance(model.classifier, CosineClassifier) and model.classifier.scale == 16.0
    save_checkpoint(tmp_path / "weights.pt", model, {"backbone": backbone, "output_class_ids": [0, 1, 2, 3]})
    loaded, meta = load_model(tmp_path / "weights.pt")
    x = torch.randn(2, 3, 8, 8)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x)) and loaded.classifier.scale == 16.0
    # Balanced Softmax keeps the dataset's linear classifier, and the base model's backbone config.
    assert PEERS["balanced_softmax"]().backbone(TINY_BACKBONE) == TINY_BACKBONE
    assert isinstance(build_model(TINY_BACKBONE, 4).classifier, nn.Linear)
    assert {peer.classifier for peer in PEERS.values()} <= set(CLASSIFIERS)


# -- the registry and its config ----------------------------------------------------------

def test_defaults_are_the_papers_and_the_config_section_derives_from_them():
    assert default_config() == {
        "balanced_softmax": {"enabled": True},
        "ldam_drw": {"enabled": True, "max_margin": 0.5, "scale": 30.0, "drw_start": 0.8, "drw_beta": 0.9999},
        # RIDELoss's defaults, RIDE's 3 experts at 0.75 width with a cosine classifier (s 30).
        "ride": {"enabled": True, "num_experts": 3, "expert_width": 0.75, "classifier_scale": 30.0,
                 "diversity_factor": -0.2, "diversity_temperature": 1.0, "reweight_factor": 0.05,
                 "max_margin": 0.5, "drw_start": 0.8, "drw_beta": 0.9999},
        # SADE's lambda (tau) 2 and its test-time settings (the lr is the dataset's base lr).
        "sade": {"enabled": True, "expert_width": 0.75, "classifier_scale": 30.0, "inverse_prior_power": 2.0,
                 "test_time": {"epochs": 5, "batch_size": 128, "momentum": 0.9, "weight_decay": 0.0005,
                               "nesterov": True, "min_weight": 0.05, "seed": 0}},
    }
    for name, section in default_config().items():
        assert peer_settings(name, section) == PEERS[name]()
    # Each peer is a report row of its own name, in the registry's order.
    assert list(PEERS) == list(PEER_METHODS) == [m for m in METHODS if m in PEERS]


def test_peer_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"peers\.ldam_drw: unknown key sacle; known: enabled, max_margin"):
        peer_settings("ldam_drw", {"sacle": 30})
    with pytest.raises(ValueError, match=r"peers\.ldam_drw\.drw_start must be in \[0, 1\], got 1\.5"):
        peer_settings("ldam_drw", {"drw_start": 1.5})
    with pytest.raises(ValueError, match="unknown peer 'rid'"):
        peer_settings("rid", {})
    with pytest.raises(ValueError, match="peers: unknown peer rid"):
        enabled_peers({"rid": {}})
    with pytest.raises(ValueError, match=r"peers\.sade: unknown key lambda; known: enabled, expert_width"):
        peer_settings("sade", {"lambda": 1})


def test_each_peer_switches_off_on_its_own():
    assert enabled_peers(default_config()) == list(PEERS)
    assert enabled_peers({"ldam_drw": {"enabled": False}}) == ["balanced_softmax", "ride", "sade"]
    assert enabled_peers({"balanced_softmax": {"enabled": False}, "ldam_drw": None, "ride": {"enabled": False},
                          "sade": {"enabled": False}}) == ["ldam_drw"]


# -- the training loop's loss hook --------------------------------------------------------

def _toy_data():
    generator = torch.Generator().manual_seed(7)
    y = torch.tensor([0] * 24 + [1] * 6 + [2] * 2)  # long-tailed: 24 / 6 / 2
    x = torch.randn(len(y), 3, 8, 8, generator=generator) + y[:, None, None, None].float()
    return x, y


def _toy_fit(tmp_path, backbone=TINY_BACKBONE, loss=None, epochs=3):
    torch.manual_seed(0)
    model = build_model(backbone, 3)
    x, y = _toy_data()
    settings = TrainSettings(epochs=epochs, batch_size=8, lr=0.05, seed=0)

    def train_batches(generator):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), settings.batch_size):
            yield x[order[start:start + settings.batch_size]], y[order[start:start + settings.batch_size]]

    result = fit(model, set_learnable(model, -1), train_batches, lambda: [(x, y)], steps_per_epoch=4,
                 settings=settings, name="toy", metrics_path=tmp_path / "metrics.csv", log=lambda line: None,
                 loss=loss)
    return model, result


@pytest.mark.slow
def test_fit_without_a_loss_is_the_cross_entropy_loop_it_was(tmp_path):
    """The default is exactly the criterion the loop used before the hook
    (nn.CrossEntropyLoss()): the same weights, bit for bit."""
    default, _ = _toy_fit(tmp_path / "default", epochs=2)
    explicit, _ = _toy_fit(tmp_path / "explicit", loss=lambda epoch: nn.CrossEntropyLoss(), epochs=2)
    for key, value in default.state_dict().items():
        assert torch.equal(value, explicit.state_dict()[key]), key
    assert (tmp_path / "default/metrics.csv").read_text().splitlines()[1].split(",")[:5] == \
        (tmp_path / "explicit/metrics.csv").read_text().splitlines()[1].split(",")[:5]


@pytest.mark.slow
def test_fit_trains_a_peer_with_its_epoch_loss(tmp_path):
    """LDAM-DRW on the toy set: fit asks for every epoch's criterion (1..4), the first three
    plain and the last re-weighted (drw_start 0.75 of 4; the weighted loss jumps, as the
    rare classes' higher losses now count more), and it trains a model whose weights differ
    from the cross-entropy run's."""
    peer = LdamDrw(scale=10.0, drw_start=0.75)
    counts = [24, 6, 2]
    epoch_loss = peer.loss(counts, epochs=4)
    asked = []

    def recording(epoch):
        asked.append((epoch, epoch_loss(epoch).keywords.get("weight") is not None))
        return epoch_loss(epoch)

    model, result = _toy_fit(tmp_path / "ldam", peer.backbone(TINY_BACKBONE), recording, epochs=4)
    assert asked == [(1, False), (2, False), (3, False), (4, True)]
    assert result["epochs_run"] == 4 and np.isfinite(result["best_val_acc"])
    metrics = pd.read_csv(tmp_path / "ldam/metrics.csv")
    loss = metrics["train_loss"].to_numpy()
    assert np.isfinite(loss).all() and loss[2] < loss[1] < loss[0] and loss[3] > loss[2]
    plain, _ = _toy_fit(tmp_path / "ce", peer.backbone(TINY_BACKBONE))
    assert not torch.equal(plain.classifier.weight, model.classifier.weight)


@pytest.mark.slow
def test_fit_scores_a_multi_expert_model_by_its_experts_mean(tmp_path):
    """A multi-expert peer through fit: the loss sees every expert's logits (N x E x C), the
    training accuracy and validation the experts' mean (logits_of); the kept epoch's val
    accuracy is that of the mean logits of the weights it returns."""
    from balanced_experts.multi_expert import build_multi_expert, mean_logits
    from balanced_experts.peers import Sade

    torch.manual_seed(0)
    peer, (x, y) = Sade(), _toy_data()
    model = build_multi_expert(TINY_BACKBONE, 3, peer.multi_expert_settings())
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.05, seed=0)
    shapes = []
    criterion = peer.loss([24, 6, 2], settings.epochs)

    def recording(epoch):
        def loss(outputs, targets):
            shapes.append(tuple(outputs.shape))
            return criterion(epoch)(outputs, targets)
        return loss

    def train_batches(generator):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), settings.batch_size):
            yield x[order[start:start + settings.batch_size]], y[order[start:start + settings.batch_size]]

    result = fit(model, list(model.parameters()), train_batches, lambda: [(x, y)], steps_per_epoch=4,
                 settings=settings, name="sade", metrics_path=tmp_path / "metrics.csv", log=lambda line: None,
                 loss=recording, logits_of=mean_logits)
    assert set(shapes) == {(8, 3, 3)}
    model.load_state_dict(result["state_dict"])
    model.eval()
    with torch.no_grad():
        accuracy = 100.0 * (mean_logits(model(x)).argmax(1) == y).float().mean().item()
    assert result["best_val_acc"] == pytest.approx(accuracy)
