"""Stage: train the base model, or one expert initialised from it (one loop for both).

With more than one process (resource `nproc`, by default the job's `gpu` count on CUDA),
the stage starts itself again under torchrun and trains with DistributedDataParallel;
rank 0 writes the log, metrics, epoch checkpoint and weights.
"""

import logging

import numpy as np

from balanced_experts.data import ImageFileError, ImageSource, InputSpec
from balanced_experts.distributed import (epoch_shard, join_process_group, leave_process_group,
                                          relaunch_under_torchrun, under_torchrun)
from balanced_experts.experts import expert_training_set, expert_validation_set, output_class_ids
from balanced_experts.lists import ListFormatError, check_labels_cover, read_list
from balanced_experts.models import build_model, load_model, resume_checkpoint_path, save_checkpoint, set_learnable
from balanced_experts.pretrained import PretrainedWeightsError, load_trunk_weights
from balanced_experts.runtime import exit_briefly_on, get_logger, resolve_device, setup_torch
from balanced_experts.splits import read_class_table, split_class_ids
from balanced_experts.training import NonFiniteLoss, TrainSettings, fit, run_fingerprint

name = snakemake.wildcards.get("expert", "base")
execution = snakemake.config.get("execution", {})
device = resolve_device(execution.get("device", "auto"))
processes = int(snakemake.resources.get("nproc", 0)) or (
    int(snakemake.resources.get("gpu", 0)) if device.type == "cuda" else 1)
if processes > 1 and not under_torchrun():
    raise SystemExit(relaunch_under_torchrun(processes))
rank, world_size = 0, 1
if under_torchrun():
    rank, world_size, device = join_process_group(device)
log = get_logger(f"train_{name}", snakemake.log[0] if rank == 0 else None, snakemake.resources.get("attempt"))
if rank != 0:
    log.setLevel(logging.WARNING)  # rank 0 speaks for the job
