import math
from dataclasses import asdict

import pytest
import torch

from balanced_experts.calibration import (CalibrationObjective, ExpertOutputs, JointCalibration,
                                          SGDRecipe, calibration_from_state,
                                          calibration_state, fit_calibration, fuse, fused_predictions,
                                          oracle_predictions, reject_prior_shift, select_rows)


def two_experts():
    # Expert A owns classes 0 and 2 (open_ratio 1), expert B owns class 1 (open_ratio 3).
    a = ExpertOutputs(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0, 2]), open_ratio=1.0)
    b = ExpertOutputs(torch.tensor([[0.0, 0.0]]), torch.tensor([1]), open_ratio=3.0)
    return [a, b]


def test_reject_prior_shift():
    assert reject_prior_shift(1) == 0.0
    assert reject_prior_shift(16) == pytest.approx(math.log(8.5))
    assert reject_prior_shift(8) == pytest.approx(math.log(4.5))


def test_naive_fusion_hand_computed():
    # A: softmax(1, 0, 0) = (0.576117, 0.211942, [reject 0.211942]); B: softmax(0, 0) = (0.5, [0.5]).
    # Scatter -> (0.576117, 0.5, 0.211942), sum 1.288059 -> (0.447275, 0.388181, 0.164543).
    probs = fuse(two_experts(), 3, prior_correction=False).exp()
    assert probs[0].tolist() == pytest.approx([0.447275, 0.388181, 0.164543], abs=1e-5)


def test_prior_corrected_fusion_hand_computed():
    # B's reject logit gets log((1 + 3) / 2) = log 2: softmax(0, log 2) = (1/3, [2/3]).
    # Scatter -> (0.576117, 0.333333, 0.211942), sum 1.121392 -> (0.513753, 0.297249, 0.188998).
    probs = fuse(two_experts(), 3, prior_correction=True).exp()
    assert probs[0].tolist() == pytest.approx([0.513753, 0.297249, 0.188998], abs=1e-5)


def test_scale_and_bias_apply_per_output_before_the_softmax():
    model = JointCalibration([2, 1], 3, prior_correction=False)
    with torch.no_grad():
        model.scales[0].copy_(torch.tensor([2.0, 1.0, 1.0]))  # A's class-0 logit 1 -> 2
        model.biases[1].copy_(torch.tensor([0.0, math.log(3.0)]))  # B's reject prior x3
    probs = model(two_experts()).exp()[0]
    a0, a2 = math.exp(2) / (math.exp(2) + 2), 1 / (math.exp(2) + 2)
    b1 = 1 / (1 + 3)
    total = a0 + b1 + a2
    assert probs.tolist() == pytest.approx([a0 / total, b1 / total, a2 / total], abs=1e-6)


