"""What a training job trains: the base model, one class-balanced expert (METHOD.md
sections 2 and 3) or a peer, as a :class:`Task`, how it trains, and the weights file it ends as.

A task is the model, the parameters it learns, and the entries of the train and val lists
it sees with the output each is trained towards. The base model (:func:`base_task`) sees
every image of every class, and so does a peer (the base model's task with the peer's head,
trained with its loss); an expert (:func:`expert_task`) starts from the base model's
representation with a fresh ``(k+1)``-way classifier and sees its split's images plus an
open-set sample of the others. All train in the one loop (:func:`fit_task`,
:func:`balanced_experts.training.fit`) and are saved by :func:`save_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .images.source import ImageSource
from .images.spec import InputSpec
from .distributed import epoch_batches
from .execution import ExecutionSettings
from .experts import ExpertSettings, expert_training_set, expert_validation_set, output_class_ids, small_reject_sample
from .lists import ImageList, check_labels_cover
from .models import build_model, load_model, save_checkpoint, set_learnable
from .pretrained import DEFAULT_FORMAT, load_trunk_weights
from .splits import read_class_table, split_class_ids
from .training import Criterion, TrainSettings, fit


@dataclass
class Task:
    """One model to train, and the entries of the train and val lists it sees."""

    model: nn.Module
    parameters: list[nn.Parameter]  # the ones it learns
    backbone: dict
    num_classes: int  # of the dataset
    outputs: list[int]  # global class id of each output; an expert's reject output is -1
    train_rows: np.ndarray  # positions in the train list ...
    train_targets: np.ndarray  # ... and the output each is trained towards
    val_rows: np.ndarray
    val_targets: np.ndarray
    meta: dict  # what the weights' metadata adds for this kind of model
    logits_of: Callable[[torch.Tensor], torch.Tensor] | None = None  # the logits of its outputs, if not they


def base_task(train_list: ImageList, val_list: ImageList, backbone: dict,
              log: Callable[[str], None] = print) -> Task:
    """The generalist: every class, every image, from scratch or from the pretrained trunk
    that ``backbone`` names (:class:`balanced_experts.pretrained.PretrainedWeightsError` if
    that file cannot serve it)."""
    num_classes = train_list.num_classes
    check_labels_cover(train_list, num_classes)
    backbone = dict(backbone)
    model = build_model(backbone, num_classes)
    pretrained = backbone.get("pretrained")
    if pretrained:
        loaded = load_trunk_weights(model.trunk, pretrained["path"], pretrained.get("format", DEFAULT_FORMAT))
        log(f"trunk initialised from {loaded['path']} ({loaded['format']}, {loaded['tensors']} tensors)")
    return Task(model, set_learnable(model, -1), backbone, num_classes, list(range(num_classes)),
                np.arange(len(train_list)), train_list.labels, np.arange(len(val_list)), val_list.labels, {})


def expert_task(split: str, train_list: ImageList, val_list: ImageList, classes_csv: str | Path,
                base_weights: str | Path, settings: ExpertSettings, seed: int,
                log: Callable[[str], None] = print, warn: Callable[[str], None] | None = None,
                config_key: str = "experts") -> Task:
    """A ``(k+1)``-way expert of class split ``split`` (the classes table says which classes):
    the base model's feature extractor and a fresh classifier head, trained on its split's
    images plus an open-set sample of the others (``seed`` draws it). ``warn`` (``log`` if
    None) hears when that sample is too small to teach the reject output
    (:func:`balanced_experts.experts.small_reject_sample`), naming the key
    ``<config_key>.<split>.open_ratio``."""
    # The base model is built (its random initialisation drawn) before the expert's: the
    # order fixes the expert's initial classifier.
    base, base_meta = load_model(base_weights)
    num_classes, backbone = base_meta["num_classes"], base_meta["backbone"]
    # Never empty: the classes stage stops on an empty split.
    split_classes = split_class_ids(read_class_table(classes_csv), split)
    outputs = output_class_ids(split_classes)
    model = build_model(backbone, len(outputs))
    trunk_state = {k: v for k, v in base.state_dict().items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(trunk_state, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    parameters = set_learnable(model, int(settings.num_learnable))
    train_set = expert_training_set(train_list.labels, split_classes, settings.open_ratio, seed,
                                    settings.reject_sampling, settings.reject_count)
    val_set = expert_validation_set(val_list.labels, split_classes, seed)
    log(f"{split} expert: {len(split_classes)} classes, {len(train_set)} training images "
        f"({train_set.num_reject} reject, open_ratio {settings.open_ratio}), "
        f"{len(val_set)} validation images ({val_set.num_reject} reject), "
        f"num_learnable {settings.num_learnable}")
    problem = small_reject_sample(train_list.labels, split_classes, train_set, settings.open_ratio)
    if problem:
        (warn or log)(f"warning: {config_key}.{split}.open_ratio: {problem}")
    return Task(model, parameters, backbone, num_classes, outputs, train_set.indices, train_set.targets,
                val_set.indices, val_set.targets,
                {"open_ratio": float(settings.open_ratio), "num_learnable": int(settings.num_learnable)})


def open_images(root: str, image_list: ImageList, rows: np.ndarray, cache: str, spec: InputSpec,
                execution: ExecutionSettings) -> ImageSource:
    """Only the entries ``rows`` of a list, re-based to 0..len(rows)-1; a preloaded dataset's
    from the split's decoded cache (an empty input otherwise)."""
    return ImageSource.open(root, image_list.subset(rows), spec, cache=cache or None, cache_rows=rows,
                            decode_on_device=execution.decode_on_device)


