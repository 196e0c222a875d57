"""SADE: its expert losses, the test-time aggregation, shifted test sets drawn from the test images."""

import math

import numpy as np
import pytest
import torch

from balanced_experts.baselines import train_prior
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import read_list
from balanced_experts.metrics import per_class_accuracy
from balanced_experts.multi_expert import build_multi_expert, mean_logits
from balanced_experts.sade import (
    AGNOSTIC_COLUMNS,
    AggregationSettings,
    agnostic_shift_table,
    aggregate,
    draw_shifted_test_set,
    drawn_accuracy_moments,
    expert_logits,
    inverse_prior,
    learn_aggregation,
    sade_loss,
    sade_prior,
    shifted_counts,
    shifted_test_sets,
)
from balanced_experts.shift import DISTRIBUTIONS, shift_table, shifted_prior
from balanced_experts.synthetic import SyntheticSpec, generate


def test_inverse_prior_reverses_the_frequency_order():
    """Class of frequency rank r (ties by class id) gets the prior of rank C - 1 - r."""
    counts = [5, 10, 10, 1]
    assert inverse_prior(counts) == pytest.approx(np.array([10, 1, 5, 10]) / 26)
    assert inverse_prior([3, 1]) == pytest.approx([0.25, 0.75])


def test_sade_loss_by_hand():
    """Zero logits, prior (3/4, 1/4): the softmax expert's cross-entropy is ln 2; the balanced
    softmax expert's is that of (3/4, 1/4); the inverse expert's (λ = 2) that of
    π / π̃^2 ∝ (12, 4/9), i.e. (27/28, 1/28)."""
    targets = torch.tensor([0, 1])
    expected = (math.log(2) + (math.log(4 / 3) + math.log(4)) / 2 + (math.log(28 / 27) + math.log(28)) / 2)
    loss = sade_loss([3, 1])
    assert loss(1)(torch.zeros(2, 3, 2), targets).item() == pytest.approx(expected, rel=1e-6)
    assert loss(7)(torch.zeros(2, 3, 2), targets).item() == pytest.approx(expected, rel=1e-6)
    # λ = 1 (SADE's Places-LT and iNaturalist configs): π / π̃ = (3, 1/3), i.e. (9/10, 1/10).
    expected_1 = math.log(2) + (math.log(4 / 3) + math.log(4)) / 2 + (math.log(10 / 9) + math.log(10)) / 2
    assert sade_loss([3, 1], 1.0)(1)(torch.zeros(2, 3, 2), targets).item() == pytest.approx(expected_1, rel=1e-6)
    with pytest.raises(ValueError, match="3 experts"):
        loss(1)(torch.zeros(2, 2, 2), targets)


def test_the_experts_mean_carries_the_geometric_mean_of_their_priors():
    """(π π̃^λ)^(1/3): for an exponential profile of imbalance ρ, uniform at λ = 1 and backward
    of imbalance ρ^(1/3) at λ = 2; the adapted shift column divides it out."""
    counts = [5, 10, 10, 1]
    for power in (1.0, 2.0):
        expected = (train_prior(counts) * inverse_prior(counts) ** power) ** (1 / 3)
        assert sade_prior(counts, power) == pytest.approx(expected / expected.sum())
    exponential = 500 * 100.0 ** (-np.arange(C) / (C - 1))
    assert sade_prior(exponential, 1.0) == pytest.approx(np.full(C, 1 / C))
    tilted = sade_prior(exponential)
    assert tilted == pytest.approx(shifted_prior(exponential, "backward", 100 ** (1 / 3)))


