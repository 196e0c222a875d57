"""Stage: a decoupled classifier on the frozen base model (Kang et al. 2020), cRT or LWS.

Steps (main, at the end): the base model, frozen, with the head this method trains in
place of its classifier; what one epoch feeds the head (augmented images through the
frozen backbone, or features computed once); fit, best val epoch kept; save as a plain
model. One process; see balanced_experts.decoupled for what is trained and how.
"""

import numpy as np
import torch

from balanced_experts.data import ImageFileError, ImageSource, InputSpec
from balanced_experts.decoupled import (DecoupledSettings, as_linear, class_aware_indices, decoupled_head,
                                        steps_per_epoch, tensor_batches)
from balanced_experts.execution import ExecutionSettings
from balanced_experts.lists import ListFormatError, read_list
from balanced_experts.logits import predict
from balanced_experts.models import load_model, save_checkpoint, set_learnable_modules
from balanced_experts.runtime import exit_briefly_on, get_logger, resolve_device, setup_torch
from balanced_experts.training import NonFiniteLoss, TrainSettings, fit, job_checkpoint


def open_splits(spec: InputSpec, execution: ExecutionSettings):
    """``(sources, labels)`` of the train and val splits, by split name."""
    lists = {"train": read_list(snakemake.input.train), "val": read_list(snakemake.input.val)}
    sources = {split: ImageSource.open(snakemake.params.root, lists[split], spec, cache=cache or None,
                                       decode_on_device=execution.decode_on_device)
               for split, cache in (("train", snakemake.input.train_cache), ("val", snakemake.input.val_cache))}
    labels = {split: torch.as_tensor(lists[split].labels, dtype=torch.long) for split in lists}
    return sources, labels


def image_feed(model, head, sources, labels, class_aware_order, batch_size, eval_batch_size, device):
    """Kang et al.'s way: the head in the model, augmented images through the frozen backbone
    every epoch. ``(trained module, parameters, train_batches, val_batches)``."""
    model.classifier = head

    def train_batches(generator):
        order = class_aware_order(generator)
        return sources["train"].batches(order, labels["train"][order], batch_size, True, device, generator,
                                        shuffle=False)

    def val_batches():
        return sources["val"].batches(np.arange(len(labels["val"])), labels["val"], eval_batch_size, False, device)

    return model, set_learnable_modules(model, [head]), train_batches, val_batches


def cached_feed(model, head, sources, labels, class_aware_order, batch_size, execution, device, log):
    """The faster deviation: the backbone's features of every train and val image, computed
    once (no augmentation, eval mode); the head alone trains on them. As :func:`image_feed`."""
    features = {}
    for split, source in sources.items():
        batches = source.batches(np.arange(len(source)), labels[split], execution.eval_batch_size, False, device)
        features[split] = torch.from_numpy(predict(model, batches, len(source), model.feature_dim,
                                                   amp=execution.amp, features=True))
        log.info(f"features of {len(source)} {split} images: {tuple(features[split].shape)}")

    def train_batches(generator):
        return tensor_batches(features["train"], labels["train"], class_aware_order(generator), batch_size, device)

    def val_batches():
        return tensor_batches(features["val"], labels["val"], torch.arange(len(labels["val"])),
                              execution.eval_batch_size, device)

    return head, list(head.parameters()), train_batches, val_batches


def main() -> None:
    method = snakemake.wildcards.method
    log = get_logger(f"train_{method}", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log, ListFormatError, ImageFileError, NonFiniteLoss)
    execution = ExecutionSettings.from_config(snakemake.config.get("execution"))
    device = resolve_device(execution.device)
    settings = TrainSettings.from_config(snakemake.params.train)
    options = DecoupledSettings.from_config(snakemake.params.train)
    setup_torch(snakemake.threads, settings.seed, device)
    spec = InputSpec.from_config(snakemake.params.input, default_workers=snakemake.threads)

    # The base model, frozen, with the head this method trains in place of its classifier.
    model, meta = load_model(snakemake.input.base)
    model.to(device)
    head = decoupled_head(method, model.classifier)
    sources, labels = open_splits(spec, execution)
    steps = steps_per_epoch(len(labels["train"]), settings.batch_size)
    log.info(f"{method}: {meta['backbone']['name']} base model on {device}, features from {options.features}, "
             f"{steps} class-aware batches of {settings.batch_size} per epoch ({options.samples_per_class} "
             f"images per class in a row), {len(labels['val'])} val images, {settings}")

    # What one epoch feeds the head: class-aware batches of images, or of their features.
    def class_aware_order(generator):
        return class_aware_indices(labels["train"], steps * settings.batch_size, options.samples_per_class,
                                   generator)

    if options.features == "images":
        trained, parameters, train_batches, val_batches = image_feed(
            model, head, sources, labels, class_aware_order, settings.batch_size, execution.eval_batch_size, device)
    else:
        trained, parameters, train_batches, val_batches = cached_feed(
            model, head, sources, labels, class_aware_order, settings.batch_size, execution, device, log)

    # Train (best val epoch kept; the epoch checkpoint stays after the weights are written,
    # until a job that reads them removes it), then save as a plain model: LWS's scales
    # folded into the classifier.
    checkpoint = job_checkpoint(snakemake.output.weights, method, dict(snakemake.params.items()), snakemake.input)
    result = fit(trained, parameters, train_batches, val_batches, steps, settings, method, snakemake.output.metrics,
                 log.info, **checkpoint, amp=execution.amp, compile=execution.compile and options.features == "images")
    trained.load_state_dict(result["state_dict"])
    model.classifier = as_linear(head)
    extra = {"lws_scales": [float(s) for s in head.scales.detach().cpu()]} if method == "lws" else {}
    save_checkpoint(snakemake.output.weights, model,
                    {**meta, "model": method, "features": options.features, "best_epoch": int(result["best_epoch"]),
                     "best_val_acc": float(result["best_val_acc"]), **extra})
    log.info(f"wrote {snakemake.output.weights}")


main()
