"""The expert training protocol of the original code: early stopping on patience with the
best epoch kept, and BatchNorm of frozen layers in train or eval mode. Real fits of a tiny
model; the validation accuracies are steered by choosing the validation labels."""

import copy

import pandas as pd
import pytest
import torch

from balanced_experts.models import build_model, set_learnable, train_mode
from balanced_experts.training import TrainSettings, fit

BACKBONE = {"name": "resnet_cifar8", "width": 2, "embed_dim": 8}
NUM_VAL = 20  # accuracies are multiples of 5 %


def _fit(tmp_path, accuracies, settings, num_learnable=-1):
    """Fit a tiny model; at epoch k its validation accuracy is ``accuracies[k - 1]`` exactly:
    the validation labels are the model's own predictions on the first samples and another
    class on the rest. Returns the result, the state after every epoch and the log lines."""
    torch.manual_seed(0)
    model = build_model(BACKBONE, 4)
    parameters = set_learnable(model, num_learnable)
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 8, 8, generator=data), torch.arange(32) % 4
    val_x = torch.randn(NUM_VAL, 3, 8, 8, generator=data)
    states = []

    def val_batches():
        epoch = len(states) + 1
        states.append(copy.deepcopy(model.state_dict()))
        model.eval()
        with torch.no_grad():
            predicted = model(val_x).argmax(1)
        right = torch.arange(NUM_VAL) < round(accuracies[epoch - 1] * NUM_VAL / 100)
        return [(val_x, torch.where(right, predicted, (predicted + 1) % 4))]

    def train_batches(generator):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 8):
            yield x[order[start:start + 8]], y[order[start:start + 8]]

    lines = []
    result = fit(model, parameters, train_batches, val_batches, steps_per_epoch=4, settings=settings,
                 name="toy", metrics_path=tmp_path / "metrics.csv", log=lines.append)
    return model, result, states, lines


@pytest.mark.slow
@pytest.mark.parametrize("accuracies, patience, epochs, best, last", [
    # Best 70 % at epoch 5; epochs 6-9 are not strictly better (70 again at 6 and 9): stop at 5 + 4.
    ([40, 55, 55, 50, 70, 70, 65, 60, 70, 95, 95, 95], 4, 12, 5, 9),
    # Patience 1: the first epoch without improvement ends it.
    ([40, 55, 50, 95, 95], 1, 5, 2, 3),
    # Always improving: the schedule's last epoch ends it.
    ([10, 20, 30, 40, 50, 60], 3, 6, 6, 6),
    # No patience: all epochs run, the best one is kept.
    ([50, 90, 40, 30, 20], None, 5, 2, 5),
])
def test_early_stopping_after_exactly_patience_epochs_without_improvement(tmp_path, accuracies, patience,
                                                                          epochs, best, last):
    settings = TrainSettings(epochs=epochs, batch_size=8, lr=0.05, patience=patience, seed=0)
    model, result, states, lines = _fit(tmp_path, accuracies, settings)
    assert result["epochs_run"] == last and len(states) == last
    assert result["best_epoch"] == best and result["best_val_acc"] == accuracies[best - 1]
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, last + 1))
    assert metrics["val_acc"].tolist() == accuracies[:last]
    # The kept weights are those of the best epoch, not the last.
    for key, value in states[best - 1].items():
        assert torch.equal(result["state_dict"][key], value), key
    stopped = [line for line in lines if "stopping at epoch" in line]
    assert stopped == ([f"toy: no better val accuracy for {patience} epochs, stopping at epoch {last}"]
                       if last < epochs else [])


def _statistics(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("trunk")}


@pytest.mark.slow
@pytest.mark.parametrize("frozen_bn", ["train", "eval"])
def test_frozen_batchnorm_statistics_follow_frozen_bn(tmp_path, frozen_bn):
    """An expert that fine-tunes the classifier alone (num_learnable 1): its frozen trunk's
    weights never change; its BatchNorm running statistics are re-estimated on the training
    batches in train mode and stay the base model's in eval mode."""
    settings = TrainSettings(epochs=1, batch_size=8, lr=0.05, seed=0, frozen_bn=frozen_bn)
    torch.manual_seed(0)
    before = _statistics(build_model(BACKBONE, 4))
    model, result, _, _ = _fit(tmp_path, [50], settings, num_learnable=1)
    after = _statistics(model)
    assert after.keys() == before.keys()
    running = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert len(running) == 2 * sum(1 for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    for key in before:
        if key in running:
            assert torch.equal(after[key], before[key]) == (frozen_bn == "eval"), key
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(after[key], before[key]), key  # frozen weights, either way
    assert not torch.equal(model.classifier.weight, build_model(BACKBONE, 4).classifier.weight)


def test_train_mode_sets_module_modes():
    model = build_model(BACKBONE, 3)
    set_learnable(model, 3)  # classifier, fc and the last stage
    train_mode(model, "eval")
    assert not model.trunk.stem.training and not model.trunk.layer2.training
    assert model.trunk.layer3.training and model.fc.training and model.classifier.training
    train_mode(model, "train")
    assert all(module.training for module in model.modules())
    with pytest.raises(ValueError, match="frozen_bn must be one of train, eval"):
        train_mode(model, "frozen")