exit_briefly_on(log, ListFormatError, ImageFileError, NonFiniteLoss)
train_cfg = dict(snakemake.params.train)
settings = TrainSettings.from_config(train_cfg)
threads = max(1, snakemake.threads // world_size)  # the job's CPUs, shared by its processes
setup_torch(threads, settings.seed, device)
spec = InputSpec.from_config(snakemake.params.input, default_workers=threads)

train_list = read_list(snakemake.input.train)
val_list = read_list(snakemake.input.val)

if name == "base":
    num_classes = train_list.num_classes
    check_labels_cover(train_list, num_classes)
    backbone = dict(snakemake.params.backbone)
    model = build_model(backbone, num_classes)
    if backbone.get("pretrained"):
        pretrained = backbone["pretrained"]
        try:
            loaded = load_trunk_weights(model.trunk, pretrained["path"], pretrained.get("format", "torchvision"))
        except PretrainedWeightsError as error:
            # Name the config key: the user fixes the config, not this program.
            message = f"{snakemake.params.config_key}.backbone.pretrained.path: {error}"
            log.error(message)
            raise SystemExit(message)
        log.info(f"trunk initialised from {loaded['path']} ({loaded['format']}, {loaded['tensors']} tensors)")
    parameters = set_learnable(model, -1)
    train_idx, train_targets = np.arange(len(train_list)), train_list.labels
    val_idx, val_targets = np.arange(len(val_list)), val_list.labels
    outputs = list(range(num_classes))
    extra_meta = {}
else:
    base, base_meta = load_model(snakemake.input.base)
    num_classes, backbone = base_meta["num_classes"], base_meta["backbone"]
    # Never empty: the classes stage stops on an empty split.
    split_classes = split_class_ids(read_class_table(snakemake.input.classes), name)
    outputs = output_class_ids(split_classes)
    model = build_model(backbone, len(outputs))
    # The base model's feature extractor; a fresh (k+1)-way classifier head.
    trunk_state = {k: v for k, v in base.state_dict().items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(trunk_state, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    parameters = set_learnable(model, int(train_cfg["num_learnable"]))
    train_set = expert_training_set(train_list.labels, split_classes, train_cfg["open_ratio"],
                                    settings.seed, train_cfg.get("reject_sampling", "images"))
    val_set = expert_validation_set(val_list.labels, split_classes, settings.seed)
    train_idx, train_targets = train_set.indices, train_set.targets
    val_idx, val_targets = val_set.indices, val_set.targets
    extra_meta = {"open_ratio": float(train_cfg["open_ratio"]),
                  "num_learnable": int(train_cfg["num_learnable"])}
    log.info(f"{name} expert: {len(split_classes)} classes, {len(train_set)} training images "
             f"({train_set.num_reject} reject, open_ratio {train_cfg['open_ratio']}), "
             f"{len(val_set)} validation images ({val_set.num_reject} reject), "
             f"num_learnable {train_cfg['num_learnable']}")

check_labels_cover(val_list, num_classes)
# Open only the images this model uses; positions are re-based onto the subsets.
# Preloaded datasets come from the split's decoded cache (an empty input otherwise).
train_source = ImageSource.open(snakemake.params.root, train_list.subset(train_idx), spec,
                                cache=snakemake.input.train_cache or None, cache_rows=train_idx,
                                decode_on_device=bool(execution.get("decode_on_device", False)))
val_source = ImageSource.open(snakemake.params.root, val_list.subset(val_idx), spec,
                              cache=snakemake.input.val_cache or None, cache_rows=val_idx,
                              decode_on_device=bool(execution.get("decode_on_device", False)))
model.to(device)
trainable = sum(p.numel() for p in parameters)
log.info(f"{name}: {backbone['name']} on {device}, {trainable:,} trainable of "
         f"{sum(p.numel() for p in model.parameters()):,} parameters, "
         f"{len(train_source)} train / {len(val_source)} val images, {settings}")

eval_batch = int(execution.get("eval_batch_size", 512))
if world_size > 1:
    # The configured batch size stays the global one (same lr, same steps per epoch):
    # each rank takes its share of it from its shard of the epoch.
    rank_batch_size = -(-settings.batch_size // world_size)
    shard_length = -(-len(train_source) // world_size)

    def train_batches(generator):
        positions, rank_generator = epoch_shard(len(train_source), generator, rank, world_size)
        return train_source.batches(positions, np.asarray(train_targets)[positions.numpy()],
                                    rank_batch_size, True, device, rank_generator)

    steps_per_epoch = -(-shard_length // rank_batch_size)
    log.info(f"{name}: {world_size} processes (DistributedDataParallel), {rank_batch_size} images "
             f"per process and step")
else:
    def train_batches(generator):
        return train_source.batches(np.arange(len(train_source)), train_targets, settings.batch_size,
                                    True, device, generator)

    steps_per_epoch = -(-len(train_source) // settings.batch_size)
# The epoch checkpoint is resumed only by a run of the same params, inputs and code. It stays
# after the weights are written, until a job that reads them removes it (see fit).
resume_path = resume_checkpoint_path(snakemake.output.weights)
fingerprint = run_fingerprint({"model": name, **dict(snakemake.params.items())}, snakemake.input)
result = fit(
    model,
    parameters,
    train_batches=train_batches,
    val_batches=lambda: val_source.batches(
        np.arange(len(val_source)), val_targets, eval_batch, False, device),
    steps_per_epoch=steps_per_epoch,
    settings=settings,
    name=name,
    metrics_path=snakemake.output.metrics,
    log=log.info,
    resume_path=resume_path,
    fingerprint=fingerprint,
    amp=bool(execution.get("amp", True)),
    compile=bool(execution.get("compile", False)),
    sync_batchnorm=bool(execution.get("sync_batchnorm", True)),
)
leave_process_group()
if rank != 0:
    raise SystemExit(0)
model.load_state_dict(result["state_dict"])
meta = {
    "model": name,
    "backbone": backbone,
    "num_classes": int(num_classes),
    "output_class_ids": [int(c) for c in outputs],
    "best_epoch": int(result["best_epoch"]),
    "best_val_acc": float(result["best_val_acc"]),
    **extra_meta,
}
save_checkpoint(snakemake.output.weights, model, meta)
log.info(f"wrote {snakemake.output.weights}")
