"""The one training loop: base model and experts alike.

Reads top to bottom: build optimizer and schedule, then per epoch train, validate,
log a line, append to the metrics CSV, keep the best weights, stop early on patience.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .models import train_mode


@dataclass(frozen=True)
class TrainSettings:
    """One model's training settings: the ``base`` or ``experts.<split>`` config section."""

    epochs: int = 30  # maximum number of epochs
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # "cosine" | "step" | "constant"
    step_size: int = 10
    gamma: float = 0.1
    warmup_epochs: int = 0
    patience: int | None = None  # epochs without a better val accuracy before stopping
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainSettings":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in cfg.items() if k in known})


class NonFiniteLoss(RuntimeError):
    pass


def make_scheduler(optimizer, settings: TrainSettings, steps_per_epoch: int):
    """A per-step LambdaLR: linear warmup, then cosine / step / constant."""
    total = max(1, settings.epochs * steps_per_epoch)
    warmup = settings.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if settings.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if settings.scheduler == "step":
            return settings.gamma ** ((step // steps_per_epoch) // settings.step_size)
        if settings.scheduler == "constant":
            return 1.0
        raise ValueError(f"unknown scheduler {settings.scheduler!r}")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) over ``batches``."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def fit(
    model: nn.Module,
    parameters: list[nn.Parameter],
    train_batches: Callable[[torch.Generator], Iterable],
    val_batches: Callable[[], Iterable],
    steps_per_epoch: int,
    settings: TrainSettings,
    name: str,
    metrics_path: str | Path,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``parameters`` of ``model``; returns the best epoch's state dict and summary.

    ``train_batches(generator)`` yields one epoch of shuffled training batches;
    ``val_batches()`` yields the validation batches. The best epoch is the one with the
    highest validation accuracy; training stops after ``settings.patience`` epochs
    without improvement (if set) or at ``settings.epochs``.
    """
    optimizer = torch.optim.SGD(
        parameters, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch)
    generator = torch.Generator().manual_seed(settings.seed)
    criterion = nn.CrossEntropyLoss()

    metrics_path = Path(metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    with metrics_path.open("w", newline="") as handle:
        csv.writer(handle).writerow(fields)

    best_acc, best_epoch, best_state = -1.0, 0, None
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        epoch_start = time.perf_counter()
        train_mode(model)
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, correct, count = 0.0, 0, 0
        for x, y in train_batches(generator):
            logits = model(x)
            loss = criterion(logits, y)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"{name}: loss is {loss.item()} at epoch {epoch}; lower the lr?")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
        train_loss, train_acc = loss_sum / max(count, 1), 100.0 * correct / max(count, 1)
        val_loss, val_acc = evaluate(model, val_batches())
        seconds = time.perf_counter() - epoch_start

        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        elapsed = time.perf_counter() - started
        remaining = (settings.epochs - epoch) * elapsed / epoch
        log(
            f"{name} epoch {epoch}/{settings.epochs} loss {train_loss:.4f} "
            f"train_acc {train_acc:.2f}% val_loss {val_loss:.4f} val_acc {val_acc:.2f}% "
            f"(best {best_acc:.2f}% @ {best_epoch}) lr {lr:.5f} {seconds:.1f}s "
            f"ETA {_format_seconds(remaining)}"
        )
        with metrics_path.open("a", newline="") as handle:
            csv.writer(handle).writerow(
                [epoch, f"{train_loss:.6f}", f"{train_acc:.4f}", f"{val_loss:.6f}",
                 f"{val_acc:.4f}", f"{lr:.8f}", f"{seconds:.3f}"]
            )
        if settings.patience is not None and epoch - best_epoch >= settings.patience:
            log(f"{name}: no better val accuracy for {settings.patience} epochs, stopping at epoch {epoch}")
            break

    log(f"{name}: best val_acc {best_acc:.2f}% at epoch {best_epoch}, "
        f"{_format_seconds(time.perf_counter() - started)} in all")
    return {"state_dict": best_state, "best_epoch": best_epoch, "best_val_acc": best_acc,
            "epochs_run": epoch}
