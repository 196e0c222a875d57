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
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .faults import ArtifactError
from .files import load_torch_file, save_torch_file


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


class CalibrationObjective:
    """The mean validation NLL of a :class:`JointCalibration` and its exact gradient.

    Equal to ``nll_loss(model(experts), labels)`` but computed without the N x C
    log-probabilities and without autograd, which at ImageNet-LT size (20,000 x 1,003) would
    cost most of a fit. Per row, with ``lse_e`` the logsumexp of expert e's calibrated
    outputs ``z_e`` (reject included) and ``log m_e = logsumexp(z_e[classes]) - lse_e`` the
    mass it gives its classes, the renormaliser is ``R = logsumexp_e(log m_e)`` (the class
    sets are disjoint) and a label owned by expert e has ``log p = z_e[label] - lse_e - R``.
    With ``w_e = m_e / sum(m)``, ``q_e`` the softmax over e's class outputs and ``o_e``
    whether e owns the label, the gradient of ``-log p`` with respect to the class outputs
    is ``q_e * (w_e (1 - m_e) + o_e m_e) - onehot(label)`` and with respect to the reject
    output ``(o_e - w_e)(1 - m_e)``; the scale and bias gradients are its column sums
    weighted by the logits and by one. Each evaluation reads each logit about eight times.

    Rows are processed in blocks whose intermediate tensors stay in the CPU cache: blocks of
    4,096 rows were the fastest at ImageNet-LT size on 2 cores, about 4x faster per
    evaluation than autograd over the same blocks.
    """

    def __init__(self, experts: list[ExpertOutputs], labels: torch.Tensor, prior_correction: bool,
                 block_rows: int = 4096):
        self.total = len(labels)
        self.shifts = [reject_prior_shift(e.open_ratio) if prior_correction else 0.0 for e in experts]
        # Everything that does not depend on the parameters is prepared once: per block and
        # expert the class logits (contiguous), the reject logit, and where the label is.
        self.blocks = []
        for start in range(0, self.total, block_rows):
            rows = slice(start, start + block_rows)
            block_labels = labels[rows]
            parts = []
            for expert in experts:
                logits = expert.logits[rows]
                k = len(expert.class_ids)
                column = torch.searchsorted(expert.class_ids, block_labels).clamp(max=k - 1)
                owned = expert.class_ids[column] == block_labels
                column = column[owned]
                parts.append({
                    "classes": logits[:, :k].contiguous(),
                    "reject": logits[:, k].contiguous(),
                    "owned": owned.to(logits.dtype),
                    "label_rows": owned.nonzero().squeeze(1),
                    "label_column": column,
                    "label_logit": logits[owned, column],
                })
            self.blocks.append(parts)

    @torch.no_grad()
    def __call__(self, model: JointCalibration, weight_decay: float = 0.0, grad: bool = True) -> float:
        """The mean NLL (plus the weight decay term); with ``grad``, the gradient is written
        to the parameters' ``.grad``."""
        scales, biases = list(model.scales), list(model.biases)
        grad_scales = [torch.zeros_like(s) for s in scales]
        grad_biases = [torch.zeros_like(b) for b in biases]
        loss = scales[0].new_zeros(())  # a tensor until the end: no device sync per block
        for parts in self.blocks:
            exps, sums, log_masses, picked = [], [], [], 0.0
            for part, scale, bias, shift in zip(parts, scales, biases, self.shifts):
                k = len(scale) - 1
                z = torch.addcmul(bias[:k], part["classes"], scale[:k])
                top = z.amax(1)
                exp = z.sub_(top[:, None]).exp_()  # exp(z - max over the class outputs)
                log_sum = exp.sum(1).log()
                # Reject output relative to the class logsumexp; log m = -softplus(that).
                reject = part["reject"] * scale[k] + (bias[k] + shift * scale[k]) - top - log_sum
                log_mass = -torch.nn.functional.softplus(reject)
                label_z = part["label_logit"] * scale[:k][part["label_column"]] + bias[:k][part["label_column"]]
                rows = part["label_rows"]
                # log p(label) before renormalisation: z[label] - lse = z[label] - top - log_sum + log m
                picked = picked + (label_z - top[rows] - log_sum[rows] + log_mass[rows]).sum()
                exps.append(exp)
                sums.append(log_sum)
                log_masses.append(log_mass)
            renorm = torch.logsumexp(torch.stack(log_masses), dim=0)
            loss += renorm.sum() - picked
            if not grad:
                continue
            for part, exp, log_sum, log_mass, grad_s, grad_b, shift in zip(
                    parts, exps, sums, log_masses, grad_scales, grad_biases, self.shifts):
                k = exp.shape[1]
                mass = log_mass.exp()
                share = (log_mass - renorm).exp()  # w_e
                owned = part["owned"]
                reject_grad = (owned - share) * (1 - mass)
                coefficient = (share * (1 - mass) + owned * mass) * (-log_sum).exp()
                grad_b[:k] += exp.T @ coefficient
                grad_s[:k] += exp.mul_(part["classes"]).T @ coefficient
                grad_b[:k].index_add_(0, part["label_column"], torch.ones_like(part["label_logit"]), alpha=-1)
                grad_s[:k].index_add_(0, part["label_column"], part["label_logit"], alpha=-1)
                grad_b[k] += reject_grad.sum()
                grad_s[k] += reject_grad @ part["reject"] + shift * reject_grad.sum()
        loss = loss / self.total
        if weight_decay:
            loss += weight_decay * sum(((s - 1) ** 2).sum() + (b**2).sum() for s, b in zip(scales, biases))
        if grad:
            for param, value, identity in [*zip(scales, grad_scales, [1.0] * len(scales)),
                                           *zip(biases, grad_biases, [0.0] * len(biases))]:
                value /= self.total
                if weight_decay:
                    value += 2 * weight_decay * (param - identity)
                param.grad = value
        return loss.item()