def test_each_sade_expert_learns_its_distribution():
    """Free logits (no input: only a prior can be learned) fitted to long-tailed labels by
    SADE's loss: expert 1 predicts the training prior π, expert 2 the uniform distribution,
    expert 3 π̃^λ normalised (the minimum of each cross-entropy)."""
    counts = np.array([60, 20, 5])
    targets = torch.tensor(np.repeat(np.arange(3), counts))
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=200, tolerance_change=1e-12, tolerance_grad=1e-10)
    loss = sade_loss(counts)(1)

    def closure():
        optimizer.zero_grad()
        value = loss(logits.expand(len(targets), 3, 3), targets)
        value.backward()
        return value

    optimizer.step(closure)
    probs = torch.softmax(logits.detach()[0], 1).double().numpy()
    tilted = inverse_prior(counts) ** 2
    assert probs[0] == pytest.approx(train_prior(counts), abs=1e-4)
    assert probs[1] == pytest.approx(np.full(3, 1 / 3), abs=1e-4)
    assert probs[2] == pytest.approx(tilted / tilted.sum(), abs=1e-4)


# ---------------------------------------------------------------------------
# Test-time aggregation on a constructed case

C, PER_CLASS = 10, 50
COUNTS = np.round(100 * 100.0 ** (-np.arange(C) / (C - 1))).astype(int)


def _constructed_case(seed: int):
    """Each image has its own evidence (signal on its class + noise) and two views of it (more
    noise). The three experts are ideal SADE experts: the evidence plus the log of the forward
    (training), uniform and backward prior."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), PER_CLASS)
    evidence = 2.0 * np.eye(C)[labels] + rng.normal(0, 1.0, (len(labels), C))
    priors = np.log(np.stack([train_prior(COUNTS), np.full(C, 1 / C), inverse_prior(COUNTS)]))

    def experts(x):
        return x[:, None, :] + priors[None]

    views = [experts(evidence + rng.normal(0, 1.0, evidence.shape)) for _ in range(2)]
    return labels, experts(evidence), views


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_aggregation_weights_move_towards_the_expert_of_the_test_distribution(seed):
    """SADE's settings (5 epochs, lr 0.1, batch 128): on forward-long-tailed test sets the
    forward expert gains weight, on backward ones the backward expert, on the uniform one
    the weights stay near equal; no label is used."""
    labels, _, (first, second) = _constructed_case(seed)
    weights = {}
    for distribution, imbalance, indices in shifted_test_sets(labels, COUNTS, seed):
        learned = learn_aggregation([(first[indices], second[indices])])
        assert learned.weights.sum() == pytest.approx(1) and learned.epochs_run == 5
        assert len(learned.stability) == 5
        weights[distribution, imbalance] = learned.weights
    for rho in (50, 25, 10):
        forward, backward = weights["forward", rho], weights["backward", rho]
        assert forward[0] > forward[1] > forward[2] and forward[0] > 1 / 3 + 0.03
        assert backward[2] > backward[1] > backward[0] and backward[2] > 1 / 3 + 0.03
    assert np.abs(weights["uniform", 1] - 1 / 3).max() < 0.02
    # The stronger the shift, the more weight on its expert.
    assert weights["forward", 50][0] > weights["forward", 2][0]
    assert weights["backward", 50][2] > weights["backward", 2][2]


@pytest.mark.slow
def test_aggregation_stops_when_an_expert_is_left_under_five_percent():
    labels, _, (first, second) = _constructed_case(0)
    indices = shifted_test_sets(labels, COUNTS, 0)[0][2]  # forward 50
    learned = learn_aggregation([(first[indices], second[indices])], AggregationSettings(lr=1.0))
    assert learned.epochs_run < 5 and np.round(learned.weights, 2).min() < 0.05
    assert learned.weights.argmax() == 0
    # Reproducible; the seed sets the order of the images.
    again = learn_aggregation([(first[indices], second[indices])], AggregationSettings(lr=1.0))
    assert np.array_equal(learned.weights, again.weights)
    with pytest.raises(ValueError, match="unknown test-time aggregation setting.*epoch"):
        AggregationSettings.from_config({"epoch": 3})


@pytest.mark.slow
def test_agnostic_shift_table_learns_on_each_drawn_set():
    labels, test, views = _constructed_case(0)
    table = agnostic_shift_table(test, [views], labels, COUNTS, seed=0)
    assert list(table.columns) == AGNOSTIC_COLUMNS + ["weight_0", "weight_1", "weight_2"]
    assert list(zip(table["distribution"], table["imbalance"])) == list(DISTRIBUTIONS)
    uniform = table[table["distribution"] == "uniform"].iloc[0]
    assert uniform["images"] == len(labels)
    # Its equal-weights accuracy on the whole test set is the experts' mean's.
    assert uniform["accuracy_equal_weights"] == pytest.approx(100 * np.mean(test.mean(1).argmax(1) == labels))
    distribution, imbalance, indices = shifted_test_sets(labels, COUNTS, 0)[0]
    weights = learn_aggregation([(views[0][indices], views[1][indices])]).weights
    row = table.iloc[0]
    assert [row[f"weight_{k}"] for k in range(3)] == pytest.approx(weights)
    assert row["accuracy"] == pytest.approx(100 * np.mean(aggregate(test[indices], weights).argmax(1)
                                                          == labels[indices]))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    generate(SyntheticSpec(num_classes=4, max_count=12, imbalance=4, val_per_class=2, test_per_class=5,
                           image_size=12, seed=0), root, log=lambda _: None)
    return root


def test_expert_logits_of_augmented_views(synthetic_root):
    """Each view's logits are one pass over the test images in list order through the model in
    eval mode; two augmented passes differ, the un-augmented one is the model's own output."""
    image_list = read_list(synthetic_root / "test.txt")
    source = ImageSource.open(synthetic_root, image_list, InputSpec(size=12, augment="crop_flip", preload=True, pad=2))
    model = build_multi_expert({"name": "resnet_cifar8", "width": 4, "embed_dim": 8}, 4)
    positions = np.arange(len(image_list))
    cpu, generator = torch.device("cpu"), torch.Generator().manual_seed(0)

    def views():
        return expert_logits(model, source.batches(positions, image_list.labels, 8, True, cpu, generator,
                                                   shuffle=False), len(positions))

    first, second = views(), views()
    plain = expert_logits(model, source.batches(positions, image_list.labels, 8, False, cpu), len(positions))
    assert first.shape == second.shape == plain.shape == (20, 3, 4) and first.dtype == np.float32
    assert not np.allclose(first, second)
    x, _ = next(source.batches(positions, image_list.labels, 20, False, cpu))
    with torch.no_grad():
        assert np.allclose(plain, model(x).numpy(), atol=1e-5)
        assert np.allclose(plain.mean(1), mean_logits(model(x)).numpy(), atol=1e-5)


