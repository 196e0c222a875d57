"""The one training loop: base model and experts alike.

Reads top to bottom: build optimizer and schedule, resume from an epoch checkpoint if
there is one of the same run, then per epoch train, validate, log a line, append to the
metrics CSV, keep the best weights, save the epoch checkpoint, stop early on patience.

The epoch checkpoint holds everything the next epoch depends on (model, optimizer,
schedule, the shuffling/augmentation generator, the global torch RNG, best-so-far state,
metrics rows), so a run killed after epoch k and resumed is bit-identical on the CPU to
one that was never interrupted. It carries a fingerprint of the run's settings and inputs
and is ignored when that differs. Once training has finished it keeps the best weights,
which a rerun restores instead of training again.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from .device import autocast
from .distributed import rank_and_world_size, sync_batchnorm_layers
from .faults import ArtifactError
from .files import load_torch_file, save_torch_file, writing
from .models import resume_checkpoint_path, train_mode


SCHEDULERS = ("cosine", "cosine_epoch", "step", "constant")
"""The learning-rate schedules (``scheduler``; the schema's enum, a test holds them equal): see
:func:`make_scheduler`."""


@dataclass(frozen=True)
class TrainSettings:
    """One model's training settings: the ``base``, ``experts.<split>``, ``crt`` or ``lws``
    config section (keys of other purposes in it are ignored).

    Defaults: config.yaml's ``defaults`` set every model's epochs, batch size, lr and seed,
    so those have none here (the schema requires them). The defaults below serve the keys
    a section leaves out; where config.yaml's ``defaults`` set one for some models, it is
    the same value (a test holds them equal), except that ``None`` (no early stopping)
    gives way to a set ``patience``.

    Early stopping: with ``patience`` P, training stops after the P-th epoch in a row whose
    validation accuracy is not strictly above the best so far, i.e. at epoch
    ``best_epoch + P``, or after ``epochs`` (the schedule's length), whichever comes
    first; the best epoch's weights are kept. The original experts code's
    ``--stopping_criterion c`` stops when ``epoch > best_epoch + c``, one epoch later:
    it is ``patience: c + 1``.
    """

    epochs: int  # maximum number of epochs (cosine and warmup schedules span them)
    batch_size: int
    lr: float
    seed: int
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # one of SCHEDULERS
    step_size: int = 10
    gamma: float = 0.1
    warmup_epochs: int = 0
    patience: int | None = None  # epochs without a better val accuracy that end training
    frozen_bn: str = "train"  # BatchNorm of frozen layers while training: see models.train_mode

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainSettings":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in cfg.items() if k in known})


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run diverged."""


def run_fingerprint(settings: dict, files=()) -> str:
    """SHA-256 of ``settings`` (JSON-serialisable) and the contents of ``files``.

    An epoch checkpoint is resumed only by a run with the same fingerprint, so a stale
    one from different settings, data, base weights or code is never picked up.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(str(path).encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def job_checkpoint(weights_path: str | Path, model: str, params: dict, inputs=()) -> dict:
    """:func:`fit`'s ``resume_path`` and ``fingerprint`` for a training job: the epoch
    checkpoint beside the model's weights, resumed only by a run of the same model, params
    and input files (its code among them)."""
    return {"resume_path": resume_checkpoint_path(weights_path),
            "fingerprint": run_fingerprint({"model": model, **params}, inputs)}


def _load_resume_state(path: Path | None, fingerprint: str, name: str, log) -> dict | None:
    """The epoch checkpoint at ``path`` if it belongs to this run, else None (and it is removed)."""
    if path is None or not path.exists():
        return None
    try:
        state = load_torch_file(path)
    except ArtifactError as error:  # a damaged or foreign file: start over rather than fail
        log(f"{name}: ignoring unreadable epoch checkpoint {path} ({error.problem}); starting from epoch 1")
        path.unlink()
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        log(f"{name}: ignoring epoch checkpoint {path}: it was written with other settings "
            f"or inputs; starting from epoch 1")
        path.unlink()
        return None
    return state


def _load_resume_state_on_every_rank(path: Path | None, fingerprint: str, name: str, log,
                                     device: torch.device) -> dict | None:
    """:func:`_load_resume_state` under DDP: rank 0 alone reads the checkpoint, judges it and
    removes a stale or unreadable one, while the other ranks wait for its verdict; they then
    read the checkpoint it accepted. (Had every rank judged and removed it, the ranks that
    lost the race would fail on the file another had just deleted.)"""
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return _load_resume_state(path, fingerprint, name, log)
    state = _load_resume_state(path, fingerprint, name, log) if rank == 0 else None
    if _flag_from_rank_0(state is not None, device):
        if rank != 0:
            state = torch.load(path, map_location="cpu", weights_only=True)
        # A barrier: rank 0 replaces or deletes the file only after every rank has read it.
        _flag_from_rank_0(True, device)
    return state


def make_scheduler(optimizer, settings: TrainSettings, steps_per_epoch: int):
    """A per-step LambdaLR: linear warmup, then cosine / step / constant. ``cosine`` lowers
    the lr at every step; ``cosine_epoch`` once per epoch, as the original code's
    ``CosineAnnealingLR(T_max=epochs)`` stepped after each epoch."""
    total = max(1, settings.epochs * steps_per_epoch)
    warmup = settings.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if settings.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if settings.scheduler == "cosine_epoch":
            progress = ((step - warmup) // steps_per_epoch) / max(1, settings.epochs - settings.warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if settings.scheduler == "step":
            return settings.gamma ** ((step // steps_per_epoch) // settings.step_size)
        if settings.scheduler == "constant":
            return 1.0
        raise ValueError(f"unknown scheduler {settings.scheduler!r}; expected one of {', '.join(SCHEDULERS)}")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, amp: bool = False, forward: Callable | None = None
             ) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) over ``batches``; ``forward`` defaults to ``model``."""
    model.eval()
    forward = forward or model
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        with autocast(x.device, amp):
            logits = forward(x).float()
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


def _silent(message: str) -> None:
    """The log of ranks other than 0: rank 0 speaks for the job."""


def _flag_from_rank_0(value: bool, device: torch.device) -> bool:
    """Rank 0's ``value`` on every rank (the others' ``value`` is ignored); every rank waits here."""
    flag = torch.tensor([int(value)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


METRICS_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


@dataclass
class _Progress:
    """What the epochs so far have left: the best epoch, the metrics rows, whether training
    has stopped. The epoch checkpoint holds it."""

    epoch: int = 0  # the last finished epoch
    best_acc: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None
    rows: list[list[str]] = field(default_factory=list)  # the metrics CSV rows so far
    stopped: bool = False


def _resume(path: Path | None, fingerprint: str, name: str, log, device: torch.device, model: nn.Module,
            optimizer, scheduler, generator: torch.Generator, settings: TrainSettings) -> _Progress:
    """The progress of the epoch checkpoint at ``path`` if it belongs to this run (model,
    optimizer, schedule and generators restored to the end of its last epoch), else a fresh start."""
    state = _load_resume_state_on_every_rank(path, fingerprint, name, log, device)
    if state is None:
        return _Progress()
    progress = _Progress(state["epoch"], state["best_acc"], state["best_epoch"], state["best_state"],
                         state["rows"], state["stopped"])
    if progress.stopped:
        log(f"{name}: training had finished ({progress.epoch} epochs, best {progress.best_acc:.2f}% @ "
            f"{progress.best_epoch}): its weights are restored from {path}, no epoch runs again")
        return progress
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    log(f"{name}: resuming from epoch {progress.epoch} of {settings.epochs} "
        f"(best {progress.best_acc:.2f}% @ {progress.best_epoch}), checkpoint {path}")
    return progress


def _start_metrics_file(path: Path, rows: list[list[str]]) -> None:
    """The metrics CSV with the rows kept so far: a resumed run never repeats an epoch's row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path), path.open("w", newline="") as handle:
        csv.writer(handle).writerows([METRICS_FIELDS] + rows)


def _append_metrics_row(path: Path, row: list[str]) -> None:
    with writing(path), path.open("a", newline="") as handle:
        csv.writer(handle).writerow(row)


def _forward_passes(model: nn.Module, device: torch.device, world_size: int, compile: bool,
                    sync_batchnorm: bool, name: str, log) -> tuple[Callable, Callable]:
    """``(validation forward, training forward)`` of ``model``, after any resume: DDP starts
    every rank from rank 0's weights and buffers.

    torch.compile wraps the plain model: it serves validation, and training when there is
    one process; under several, training goes through the DDP wrapper (gradient averaging).
    """
    if world_size > 1:
        converted = sync_batchnorm_layers(model, device, enabled=sync_batchnorm)
        if converted:
            log(f"{name}: {converted} BatchNorm layers use the statistics of the global batch "
                f"over {world_size} processes (SyncBatchNorm)")
    forward = torch.compile(model) if compile else model
    if world_size == 1:
        return forward, forward
    return forward, nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A training loss: ``criterion(logits, targets)``, the batch's mean loss."""


def train_one_epoch(network: Callable, batches: Iterable, optimizer, scheduler, amp: bool, name: str,
                    epoch: int, criterion: Criterion, logits_of: Callable | None = None) -> tuple[float, int, int]:
    """One pass of SGD over ``batches`` through ``network`` with ``criterion`` (on the network's
    outputs): ``(summed loss, correct, images)``, correct by the argmax of ``logits_of(outputs)``
    (default: the outputs are the logits). A NaN or infinite loss stops the run
    (:class:`NonFiniteLoss`)."""
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        with autocast(x.device, amp):
            outputs = network(x)
            loss = criterion(outputs.float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"{name}: training loss is {loss.item()} at epoch {epoch} "
                f"(lr {optimizer.param_groups[0]['lr']:.6g}); the run diverged: lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        logits = outputs if logits_of is None else logits_of(outputs.detach())
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    return loss_sum, correct, count


def _summed_over_ranks(totals: tuple, device: torch.device, world_size: int) -> tuple:
    """``totals`` summed over every rank's shard (unchanged with one process)."""
    if world_size == 1:
        return totals
    summed = torch.tensor(totals, dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return tuple(summed.tolist())


def _save_epoch_checkpoint(path: Path, fingerprint: str, progress: _Progress, finished: bool, model: nn.Module,
                           optimizer, scheduler, generator: torch.Generator) -> None:
    """The state after an epoch. After the last one only the best weights and the metrics rows
    are kept (the size of the weights file): all a rerun needs to restore the result in seconds."""
    state = {"fingerprint": fingerprint, "epoch": progress.epoch, "stopped": finished,
             "best_acc": progress.best_acc, "best_epoch": progress.best_epoch, "best_state": progress.best_state,
             "rows": progress.rows}
    if not finished:
        state.update(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     generator=generator.get_state(), torch_rng=torch.get_rng_state())
    save_torch_file(state, path)


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
    resume_path: str | Path | None = None,
    fingerprint: str = "",
    amp: bool = False,
    compile: bool = False,
    sync_batchnorm: bool = True,
    loss: Callable[[int], Criterion] | None = None,
    logits_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Train ``parameters`` of ``model``; returns the best epoch's state dict and summary.

    ``train_batches(generator)`` yields one epoch of shuffled training batches;
    ``val_batches()`` yields the validation batches. The best epoch is the one with the
    highest validation accuracy (the first of equals); training stops at epoch
    ``best_epoch + settings.patience`` (if set; see :class:`TrainSettings`) or at
    ``settings.epochs``. The frozen parts of ``model`` train with their BatchNorm layers
    in ``settings.frozen_bn`` mode (:func:`balanced_experts.models.train_mode`).

    With ``resume_path``, the state after every epoch is saved there (atomically), and a
    checkpoint found there with the same ``fingerprint`` (see :func:`run_fingerprint`)
    is resumed from. After the last epoch it keeps only the best weights and the metrics
    rows, and stays: a run that finds it returns them without training again (the rerun
    after Snakemake discarded a finished job's outputs). It is removed once the weights
    are accepted (:func:`balanced_experts.models.discard_resume_checkpoint`).

    ``loss(epoch)``: the training criterion of an epoch (1, 2, ...; e.g. a peer method's,
    :mod:`balanced_experts.peers`); by default plain cross-entropy. Validation is scored
    with cross-entropy either way. A loss that changes the run belongs in ``fingerprint``.
    ``logits_of(outputs)``: the logits of the model's outputs, for the training accuracy and
    validation (a multi-expert model's: the experts' mean); by default the outputs are the logits.

    ``amp``: bf16 autocast on CUDA (a no-op on the CPU). ``compile``: run the forward pass
    through ``torch.compile``; the weights, checkpoints and state dicts stay those of ``model``.

    Under an initialised process group (several processes, see
    :mod:`balanced_experts.distributed`), ``train_batches`` yields this rank's shard;
    gradients are averaged by DistributedDataParallel; the training loss and accuracy
    are summed over ranks; rank 0 alone validates, logs, writes the metrics and the
    epoch checkpoint, and tells the others when to stop. Rank 0 decides whether the epoch
    checkpoint is resumed from; then every rank reads it. On CUDA, ``sync_batchnorm``
    makes BatchNorm use the statistics of the global batch
    (:func:`balanced_experts.distributed.sync_batchnorm_layers`). The returned state dict is None
    on the other ranks.
    """
    rank, world_size = rank_and_world_size()
    is_main = rank == 0
    log = log if is_main else _silent
    device = next(model.parameters()).device
    metrics_path = Path(metrics_path)
    resume_path = Path(resume_path) if resume_path is not None else None
    optimizer = torch.optim.SGD(
        parameters, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch)
    generator = torch.Generator().manual_seed(settings.seed)  # shuffling and augmentation

    # Resume where an epoch checkpoint of this run left off; start the metrics file from its rows.
    progress = _resume(resume_path, fingerprint, name, log, device, model, optimizer, scheduler, generator,
                       settings)
    if is_main:
        _start_metrics_file(metrics_path, progress.rows)
    forward, network = _forward_passes(model, device, world_size, compile, sync_batchnorm, name, log)
    scored = forward if logits_of is None else (lambda x: logits_of(forward(x)))

    first_epoch = progress.epoch + 1
    last_epoch = progress.epoch if progress.stopped else settings.epochs  # a resumed run may have stopped early
    started = time.perf_counter()
    for epoch in range(first_epoch, last_epoch + 1):
        # Train one epoch (under DDP: this rank's shard, the totals summed over the ranks).
        epoch_start = time.perf_counter()
        train_mode(model, settings.frozen_bn)
        lr = optimizer.param_groups[0]["lr"]
        criterion = loss(epoch) if loss is not None else nn.functional.cross_entropy
        totals = train_one_epoch(network, train_batches(generator), optimizer, scheduler, amp, name, epoch, criterion,
                                 logits_of)
        loss_sum, correct, count = _summed_over_ranks(totals, device, world_size)
        train_loss, train_acc = loss_sum / max(count, 1), 100.0 * correct / max(count, 1)
        progress.epoch = epoch
        if not is_main:
            # Rank 0 decides (its validation, its BatchNorm statistics); the others follow.
            if _flag_from_rank_0(False, device):
                break
            continue

        # Validate; keep the best epoch's weights.
        val_loss, val_acc = evaluate(model, val_batches(), amp, scored)
        seconds = time.perf_counter() - epoch_start
        if val_acc > progress.best_acc:
            progress.best_acc, progress.best_epoch = val_acc, epoch
            progress.best_state = copy.deepcopy(model.state_dict())

        # Log the epoch and add its metrics row.
        remaining = (settings.epochs - epoch) * (time.perf_counter() - started) / (epoch - first_epoch + 1)
        log(
            f"{name} epoch {epoch}/{settings.epochs} loss {train_loss:.4f} "
            f"train_acc {train_acc:.2f}% val_loss {val_loss:.4f} val_acc {val_acc:.2f}% "
            f"(best {progress.best_acc:.2f}% @ {progress.best_epoch}) lr {lr:.5f} {seconds:.1f}s "
            f"ETA {_format_seconds(remaining)}"
        )
        row = [str(epoch), f"{train_loss:.6f}", f"{train_acc:.4f}", f"{val_loss:.6f}",
               f"{val_acc:.4f}", f"{lr:.8f}", f"{seconds:.3f}"]
        progress.rows.append(row)
        _append_metrics_row(metrics_path, row)

        # Stop on patience; save the epoch checkpoint; tell the other ranks whether to go on.
        if settings.patience is not None and epoch - progress.best_epoch >= settings.patience:
            log(f"{name}: no better val accuracy for {settings.patience} epochs, stopping at epoch {epoch}")
            progress.stopped = True
        if resume_path is not None:
            _save_epoch_checkpoint(resume_path, fingerprint, progress, progress.stopped or epoch == settings.epochs,
                                   model, optimizer, scheduler, generator)
        if world_size > 1:
            _flag_from_rank_0(progress.stopped, device)
        if progress.stopped:
            break

    log(f"{name}: best val_acc {progress.best_acc:.2f}% at epoch {progress.best_epoch}, "
        f"{_format_seconds(time.perf_counter() - started)} in all")
    return {"state_dict": progress.best_state, "best_epoch": progress.best_epoch, "best_val_acc": progress.best_acc,
            "epochs_run": progress.epoch}
