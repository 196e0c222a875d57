import math

import numpy as np
import pytest

from balanced_experts.baselines import choose_tau, log_prior, logit_adjusted, softmax, tau_normalised
from balanced_experts.metrics import expected_calibration_error, negative_log_likelihood, reliability_bins


def test_logit_adjustment_hand_computed():
    # Prior (3/4, 1/4): log prior (-0.287682, -1.386294); tau = 1 adds (0.287682, 1.386294).
    adjusted = logit_adjusted([[2.0, 1.0]], [30, 10], tau=1.0)
    assert adjusted[0].tolist() == pytest.approx([2.287682, 2.386294], abs=1e-6)
    # The head class wins before, the tail class after the adjustment.
    assert np.argmax([[2.0, 1.0]]) == 0 and adjusted.argmax() == 1
    assert logit_adjusted([[2.0, 1.0]], [30, 10], tau=0.0).tolist() == [[2.0, 1.0]]
    assert log_prior([1, 1]).tolist() == pytest.approx([math.log(0.5)] * 2)


def test_tau_norm_hand_computed():
    weight = np.array([[3.0, 4.0], [0.0, 1.0]])  # row norms 5 and 1
    bias = np.array([0.5, -0.5])
    logits = np.array([[10.5, 1.5]])  # = f . w + b with f . w = (10, 2)
    # Bias dropped: (10, 2). tau = 1: (10 / 5, 2 / 1) = (2, 2); tau = 0: (10, 2); tau = 0.5: 10 / sqrt(5).
    assert tau_normalised(logits, weight, bias, 1.0)[0].tolist() == pytest.approx([2.0, 2.0])
    assert tau_normalised(logits, weight, bias, 0.0)[0].tolist() == pytest.approx([10.0, 2.0])
    assert tau_normalised(logits, weight, bias, 0.5)[0].tolist() == pytest.approx([10 / math.sqrt(5), 2.0])


def test_choose_tau_maximises_validation_accuracy():
    logits = np.array([[2.0, 1.0], [2.0, 1.5], [3.0, 0.0]])
    labels = np.array([1, 1, 0])
    counts = [30, 10]
    # Sample 0 flips to class 1 for tau > 1/1.0986 = 0.91, sample 1 for tau > 0.455,
    # sample 2 stays class 0 until tau > 2.73: the best taus are (0.91, 2], smallest on the grid 0.95.
    tau, acc = choose_tau(lambda z, t: logit_adjusted(z, counts, t), logits, labels)
    assert tau == pytest.approx(0.95)
    assert acc == pytest.approx(100.0)
    assert choose_tau(lambda z, t: logit_adjusted(z, counts, t), logits, labels, block_rows=1) == (tau, acc)


def test_choose_tau_and_softmax_by_blocks_of_rows_are_the_whole_arrays_bit_for_bit():
    """The report takes rows a block at a time: the chosen tau, its accuracy and the
    probabilities are those of all rows at once, bit for bit (the mean as numpy's)."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(53, 7)).astype(np.float32) * 3
    labels, counts = rng.integers(0, 7, 53), np.array([90, 50, 30, 12, 6, 3, 2])
    weight, bias = rng.normal(size=(7, 5)), rng.normal(size=7)
    for transform in (lambda z, t: logit_adjusted(z, counts, t), lambda z, t: tau_normalised(z, weight, bias, t)):
        whole = choose_tau(transform, logits, labels)
        assert whole[1] == 100.0 * float((transform(logits, whole[0]).argmax(1) == labels).mean())
        for block_rows in (1, 4, 53, 1000):
            assert choose_tau(transform, logits, labels, block_rows=block_rows) == whole
    assert np.array_equal(tau_normalised(logits, weight, bias, 0.7, norms=np.linalg.norm(weight, axis=1)),
                          tau_normalised(logits, weight, bias, 0.7))
    probs = softmax(logits)
    assert np.array_equal(np.concatenate([softmax(logits[i:i + 5]) for i in range(0, 53, 5)]), probs)
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)  # the textbook form, out of place
    assert np.array_equal(probs, np.exp(z) / np.exp(z).sum(1, keepdims=True))


def test_ece_hand_computed():
    # Four samples, 15 bins. Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.3 (right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # Bins: {0.9, 0.9}: conf 0.9, acc 0.5 -> gap 0.4 x 2; {0.6}: gap 0.4; {0.7 (top-1 of row 4)}: gap 0.3.
    # ECE = (2 * 0.4 + 0.4 + 0.3) / 4 = 0.375.
    assert expected_calibration_error(probs, labels) == pytest.approx(37.5)
    count, mean_conf, accuracy = reliability_bins(probs.max(1), probs.argmax(1) == labels, 15)
    assert count.sum() == 4 and count[13] == 2  # 0.9 lies in (13/15, 14/15]
    assert mean_conf[13] == pytest.approx(0.9) and accuracy[13] == pytest.approx(0.5)
    perfect = np.eye(3)
    assert expected_calibration_error(perfect, [0, 1, 2]) == 0.0


def test_nll_hand_computed():
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert negative_log_likelihood(probs, [0, 1]) == pytest.approx((math.log(2) - math.log(0.75)) / 2)
    assert softmax([[0.0, math.log(3)]])[0].tolist() == pytest.approx([0.25, 0.75])
