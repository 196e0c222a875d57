"""Joint calibration of the experts into one distribution over all classes (METHOD.md section 5).

For expert ``e`` with ``k_e`` classes, logits ``z`` (``k_e + 1`` columns, reject last):

1. ``z[:, reject] += log((1 + r_e) / 2)`` -- the reject prior seen in training was
   ``1 / (1 + r_e)``; the validation protocol mixes 1:1.
2. ``z' = scale_e * z + bias_e`` with a learnable scale and bias per output.
3. ``p_e = softmax(z')``; the reject probability is dropped and the ``k_e`` class
   probabilities are scattered into the full class vector by the expert's class ids.
4. The full vector is renormalised to sum to one; the loss is the negative log-likelihood.

Computed in log space: ``log p(c) = log_softmax(z')[j] - logsumexp over all scattered
entries``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class ExpertOutputs:
    """One expert's logits on a split (reject column last) and what its columns mean."""

    logits: torch.Tensor  # N x (k+1)
    class_ids: torch.Tensor  # k global class ids
    open_ratio: float


def reject_prior_shift(open_ratio: float) -> float:
    return math.log((1.0 + open_ratio) / 2.0)


class JointCalibration(nn.Module):
    """Per-output scale and bias for every expert; ``forward`` gives log-probabilities over all classes."""

    def __init__(self, expert_sizes: list[int], num_classes: int, prior_correction: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.prior_correction = prior_correction
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(k + 1)) for k in expert_sizes])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(k + 1)) for k in expert_sizes])

    def _calibrated(self, expert: ExpertOutputs, scale, bias) -> torch.Tensor:
        """``scale * z + bias`` with the reject prior correction folded in as ``scale * shift``
        on the reject column (one column's work instead of a copy of the logits)."""
        z = expert.logits * scale + bias
        if self.prior_correction:
            z[:, -1] += reject_prior_shift(expert.open_ratio) * scale[-1]
        return z

    def forward(self, experts: list[ExpertOutputs]) -> torch.Tensor:
        n = experts[0].logits.shape[0]
        # Classes no expert covers get probability zero (log -inf).
        log_full = experts[0].logits.new_full((n, self.num_classes), float("-inf"))
        for expert, scale, bias in zip(experts, self.scales, self.biases):
            log_p = torch.log_softmax(self._calibrated(expert, scale, bias), dim=1)[:, :-1]
            log_full = log_full.index_copy(1, expert.class_ids, log_p)
        return log_full - torch.logsumexp(log_full, dim=1, keepdim=True)

    def nll(self, experts: list[ExpertOutputs], labels: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of ``labels``, as ``nll_loss(forward(experts), labels)``
        but without the N x C log-probabilities, which at ImageNet-LT size cost most of a fit.

        The experts' class sets are disjoint, so with ``lse_e`` the logsumexp of expert e's
        calibrated outputs, ``log m_e = logsumexp(its class outputs) - lse_e`` is the mass it
        gives its classes, the renormaliser is ``logsumexp_e(log m_e)``, and a label owned by
        expert e has ``log p = z_e[label] - lse_e - logsumexp_e(log m_e)``.
        """
        log_mass = []
        picked = torch.zeros(len(labels), dtype=experts[0].logits.dtype, device=labels.device)
        for expert, scale, bias in zip(experts, self.scales, self.biases):
            z = self._calibrated(expert, scale, bias)
            lse = torch.logsumexp(z, dim=1)
            log_mass.append(torch.logsumexp(z[:, :-1], dim=1) - lse)
            column = torch.searchsorted(expert.class_ids, labels).clamp(max=len(expert.class_ids) - 1)
            owned = expert.class_ids[column] == labels
            value = z.gather(1, column[:, None]).squeeze(1) - lse
            picked = picked + torch.where(owned, value, torch.zeros_like(value))
        return (torch.logsumexp(torch.stack(log_mass, dim=1), dim=1) - picked).mean()


def fuse(experts: list[ExpertOutputs], num_classes: int, prior_correction: bool = False) -> torch.Tensor:
    """The fusion with identity scale and bias: the naive experts baseline."""
    with torch.no_grad():
        model = JointCalibration([len(e.class_ids) for e in experts], num_classes, prior_correction)
        return model(experts)


def fit_calibration(
    experts: list[ExpertOutputs],
    labels: torch.Tensor,
    num_classes: int,
    max_iter: int = 200,
    weight_decay: float = 0.0,
    prior_correction: bool = True,
    log=print,
    block_rows: int = 2048,
    tolerance: float = 1e-4,
) -> tuple[JointCalibration, dict]:
    """Full-batch L-BFGS on the NLL of ``labels``; ``weight_decay`` pulls towards identity.

    Stops when an iteration improves the NLL by less than ``tolerance`` (absolute), or
    after ``max_iter`` iterations.
    """
    model = JointCalibration([len(e.class_ids) for e in experts], num_classes, prior_correction)
    model.to(labels.device)
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
        line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=tolerance,
    )

    # The NLL and its gradient are accumulated over blocks of rows: a block's intermediate
    # tensors stay in the CPU cache, which halves the time of an evaluation at ImageNet-LT size.
    blocks = [
        ([ExpertOutputs(e.logits[start:start + block_rows], e.class_ids, e.open_ratio) for e in experts],
         labels[start:start + block_rows])
        for start in range(0, len(labels), block_rows)
    ]

    def closure():
        optimizer.zero_grad()
        total = 0.0
        for block_experts, block_labels in blocks:
            loss = model.nll(block_experts, block_labels) * (len(block_labels) / len(labels))
            loss.backward()
            total += loss.item()
        if weight_decay:
            penalty = weight_decay * (sum(((s - 1) ** 2).sum() for s in model.scales)
                                      + sum((b**2).sum() for b in model.biases))
            penalty.backward()
            total += penalty.item()
        return torch.tensor(total)

    with torch.no_grad():
        start_nll = model.nll(experts, labels).item()

    optimizer.step(closure)
    with torch.no_grad():
        end_nll = model.nll(experts, labels).item()
    evaluations = optimizer.state[optimizer._params[0]].get("func_evals", 0)
    log(f"calibration: val NLL {start_nll:.4f} -> {end_nll:.4f} in {evaluations} evaluations")
    return model, {"val_nll_before": start_nll, "val_nll_after": end_nll, "evaluations": evaluations}


def calibration_state(model: JointCalibration, expert_names: list[str]) -> dict:
    return {
        "experts": list(expert_names),
        "num_classes": model.num_classes,
        "prior_correction": model.prior_correction,
        "scales": [s.detach().cpu() for s in model.scales],
        "biases": [b.detach().cpu() for b in model.biases],
    }


def calibration_from_state(state: dict) -> JointCalibration:
    model = JointCalibration([len(s) - 1 for s in state["scales"]], state["num_classes"], state["prior_correction"])
    with torch.no_grad():
        for param, value in zip(model.scales, state["scales"]):
            param.copy_(value)
        for param, value in zip(model.biases, state["biases"]):
            param.copy_(value)
    return model


def expert_outputs_from_table(table, device="cpu") -> ExpertOutputs:
    """:class:`ExpertOutputs` from a :class:`~balanced_experts.logits.LogitsTable` of an expert."""
    if not table.is_expert or table.output_class_ids[-1] != -1:
        raise ValueError(f"logits of {table.meta.get('model')!r} have no reject column last")
    return ExpertOutputs(
        logits=torch.from_numpy(np.ascontiguousarray(table.logits)).to(device),
        class_ids=torch.from_numpy(table.class_ids.copy()).to(device),
        open_ratio=float(table.meta["open_ratio"]),
    )


def oracle_predictions(experts: list[ExpertOutputs], labels: torch.Tensor) -> torch.Tensor:
    """Route each sample to the expert that owns its true class; that expert's best class.

    An upper bound on any fusion: the routing uses the label. The reject output is ignored.
    """
    predictions = torch.full_like(labels, -1)
    for expert in experts:
        owned = torch.isin(labels, expert.class_ids)
        best = expert.logits[owned][:, :-1].argmax(1)
        predictions[owned] = expert.class_ids[best]
    return predictions
