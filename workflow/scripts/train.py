"""Stage: train the base model, or one expert initialised from it (one loop for both).

Steps (main, at the end): start the processes; build the model and choose the images it
learns from and is validated on (the base model: every image; an expert: its split's
images plus reject images); open those images; feed the epoch's batches; fit; save the
weights.

With more than one process (resource `nproc`, by default the job's `gpu` count on CUDA),
the stage starts itself again under torchrun and trains with DistributedDataParallel;
rank 0 writes the log, metrics, epoch checkpoint and weights.
"""

import logging
from dataclasses import dataclass

import numpy as np
from torch import nn

from balanced_experts.data import ImageFileError, ImageSource, InputSpec
from balanced_experts.distributed import (epoch_shard, join_process_group, leave_process_group,
                                          relaunch_under_torchrun, under_torchrun)
from balanced_experts.execution import ExecutionSettings
from balanced_experts.experts import ExpertSettings, expert_training_set, expert_validation_set, output_class_ids
from balanced_experts.lists import ImageList, ListFormatError, check_labels_cover, read_list
from balanced_experts.models import build_model, load_model, save_checkpoint, set_learnable
from balanced_experts.pretrained import PretrainedWeightsError, load_trunk_weights
from balanced_experts.runtime import exit_briefly_on, get_logger, resolve_device, setup_torch
from balanced_experts.splits import read_class_table, split_class_ids
from balanced_experts.training import NonFiniteLoss, TrainSettings, fit, job_checkpoint


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


def start_processes(execution: ExecutionSettings):
    """``(rank, world_size, device)`` of this process. A job given several processes starts
    itself again under torchrun here and exits with its status; each worker joins the group."""
    device = resolve_device(execution.device)
    processes = int(snakemake.resources.get("nproc", 0)) or (
        int(snakemake.resources.get("gpu", 0)) if device.type == "cuda" else 1)
    if processes > 1 and not under_torchrun():
        raise SystemExit(relaunch_under_torchrun(processes))
    if under_torchrun():
        return join_process_group(device)
    return 0, 1, device


def base_task(train_list: ImageList, val_list: ImageList, log: logging.Logger) -> Task:
    """The generalist: every class, every image, from scratch or a pretrained trunk."""
    num_classes = train_list.num_classes
    check_labels_cover(train_list, num_classes)
    backbone = dict(snakemake.params.backbone)
    model = build_model(backbone, num_classes)
    if backbone.get("pretrained"):
        load_pretrained_trunk(model, backbone["pretrained"], log)
    return Task(model, set_learnable(model, -1), backbone, num_classes, list(range(num_classes)),
                np.arange(len(train_list)), train_list.labels, np.arange(len(val_list)), val_list.labels, {})


def load_pretrained_trunk(model: nn.Module, pretrained: dict, log: logging.Logger) -> None:
    try:
        loaded = load_trunk_weights(model.trunk, pretrained["path"], pretrained.get("format", "torchvision"))
    except PretrainedWeightsError as error:
        # Name the config key: the user fixes the config, not this program.
        message = f"{snakemake.params.config_key}.backbone.pretrained.path: {error}"
        log.error(message)
        raise SystemExit(message)
    log.info(f"trunk initialised from {loaded['path']} ({loaded['format']}, {loaded['tensors']} tensors)")


