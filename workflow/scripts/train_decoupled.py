"""Stage: a decoupled classifier on the frozen base model (Kang et al. 2020), cRT or LWS.

Steps (main): the base model, frozen, with the head this method trains in place of its
classifier; what one epoch feeds the head (augmented images through the frozen backbone,
or features computed once); fit, best val epoch kept; save as a plain model. One process;
see balanced_experts.decoupled for what is trained and how.
"""

import functools

import torch

from balanced_experts.images.decoding import ImageFileError
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.decoupled import (DecoupledSettings, cached_feed, class_aware_indices, decoupled_head,
                                        image_feed, save_decoupled, steps_per_epoch)
from balanced_experts.device import resolve_device, setup_torch
from balanced_experts.execution import ExecutionSettings
from balanced_experts.faults import exit_briefly_on
from balanced_experts.joblog import get_logger
from balanced_experts.lists import ListFormatError, read_list
from balanced_experts.models import load_model
from balanced_experts.training import NonFiniteLoss, TrainSettings, fit, job_checkpoint


def open_splits(root: str, lists: dict[str, str], caches: dict[str, str], spec: InputSpec,
                execution: ExecutionSettings):
    """``(sources, labels)`` of the train and val splits, by split name."""
    image_lists = {split: read_list(path) for split, path in lists.items()}
    sources = {split: ImageSource.open(root, image_lists[split], spec, cache=caches[split] or None,
                                       decode_on_device=execution.decode_on_device)
               for split in image_lists}
    labels = {split: torch.as_tensor(image_lists[split].labels, dtype=torch.long) for split in image_lists}
    return sources, labels


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    method = snakemake.wildcards.method
    params, input_files = dict(snakemake.params.items()), list(snakemake.input)
    lists = {"train": snakemake.input.train, "val": snakemake.input.val}
    caches = {"train": snakemake.input.train_cache, "val": snakemake.input.val_cache}
    base_weights, weights, metrics = snakemake.input.base, snakemake.output.weights, snakemake.output.metrics
    log_path, attempt, threads = snakemake.log[0], snakemake.resources.get("attempt"), snakemake.threads
    execution = ExecutionSettings.from_config(snakemake.config.get("execution"))

    # Settings, threads and seeds.
    log = get_logger(f"train_{method}", log_path, attempt)
    exit_briefly_on(log, ListFormatError, ImageFileError, NonFiniteLoss)
    device = resolve_device(execution.device)
    settings = TrainSettings.from_config(params["train"])
    options = DecoupledSettings.from_config(params["train"])
    setup_torch(threads, settings.seed, device)
    spec = InputSpec.from_config(params["input"], default_workers=threads)

    # The base model, frozen, with the head this method trains in place of its classifier.
    model, meta = load_model(base_weights)
    model.to(device)
    head = decoupled_head(method, model.classifier)
    sources, labels = open_splits(params["root"], lists, caches, spec, execution)
    steps = steps_per_epoch(len(labels["train"]), settings.batch_size)
    log.info(f"{method}: {meta['backbone']['name']} base model on {device}, features from {options.features}, "
             f"{steps} class-aware batches of {settings.batch_size} per epoch ({options.samples_per_class} "
             f"images per class in a row), {len(labels['val'])} val images, {settings}")

    # What one epoch feeds the head: class-aware batches of images, or of their features.
    class_aware_order = functools.partial(class_aware_indices, labels["train"], steps * settings.batch_size,
                                          options.samples_per_class)
    if options.features == "images":
        feed = image_feed(model, head, sources, labels, class_aware_order, settings.batch_size,
                          execution.eval_batch_size, device)
    else:
        feed = cached_feed(model, head, sources, labels, class_aware_order, settings.batch_size,
                           execution.eval_batch_size, execution.amp, device, log.info)

    # Train (best val epoch kept; the epoch checkpoint, resumed only by a run of the same
    # method, params and input files, stays after the weights are written, until a job that
    # reads them removes it), then save as a plain model.
    checkpoint = job_checkpoint(weights, method, params, input_files)
    result = fit(feed.module, feed.parameters, feed.train_batches, feed.val_batches, steps, settings, method, metrics,
                 log.info, **checkpoint, amp=execution.amp, compile=execution.compile and options.features == "images")
    save_decoupled(weights, model, head, feed, result, meta, method, options.features)
    log.info(f"wrote {weights}")


if __name__ == "__main__":
    main(snakemake)