def synthetic_expert_logits(n_per_class=40, seed=0):
    """Three experts over 9 classes whose reject outputs are badly biased."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(9).repeat_interleave(n_per_class)
    experts = []
    for owned, ratio, reject_bias in (([0, 1, 2], 16, 3.0), ([3, 4, 5], 8, 1.0), ([6, 7, 8], 8, -2.0)):
        owned_t = torch.tensor(owned)
        logits = torch.randn(len(labels), 4, generator=g)
        for j, c in enumerate(owned):
            logits[labels == c, j] += 3.0
        logits[~torch.isin(labels, owned_t), 3] += 3.0
        logits[:, 3] += reject_bias
        experts.append(ExpertOutputs(logits, owned_t, ratio))
    return experts, labels


def test_fit_lowers_nll_and_round_trips():
    experts, labels = synthetic_expert_logits()
    before = torch.nn.functional.nll_loss(fuse(experts, 9, prior_correction=True), labels).item()
    model, summary = fit_calibration(experts, labels, 9, max_iter=100, log=lambda _: None)
    assert summary["val_nll_before"] == pytest.approx(before, rel=1e-5)
    assert summary["val_nll_after"] < 0.8 * before
    with torch.no_grad():
        log_probs = model(experts)
        assert torch.allclose(log_probs.exp().sum(1), torch.ones(len(labels)), atol=1e-5)
        restored = calibration_from_state(calibration_state(model, ["many", "medium", "few"]))
        assert torch.allclose(restored(experts), log_probs)
    # On held-out samples of the same kind the calibrated fusion is more accurate.
    test_experts, test_labels = synthetic_expert_logits(seed=1)
    with torch.no_grad():
        naive = (fuse(test_experts, 9).argmax(1) == test_labels).float().mean()
        calibrated = (model(test_experts).argmax(1) == test_labels).float().mean()
    assert calibrated > naive


def test_the_fusion_by_blocks_of_rows_is_the_fusion_of_all_rows_bit_for_bit():
    """calibrate.py's val accuracy and the report's fused probabilities are computed a block
    of rows at a time: the same numbers as all rows at once."""
    experts, labels = synthetic_expert_logits(n_per_class=13)
    model, _ = fit_calibration(experts, labels, 9, max_iter=20, log=lambda _: None)
    with torch.no_grad():
        whole = model(experts)
        for block_rows in (1, 2, 10, 4096):
            assert torch.equal(fused_predictions(model, experts, block_rows), whole.argmax(1))
            parts = [model(select_rows(experts, slice(s, s + block_rows))) for s in range(0, len(labels), block_rows)]
            assert torch.equal(torch.cat(parts), whole)
            naive = [fuse(select_rows(experts, slice(s, s + block_rows)), 9) for s in range(0, len(labels), block_rows)]
            assert torch.equal(torch.cat(naive), fuse(experts, 9))


@pytest.mark.parametrize("prior_correction", [True, False])
@pytest.mark.parametrize("block_rows", [7, 1024])
def test_objective_value_and_gradient_match_autograd(prior_correction, block_rows):
    """The hand-derived gradient against autograd through the full N x C fusion, in float64,
    at parameters away from identity, with a class no expert covers and weight decay."""
    experts, labels = synthetic_expert_logits(n_per_class=5, seed=3)
    experts = [ExpertOutputs(e.logits.double() * 2, e.class_ids, e.open_ratio) for e in experts]
    experts[2] = ExpertOutputs(experts[2].logits[:, [0, 1, 3]], experts[2].class_ids[:2], 8)  # class 8 uncovered
    keep = labels != 8
    experts = [ExpertOutputs(e.logits[keep], e.class_ids, e.open_ratio) for e in experts]
    labels = labels[keep]
    model = JointCalibration([3, 3, 2], 9, prior_correction).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    weight_decay = 0.01
    reference = torch.nn.functional.nll_loss(model(experts), labels) + weight_decay * sum(
        ((s - 1) ** 2).sum() + (b**2).sum() for s, b in zip(model.scales, model.biases))
    reference.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    loss = CalibrationObjective(experts, labels, prior_correction, block_rows)(model, weight_decay)
    assert loss == pytest.approx(reference.item(), rel=1e-12)
    for got, want in zip([p.grad for p in model.parameters()], expected):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_oracle_routes_to_the_owning_expert():
    a = ExpertOutputs(torch.tensor([[5.0, 1.0, 9.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 2]), 1.0)
    b = ExpertOutputs(torch.tensor([[1.0, 0.0], [1.0, 9.0]]), torch.tensor([1]), 1.0)
    # Sample 0 (label 0) goes to A: best class among {0, 2} is 0 (reject ignored).
    # Sample 1 (label 1) goes to B: its only class is 1, whatever the reject says.
    assert oracle_predictions([a, b], torch.tensor([0, 1])).tolist() == [0, 1]
    assert oracle_predictions([a, b], torch.tensor([2, 1])).tolist() == [0, 1]


def _hand_stepped_sgd(experts, labels, num_classes, recipe):
    """The original jointCalibration.py's loop written out by hand: its fusion in probability
    space (softmax per expert, reject dropped, scatter, renormalise, log), torch's SGD update
    (weight decay into the gradient, then the momentum buffer), StepLR per epoch, and the
    end-of-epoch weights of the epoch with the best running accuracy."""
    scales = [torch.ones(len(e.class_ids) + 1, requires_grad=True) for e in experts]
    biases = [torch.full((len(e.class_ids) + 1,), recipe.bias_init, requires_grad=True) for e in experts]
    params = [*scales, *biases]
    buffers = [None] * len(params)
    generator = torch.Generator().manual_seed(recipe.seed)
    best, best_epoch, kept, epoch = -1.0, 0, None, 0
    while epoch <= best_epoch + recipe.patience - 1:
        epoch += 1
        lr = recipe.lr * recipe.gamma ** ((epoch - 1) // recipe.step_size)
        correct = 0
        for rows in torch.randperm(len(labels), generator=generator).split(recipe.batch_size):
            probs = torch.zeros(len(rows), num_classes)
            for e, s, b in zip(experts, scales, biases):
                z = e.logits[rows].clone()
                z[:, -1] += math.log((1 + e.open_ratio) / 2)
                probs[:, e.class_ids] = torch.softmax(s * z + b, dim=1)[:, :-1]
            log_probs = torch.log(probs / probs.sum(1, keepdim=True))
            loss = -log_probs[torch.arange(len(rows)), labels[rows]].mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(params, grads)):
                    g = g + recipe.weight_decay * p
                    buffers[i] = g.clone() if buffers[i] is None else recipe.momentum * buffers[i] + g
                    p -= lr * buffers[i]
            correct += (log_probs.argmax(1) == labels[rows]).sum().item()
        if 100.0 * correct / len(labels) > best:
            best, best_epoch = 100.0 * correct / len(labels), epoch
            kept = [p.detach().clone() for p in params]
    return kept, best_epoch, epoch


@pytest.mark.slow  # SGD steps, which the fast tier's guard takes for training (a second's work)
def test_the_sgd_recipe_is_the_originals_loop_stepped_by_hand():
    experts, labels = synthetic_expert_logits(n_per_class=12, seed=4)
    recipe = SGDRecipe(batch_size=16, lr=0.1, step_size=2, patience=5, seed=7)
    model, summary = fit_calibration(experts, labels, 9, optimizer="sgd", sgd=asdict(recipe), log=lambda _: None)
    kept, best_epoch, epochs = _hand_stepped_sgd(experts, labels, 9, recipe)
    assert (summary["best_epoch"], summary["epochs"]) == (best_epoch, epochs)
    # The patience rule ended it, after the lr had stepped down at least once.
    assert epochs == best_epoch + recipe.patience and best_epoch > recipe.step_size
    for got, want in zip([*model.scales, *model.biases], kept):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    assert summary["val_nll_after"] < summary["val_nll_before"]
    assert summary["recipe"] == asdict(recipe)


def test_an_unknown_optimizer_is_named():
    experts, labels = synthetic_expert_logits(n_per_class=2)
    with pytest.raises(ValueError, match="calibration.optimizer must be one of lbfgs, sgd, got 'adam'"):
        fit_calibration(experts, labels, 9, optimizer="adam")