def fit_task(task: Task, name: str, settings: TrainSettings, root: str, lists: tuple[ImageList, ImageList],
             caches: tuple[str, str], spec: InputSpec, execution: ExecutionSettings, device: torch.device,
             rank: int, world_size: int, metrics: str | Path, checkpoint: dict,
             log: Callable[[str], None] = print, loss: Callable[[int], Criterion] | None = None) -> dict:
    """Train ``task`` in the one loop, :func:`balanced_experts.training.fit` (``checkpoint``:
    its resume path and fingerprint; ``loss``: its epoch loss, a peer's), on the entries of the
    train and val ``lists`` the task sees (a preloaded dataset's from the splits' decoded
    ``caches``), in batches of this rank's shard of each epoch. Returns fit's result."""
    train_source = open_images(root, lists[0], task.train_rows, caches[0], spec, execution)
    val_source = open_images(root, lists[1], task.val_rows, caches[1], spec, execution)
    task.model.to(device)
    log(f"{name}: {task.backbone['name']} on {device}, {sum(p.numel() for p in task.parameters):,} trainable "
        f"of {sum(p.numel() for p in task.model.parameters()):,} parameters, "
        f"{len(train_source)} train / {len(val_source)} val images, {settings}")
    train_batches, steps_per_epoch = epoch_batches(train_source, task.train_targets, settings.batch_size, device,
                                                   rank, world_size)
    if world_size > 1:
        log(f"{name}: {world_size} processes (DistributedDataParallel), {-(-settings.batch_size // world_size)} "
            f"images per process and step")

    def val_batches():
        return val_source.batches(np.arange(len(val_source)), task.val_targets, execution.eval_batch_size, False,
                                  device)

    return fit(task.model, task.parameters, train_batches, val_batches, steps_per_epoch, settings, name, metrics,
               log, **checkpoint, amp=execution.amp, compile=execution.compile,
               sync_batchnorm=execution.sync_batchnorm, loss=loss, logits_of=task.logits_of)


def save_weights(path: str | Path, task: Task, result: dict, name: str) -> None:
    """The best epoch's weights (``result``: :func:`balanced_experts.training.fit`'s) and the
    metadata the later stages read: the model's name, backbone, the dataset's class count,
    the class of each output, the best epoch and its val accuracy, and what the task adds
    (an expert's open_ratio and num_learnable, a peer's prior). Loads those weights into
    ``task.model``."""
    task.model.load_state_dict(result["state_dict"])
    meta = {
        "model": name,
        "backbone": task.backbone,
        "num_classes": int(task.num_classes),
        "output_class_ids": [int(c) for c in task.outputs],
        "best_epoch": int(result["best_epoch"]),
        "best_val_acc": float(result["best_val_acc"]),
        **task.meta,
    }
    save_checkpoint(path, task.model, meta)
