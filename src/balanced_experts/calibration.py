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


def prior_corrected(expert: ExpertOutputs) -> torch.Tensor:
    z = expert.logits.clone()
    z[:, -1] += reject_prior_shift(expert.open_ratio)
    return z


class JointCalibration(nn.Module):
    """Per-output scale and bias for every expert; ``forward`` gives log-probabilities over all classes."""

    def __init__(self, expert_sizes: list[int], num_classes: int, prior_correction: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.prior_correction = prior_correction
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(k + 1)) for k in expert_sizes])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(k + 1)) for k in expert_sizes])

    def _joined(self, experts: list[ExpertOutputs]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert's class log-probabilities side by side (N x sum k_e, reject dropped),
        and for each global class its column there (``sum k_e`` for a class no expert covers).

        The experts' class sets are disjoint, so the renormaliser is the logsumexp of these
        columns: no N x C scatter is needed, which at ImageNet-LT size is most of the cost.
        """
        log_ps = []
        for expert, scale, bias in zip(experts, self.scales, self.biases):
            z = prior_corrected(expert) if self.prior_correction else expert.logits
            log_ps.append(torch.log_softmax(z * scale + bias, dim=1)[:, :-1])
        joined = torch.cat(log_ps, dim=1)
        owned = torch.cat([e.class_ids for e in experts]).to(joined.device)
        column = torch.full((self.num_classes,), joined.shape[1], dtype=torch.long, device=joined.device)
        column[owned] = torch.arange(len(owned), device=joined.device)
        return joined, column

    def forward(self, experts: list[ExpertOutputs]) -> torch.Tensor:
        joined, column = self._joined(experts)
        # Classes no expert covers read a -inf column: probability zero.
        padded = torch.cat([joined, joined.new_full((len(joined), 1), float("-inf"))], dim=1)
        return padded[:, column] - torch.logsumexp(joined, dim=1, keepdim=True)

    def nll(self, experts: list[ExpertOutputs], labels: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of ``labels``: ``nll_loss(forward(experts), labels)``
        without building the N x C log-probabilities (labels must be covered by an expert)."""
        joined, column = self._joined(experts)
        picked = joined.gather(1, column[labels][:, None]).squeeze(1)
        return (torch.logsumexp(joined, dim=1) - picked).mean()


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
) -> tuple[JointCalibration, dict]:
    """Full-batch L-BFGS on the NLL of ``labels``; ``weight_decay`` pulls towards identity."""
    model = JointCalibration([len(e.class_ids) for e in experts], num_classes, prior_correction)
    model.to(labels.device)
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
        line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10,
    )

    def objective() -> torch.Tensor:
        nll = model.nll(experts, labels)
        if weight_decay:
            penalty = sum(((s - 1) ** 2).sum() for s in model.scales) + sum((b**2).sum() for b in model.biases)
            nll = nll + weight_decay * penalty
        return nll

    with torch.no_grad():
        start_nll = model.nll(experts, labels).item()

    def closure():
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

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