def fuse(experts: list[ExpertOutputs], num_classes: int, prior_correction: bool = False) -> torch.Tensor:
    """The fusion with identity scale and bias: the naive experts baseline."""
    with torch.no_grad():
        model = JointCalibration([len(e.class_ids) for e in experts], num_classes, prior_correction)
        return model(experts)


OPTIMIZERS = ("lbfgs", "sgd")
"""How the calibration is fit (``calibration.optimizer``; the schema's enum, a test holds
them equal): ``lbfgs``, full-batch L-BFGS on the validation NLL (ours); ``sgd``, the
original code's recipe (:class:`SGDRecipe`)."""


@dataclass(frozen=True)
class SGDRecipe:
    """The original ``jointCalibration.py``'s optimiser (``calibration.sgd``).

    Minibatch SGD on the NLL (``batch_size``, a fresh shuffle per epoch from ``seed``) with
    momentum and torch's weight decay (towards zero, scales included), the lr multiplied by
    ``gamma`` every ``step_size`` epochs; biases start at ``bias_init``. Each epoch's
    accuracy is counted on the batches as they are trained on (before each step), and the
    weights at the end of the best such epoch are kept (strictly better only); training
    stops after ``patience`` epochs in a row without a better one (its
    ``--stopping_criterion 30`` is ``patience: 31``). The original has no epoch limit.
    """

    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    step_size: int = 30
    gamma: float = 0.1
    patience: int = 31
    bias_init: float = 1.0
    seed: int = 5021

    @classmethod
    def from_config(cls, cfg: dict | None) -> "SGDRecipe":
        return cls(**(cfg or {}))


def select_rows(experts: list[ExpertOutputs], rows: torch.Tensor) -> list[ExpertOutputs]:
    """The experts' outputs on the samples ``rows`` (a minibatch, a fold)."""
    return [ExpertOutputs(e.logits[rows], e.class_ids, e.open_ratio) for e in experts]


def fit_sgd(model: JointCalibration, experts: list[ExpertOutputs], labels: torch.Tensor,
            recipe: SGDRecipe, log=print) -> dict:
    """Fit ``model`` in place with the original's SGD recipe (:class:`SGDRecipe`)."""
    with torch.no_grad():
        for bias in model.biases:
            bias.fill_(recipe.bias_init)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, recipe.step_size, recipe.gamma)
    generator = torch.Generator().manual_seed(recipe.seed)
    best_acc, best_epoch, best_state, epoch = -1.0, 0, None, 0
    while epoch - best_epoch < recipe.patience:
        epoch += 1
        correct = 0
        for rows in torch.randperm(len(labels), generator=generator).to(labels.device).split(recipe.batch_size):
            optimizer.zero_grad()
            log_probs = model(select_rows(experts, rows))
            torch.nn.functional.nll_loss(log_probs, labels[rows]).backward()
            optimizer.step()
            correct += (log_probs.argmax(1) == labels[rows]).sum().item()
        scheduler.step()
        acc = 100.0 * correct / len(labels)
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    log(f"calibration (sgd): best epoch {best_epoch} of {epoch}, running val top-1 {best_acc:.2f}%")
    return {"epochs": epoch, "best_epoch": best_epoch, "best_running_acc": best_acc}