# ---------------------------------------------------------------------------
# Shifted test sets drawn from the test images

def test_shifted_counts_follow_the_prior():
    available = np.full(C, PER_CLASS)
    forward = shifted_counts(available, shifted_prior(COUNTS, "forward", 50))
    assert forward[0] == PER_CLASS and forward[-1] == 1 and np.all(np.diff(forward) <= 0)
    ratio = shifted_prior(COUNTS, "forward", 50) / shifted_prior(COUNTS, "forward", 50).max()
    assert np.all(forward == np.floor(PER_CLASS * ratio + 1e-9))
    assert shifted_counts(available, shifted_prior(COUNTS, "uniform", 1)).tolist() == [PER_CLASS] * C
    backward = shifted_counts(available, shifted_prior(COUNTS, "backward", 10))
    # Classes here are in frequency order: backward is forward reversed.
    assert backward.tolist() == shifted_counts(available, shifted_prior(COUNTS, "forward", 10)).tolist()[::-1]
    # Unequal test sets: the class that limits the draw keeps all its images; none gets more than it has.
    uneven = np.array([10, 40, 40, 0])
    counts = shifted_counts(uneven, np.array([0.4, 0.3, 0.2, 0.1]))
    assert counts.tolist() == [10, 7, 5, 0] and np.all(counts <= uneven)