def expert_task(name: str, train_list: ImageList, val_list: ImageList, seed: int, log: logging.Logger) -> Task:
    """A (k+1)-way expert of one class split: the base model's feature extractor and a fresh
    classifier head, trained on its split's images plus an open-set sample of the others."""
    expert = ExpertSettings.from_config(snakemake.params.train)
    base, base_meta = load_model(snakemake.input.base)
    num_classes, backbone = base_meta["num_classes"], base_meta["backbone"]
    # Never empty: the classes stage stops on an empty split.
    split_classes = split_class_ids(read_class_table(snakemake.input.classes), name)
    outputs = output_class_ids(split_classes)
    model = build_model(backbone, len(outputs))
    trunk_state = {k: v for k, v in base.state_dict().items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(trunk_state, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    parameters = set_learnable(model, int(expert.num_learnable))
    train_set = expert_training_set(train_list.labels, split_classes, expert.open_ratio, seed,
                                    expert.reject_sampling)
    val_set = expert_validation_set(val_list.labels, split_classes, seed)
    log.info(f"{name} expert: {len(split_classes)} classes, {len(train_set)} training images "
             f"({train_set.num_reject} reject, open_ratio {expert.open_ratio}), "
             f"{len(val_set)} validation images ({val_set.num_reject} reject), "
             f"num_learnable {expert.num_learnable}")
    return Task(model, parameters, backbone, num_classes, outputs, train_set.indices, train_set.targets,
                val_set.indices, val_set.targets,
                {"open_ratio": float(expert.open_ratio), "num_learnable": int(expert.num_learnable)})


def open_images(image_list: ImageList, rows: np.ndarray, cache: str, spec: InputSpec,
                execution: ExecutionSettings) -> ImageSource:
    """Only the entries ``rows`` of a list, re-based to 0..len(rows)-1; a preloaded dataset's
    from the split's decoded cache (an empty input otherwise)."""
    return ImageSource.open(snakemake.params.root, image_list.subset(rows), spec, cache=cache or None,
                            cache_rows=rows, decode_on_device=execution.decode_on_device)


def epoch_batches(source: ImageSource, targets: np.ndarray, batch_size: int, device, rank: int, world_size: int):
    """``(train_batches(generator), steps per epoch)``: one epoch of shuffled, augmented batches.

    Under DDP the configured batch size stays the global one (same lr, same steps per
    epoch): each rank takes its share of it from its shard of the epoch.
    """
    if world_size == 1:
        def train_batches(generator):
            return source.batches(np.arange(len(source)), targets, batch_size, True, device, generator)

        return train_batches, -(-len(source) // batch_size)
    rank_batch_size = -(-batch_size // world_size)

    def train_batches(generator):
        positions, rank_generator = epoch_shard(len(source), generator, rank, world_size)
        return source.batches(positions, np.asarray(targets)[positions.numpy()], rank_batch_size, True, device,
                              rank_generator)

    shard_length = -(-len(source) // world_size)
    return train_batches, -(-shard_length // rank_batch_size)


def save_weights(task: Task, result: dict, name: str) -> None:
    """The best epoch's weights and the metadata the later stages read."""
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
    save_checkpoint(snakemake.output.weights, task.model, meta)


def main() -> None:
    name = snakemake.wildcards.get("expert", "base")
    execution = ExecutionSettings.from_config(snakemake.config.get("execution"))
    rank, world_size, device = start_processes(execution)
    log = get_logger(f"train_{name}", snakemake.log[0] if rank == 0 else None, snakemake.resources.get("attempt"))
    if rank != 0:
        log.setLevel(logging.WARNING)  # rank 0 speaks for the job
    exit_briefly_on(log, ListFormatError, ImageFileError, NonFiniteLoss)
    settings = TrainSettings.from_config(snakemake.params.train)
    threads = max(1, snakemake.threads // world_size)  # the job's CPUs, shared by its processes
    setup_torch(threads, settings.seed, device)

    # The model, and which images it learns from and is validated on.
    train_list, val_list = read_list(snakemake.input.train), read_list(snakemake.input.val)
    if name == "base":
        task = base_task(train_list, val_list, log)
    else:
        task = expert_task(name, train_list, val_list, settings.seed, log)
    check_labels_cover(val_list, task.num_classes)

    # Its images, and the batches of an epoch.
    spec = InputSpec.from_config(snakemake.params.input, default_workers=threads)
    train_source = open_images(train_list, task.train_rows, snakemake.input.train_cache, spec, execution)
    val_source = open_images(val_list, task.val_rows, snakemake.input.val_cache, spec, execution)
    task.model.to(device)
    log.info(f"{name}: {task.backbone['name']} on {device}, {sum(p.numel() for p in task.parameters):,} trainable "
             f"of {sum(p.numel() for p in task.model.parameters()):,} parameters, "
             f"{len(train_source)} train / {len(val_source)} val images, {settings}")
    train_batches, steps_per_epoch = epoch_batches(train_source, task.train_targets, settings.batch_size, device,
                                                   rank, world_size)
    if world_size > 1:
        log.info(f"{name}: {world_size} processes (DistributedDataParallel), {-(-settings.batch_size // world_size)} "
                 f"images per process and step")

    # Train. The epoch checkpoint stays after the weights are written, until a job that
    # reads them removes it.
    def val_batches():
        return val_source.batches(np.arange(len(val_source)), task.val_targets, execution.eval_batch_size, False,
                                  device)

    checkpoint = job_checkpoint(snakemake.output.weights, name, dict(snakemake.params.items()), snakemake.input)
    result = fit(task.model, task.parameters, train_batches, val_batches, steps_per_epoch, settings, name,
                 snakemake.output.metrics, log.info, **checkpoint, amp=execution.amp, compile=execution.compile,
                 sync_batchnorm=execution.sync_batchnorm)
    leave_process_group()
    if rank == 0:
        save_weights(task, result, name)
        log.info(f"wrote {snakemake.output.weights}")


main()