def fit_calibration(
    experts: list[ExpertOutputs],
    labels: torch.Tensor,
    num_classes: int,
    optimizer: str = "lbfgs",
    max_iter: int = 200,
    weight_decay: float = 0.0,
    prior_correction: bool = True,
    log=print,
    block_rows: int = 4096,
    tolerance: float = 1e-5,
    sgd: dict | None = None,
) -> tuple[JointCalibration, dict]:
    """Fit the scales and biases on the NLL of ``labels`` with ``optimizer`` (:data:`OPTIMIZERS`).

    ``lbfgs``: full-batch L-BFGS from identity; ``weight_decay`` pulls towards identity; it
    stops when an iteration improves the NLL by less than ``tolerance`` (absolute), or after
    ``max_iter`` iterations. ``sgd``: :func:`fit_sgd` with the recipe ``sgd``
    (:class:`SGDRecipe`'s fields); the L-BFGS keys are not read.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"calibration.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    model = JointCalibration([len(e.class_ids) for e in experts], num_classes, prior_correction)
    model.to(labels.device)
    objective = CalibrationObjective(experts, labels, prior_correction, block_rows)
    start_nll = objective(model, grad=False)
    if optimizer == "sgd":
        recipe = SGDRecipe.from_config(sgd)
        details = {"optimizer": "sgd", **fit_sgd(model, experts, labels, recipe, log), "recipe": asdict(recipe)}
    else:
        lbfgs = torch.optim.LBFGS(
            model.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=tolerance,
        )

        def closure():
            return torch.tensor(objective(model, weight_decay))

        lbfgs.step(closure)
        details = {"evaluations": lbfgs.state[lbfgs._params[0]].get("func_evals", 0)}
    end_nll = objective(model, grad=False)
    log(f"calibration: val NLL {start_nll:.4f} -> {end_nll:.4f}"
        + (f" in {details['evaluations']} evaluations" if "evaluations" in details else ""))
    return model, {"val_nll_before": start_nll, "val_nll_after": end_nll, **details}


def calibration_state(model: JointCalibration, expert_names: list[str]) -> dict:
    return {
        "experts": list(expert_names),
        "num_classes": model.num_classes,
        "prior_correction": model.prior_correction,
        "scales": [s.detach().cpu() for s in model.scales],
        "biases": [b.detach().cpu() for b in model.biases],
    }


def save_calibration(path, model: JointCalibration, expert_names: list[str]) -> None:
    """Write the fitted calibration atomically (see :func:`calibration_state`)."""
    save_torch_file(calibration_state(model, expert_names), path)


def read_calibration(path) -> dict:
    """A calibration file's state; :class:`ArtifactError` (naming the file and the fix) if it
    is damaged or not one of ours."""
    state = load_torch_file(path)
    keys = {"experts", "num_classes", "prior_correction", "scales", "biases"}
    if not isinstance(state, dict) or not keys <= state.keys():
        raise ArtifactError(path, f"a torch file, but not a calibration of this workflow (no {sorted(keys)})")
    return state


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


def fused_predictions(model: JointCalibration, experts: list[ExpertOutputs], block_rows: int = 4096) -> torch.Tensor:
    """The top-1 class of ``model``'s fusion of ``experts``, computed ``block_rows`` rows at a
    time: the N x C log-probabilities never exist at once (rows are independent, so the
    predictions are those of all rows at once)."""
    total = experts[0].logits.shape[0]
    with torch.no_grad():
        return torch.cat([model(select_rows(experts, slice(start, start + block_rows))).argmax(1)
                          for start in range(0, max(total, 1), max(1, block_rows))])


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
