"""The training loop's epoch checkpoint: an interrupted fit resumes bit-identically; a stale one is ignored."""

import pandas as pd
import pytest
import torch

from balanced_experts.models import build_model, set_learnable
from balanced_experts.training import NonFiniteLoss, TrainSettings, fit, run_fingerprint

SETTINGS = TrainSettings(epochs=4, batch_size=8, lr=0.05, seed=0)


class Interrupted(Exception):
    """Stands in for the job being killed at the start of an epoch."""


def _data():
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(40, 3, 8, 8, generator=generator)
    y = torch.arange(40) % 4
    return x, y


def _fit(tmp_path, fingerprint="same", interrupt_at_epoch=None, settings=SETTINGS, lines=None):
    torch.manual_seed(0)
    model = build_model({"name": "resnet_cifar8", "width": 2, "embed_dim": 8}, 4)
    parameters = set_learnable(model, -1)
    x, y = _data()
    epochs_started = []

    def train_batches(generator):
        epochs_started.append(1)
        if len(epochs_started) == interrupt_at_epoch:
            raise Interrupted
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            yield x[idx], y[idx]

    result = fit(model, parameters, train_batches, lambda: [(x, y)], steps_per_epoch=5,
                 settings=settings, name="toy", metrics_path=tmp_path / "metrics.csv",
                 log=(lines if lines is not None else []).append,
                 resume_path=tmp_path / "resume.pt", fingerprint=fingerprint)
    return model, result


@pytest.mark.slow
def test_interrupted_fit_resumes_to_identical_weights(tmp_path):
    reference_model, reference = _fit(tmp_path / "whole")
    with pytest.raises(Interrupted):
        _fit(tmp_path / "killed", interrupt_at_epoch=3)
    assert (tmp_path / "killed/resume.pt").exists()
    lines = []
    model, result = _fit(tmp_path / "killed", lines=lines)
    assert any("resuming from epoch 2 of 4" in line for line in lines)
    assert result["best_epoch"] == reference["best_epoch"]
    for key, value in reference_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, result["state_dict"][key]), key
    metrics = pd.read_csv(tmp_path / "killed/metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3, 4]
    expected = pd.read_csv(tmp_path / "whole/metrics.csv")
    assert metrics.drop(columns="seconds").equals(expected.drop(columns="seconds"))


@pytest.mark.slow
def test_finished_fit_keeps_its_result_and_restores_it_without_training(tmp_path):
    reference_model, reference = _fit(tmp_path)
    kept = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert kept["stopped"] and kept["epoch"] == SETTINGS.epochs
    assert "optimizer" not in kept and "model" not in kept  # only what the result is made of
    lines = []
    _, restored = _fit(tmp_path, interrupt_at_epoch=1, lines=lines)  # an epoch would raise
    assert any("toy: training had finished (4 epochs" in line and "no epoch runs again" in line for line in lines)
    assert restored["best_epoch"] == reference["best_epoch"]
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, restored["state_dict"][key]), key
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2, 3, 4]


@pytest.mark.slow
def test_checkpoint_of_other_settings_is_ignored(tmp_path):
    with pytest.raises(Interrupted):
        _fit(tmp_path, fingerprint="old settings", interrupt_at_epoch=3)
    lines = []
    _, result = _fit(tmp_path, fingerprint="new settings", lines=lines)
    assert any("ignoring epoch checkpoint" in line for line in lines)
    assert not any("resuming" in line for line in lines)
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2, 3, 4]


@pytest.mark.slow
def test_unreadable_checkpoint_is_ignored(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "resume.pt").write_bytes(b"truncated")
    lines = []
    _fit(tmp_path, lines=lines)
    assert any("ignoring unreadable epoch checkpoint" in line for line in lines)


def test_fingerprint_covers_settings_and_file_contents(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("a.png 0\n")
    first = run_fingerprint({"lr": 0.1}, [data])
    assert run_fingerprint({"lr": 0.1}, [data]) == first
    assert run_fingerprint({"lr": 0.2}, [data]) != first
    data.write_text("a.png 1\n")
    assert run_fingerprint({"lr": 0.1}, [data]) != first


@pytest.mark.slow
def test_diverging_loss_names_model_and_epoch(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"toy: training loss is (nan|inf) at epoch \d+"):
        _fit(tmp_path, settings=TrainSettings(epochs=4, batch_size=8, lr=1e12, seed=0))