def test_drawn_test_sets_are_seeded_and_follow_their_counts():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(C), PER_CLASS))
    sets = shifted_test_sets(labels, COUNTS, seed=3)
    assert [(d, r) for d, r, _ in sets] == list(DISTRIBUTIONS)
    for (distribution, imbalance, indices), (_, _, again) in zip(sets, shifted_test_sets(labels, COUNTS, seed=3)):
        assert np.array_equal(indices, again)
        assert np.array_equal(indices, np.unique(indices))
        expected = shifted_counts(np.full(C, PER_CLASS), shifted_prior(COUNTS, distribution, imbalance))
        assert np.bincount(labels[indices], minlength=C).tolist() == expected.tolist()
    assert len(sets[5][2]) == len(labels)  # uniform: the whole test set
    other = shifted_test_sets(labels, COUNTS, seed=4)
    assert not np.array_equal(sets[0][2], other[0][2])


def _fixed_model(seed=0):
    """Predictions of a fixed model on a balanced test set: head classes mostly right, tail
    classes mostly wrong (accuracy falling from 90 % to 20 % with the frequency rank)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), PER_CLASS)
    right = rng.random(len(labels)) < np.linspace(0.9, 0.2, C)[labels]
    wrong = (labels + rng.integers(1, C, len(labels))) % C
    return labels, np.where(right, labels, wrong)


def test_drawing_test_sets_and_reweighting_agree():
    """For a fixed model, the accuracy on a drawn test set estimates the reweighted accuracy
    of test_shift.csv (shift.shift_table's `accuracy`): they differ by the draw's sampling
    error (hypergeometric per class, its std from drawn_accuracy_moments) and by rounding the
    counts (the drawn set's class shares are floor(50 * ratio) / N, not the prior exactly)."""
    labels, predictions = _fixed_model()
    probabilities = np.eye(C)[predictions] * 0.9 + 0.01  # the same top-1 as the predictions
    table = shift_table({"model": probabilities}, {"model": train_prior(COUNTS)}, labels, COUNTS)
    class_accuracy = per_class_accuracy(predictions, labels, C)
    available = np.full(C, PER_CLASS)
    for seed in range(3):
        for (distribution, imbalance, indices), (_, row) in zip(shifted_test_sets(labels, COUNTS, seed),
                                                                 table.iterrows()):
            assert (row["distribution"], row["imbalance"]) == (distribution, imbalance)
            drawn = 100 * np.mean(predictions[indices] == labels[indices])
            counts = np.bincount(labels[indices], minlength=C)
            mean, std = drawn_accuracy_moments(class_accuracy, counts, available)
            rounding = abs(mean - row["accuracy"])
            assert rounding < 1.5  # percentage points, the counts' rounding
            assert abs(drawn - row["accuracy"]) <= 4 * std + rounding + 1e-9
            if distribution == "uniform":  # every test image: no sampling error, no rounding
                assert std == 0 and drawn == pytest.approx(row["accuracy"])


def test_drawn_accuracy_moments_are_those_of_repeated_draws():
    """Over 400 draws the accuracy's mean and spread are drawn_accuracy_moments' (the mean to
    within 4 standard errors, the spread to within 20 %: its own error is about 3.5 %)."""
    labels, predictions = _fixed_model(1)
    class_accuracy = per_class_accuracy(predictions, labels, C)
    prior = shifted_prior(COUNTS, "backward", 25)
    rng = np.random.default_rng(7)
    accuracies = [100 * np.mean(predictions[i] == labels[i])
                  for i in (draw_shifted_test_set(labels, prior, rng) for _ in range(400))]
    counts = shifted_counts(np.full(C, PER_CLASS), prior)
    mean, std = drawn_accuracy_moments(class_accuracy, counts, np.full(C, PER_CLASS))
    assert std > 1
    assert abs(np.mean(accuracies) - mean) < 4 * std / np.sqrt(400)
    assert 0.8 < np.std(accuracies) / std < 1.2

