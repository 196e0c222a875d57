"""Accuracy under shifted test label distributions (SADE's forward / backward long tails)."""

import numpy as np
import pandas as pd
import pytest

from balanced_experts.shift import (DISTRIBUTIONS, SHIFT_COLUMNS, adapted_predictions, assumed_prior,
                                    expected_accuracy, frequency_rank, log_probabilities, shifted_prior,
                                    shift_table)


def test_distributions_run_forward_to_backward():
    assert DISTRIBUTIONS[0] == ("forward", 50) and DISTRIBUTIONS[5] == ("uniform", 1)
    assert DISTRIBUTIONS[-1] == ("backward", 50)
    assert [rho for kind, rho in DISTRIBUTIONS if kind == "forward"] == [50, 25, 10, 5, 2]
    assert [rho for kind, rho in DISTRIBUTIONS if kind == "backward"] == [2, 5, 10, 25, 50]


def test_prior_follows_the_training_order_and_its_reverse():
    counts = np.array([5, 40, 10, 40])  # ranks: class 1 then 3 (tie, by id), 2, 0
    assert frequency_rank(counts).tolist() == [3, 0, 2, 1]
    forward = shifted_prior(counts, "forward", 8)
    # weights 8^(-r/3) for ranks 0..3 are 1, 1/2, 1/4, 1/8 (sum 15/8)
    expected = np.array([1 / 8, 1, 1 / 4, 1 / 2]) / (15 / 8)
    np.testing.assert_allclose(forward, expected)
    np.testing.assert_allclose(shifted_prior(counts, "backward", 8), np.array([1, 1 / 8, 1 / 2, 1 / 4]) / (15 / 8))
    np.testing.assert_allclose(shifted_prior(counts, "uniform", 1), np.full(4, 0.25))
    assert forward.max() / forward.min() == pytest.approx(8)
    with pytest.raises(ValueError, match="unknown test distribution"):
        shifted_prior(counts, "sideways", 2)


def test_expected_accuracy_weights_per_class_accuracy_by_the_prior():
    accuracy = np.array([100.0, 50.0, 0.0, np.nan])  # class 3 has no test image
    prior = np.array([0.5, 0.25, 0.125, 0.125])
    # (0.5 * 100 + 0.25 * 50 + 0.125 * 0) / 0.875
    assert expected_accuracy(accuracy, prior) == pytest.approx(62.5 / 0.875)


def test_uniform_equals_the_balanced_accuracy_and_adaptation_to_the_assumed_prior_changes_nothing():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 4)  # balanced: 4 test images per class
    probs = rng.dirichlet(np.ones(5), size=len(labels))
    counts = np.array([50, 20, 10, 5, 1])
    table = shift_table({"m": probs}, {"m": np.full(5, 0.2)}, labels, counts)
    uniform = table[table["distribution"] == "uniform"].iloc[0]
    assert uniform["accuracy"] == pytest.approx(100 * (probs.argmax(1) == labels).mean())
    assert uniform["accuracy_adapted"] == pytest.approx(uniform["accuracy"])
    assert len(table) == len(DISTRIBUTIONS)


def test_adapting_to_the_true_prior_helps_where_it_must():
    # Three classes; the model is unsure between class 0 and class 1 on half of class 0's
    # images and on one of class 1's. Under a forward distribution class 0 dominates, and
    # adaptation moves the unsure images to class 0: more of the heavy class right, one
    # light-class image lost.
    counts = np.array([100, 10, 1])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    unsure_0 = [0.45, 0.55, 0.0]
    unsure_1 = [0.45, 0.55, 0.0]
    probs = np.array([unsure_0, unsure_0, [0.9, 0.1, 0], [0.9, 0.1, 0],
                      unsure_1, [0.1, 0.9, 0], [0.1, 0.9, 0], [0.1, 0.9, 0],
                      [0, 0.1, 0.9], [0, 0.1, 0.9], [0, 0.1, 0.9], [0, 0.1, 0.9]])
    uniform = np.full(3, 1 / 3)
    table = shift_table({"m": probs}, {"m": uniform}, labels, counts).set_index(["distribution", "imbalance"])
    row = table.loc[("forward", 50)]
    # Plain: class accuracies 50 / 100 / 100; adapted: 100 / 75 / 100.
    prior = shifted_prior(counts, "forward", 50)
    assert row["accuracy"] == pytest.approx(prior @ [50, 100, 100])
    assert row["accuracy_adapted"] == pytest.approx(prior @ [100, 75, 100])
    assert row["accuracy_adapted"] > row["accuracy"]
    for (kind, rho), values in table.iterrows():
        assert values["accuracy_adapted"] >= values["accuracy"] - 1e-9, (kind, rho)


def test_adapted_predictions_add_the_log_prior_ratio():
    log_probs = log_probabilities(np.array([[0.6, 0.4, 0.0]]))
    assert adapted_predictions(log_probs, [0.5, 0.5, 0.0 + 1e-12], [0.5, 0.5, 1e-12]).tolist() == [0]
    assert adapted_predictions(log_probs, [0.1, 0.9, 1e-12], [0.5, 0.5, 1e-12]).tolist() == [1]


def test_assumed_priors():
    counts = np.array([60, 30, 8, 2])
    split = np.array(["many", "many", "few", "few"], dtype=object)
    np.testing.assert_allclose(assumed_prior("base", counts, split, 0.0), counts / 100)
    np.testing.assert_allclose(assumed_prior("base_logit_adjusted", counts, split, 1.0), np.full(4, 0.25))
    tempered = (counts / 100) ** 0.5
    np.testing.assert_allclose(assumed_prior("base_logit_adjusted", counts, split, 0.5), tempered / tempered.sum())
    np.testing.assert_allclose(assumed_prior("experts_calibrated", counts, split, 0.0), np.full(4, 0.25))
    # Each split carries half the mass, spread by training counts within it.
    np.testing.assert_allclose(assumed_prior("experts_naive", counts, split, 0.0), [1 / 3, 1 / 6, 0.4, 0.1])


def test_the_shift_table_is_its_methods_tables_in_order_for_any_block_of_rows():
    """shift_table of several methods is each method's own table, concatenated in the
    methods' order; the rows taken at a time change no number."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 5)
    counts = np.array([80, 40, 20, 9, 4, 2])
    probs = {m: rng.dirichlet(np.ones(6) * 0.3, size=len(labels)) for m in ("a", "b", "c")}
    priors = {"a": np.full(6, 1 / 6), "b": counts / counts.sum(), "c": np.full(6, 1 / 6)}
    table = shift_table(probs, priors, labels, counts)
    assert table["method"].tolist() == [m for m in "abc" for _ in DISTRIBUTIONS]
    each = pd.concat([shift_table({m: p}, {m: priors[m]}, labels, counts) for m, p in probs.items()],
                     ignore_index=True)
    pd.testing.assert_frame_equal(table, each, check_exact=True)
    for block_rows in (1, 7, len(labels)):
        pd.testing.assert_frame_equal(shift_table(probs, priors, labels, counts, block_rows=block_rows), table,
                                      check_exact=True)
    assert shift_table({}, {}, labels, counts).columns.tolist() == SHIFT_COLUMNS
