"""Stage: a decoupled classifier on the frozen base model (Kang et al. 2020), cRT or LWS.

One process; see balanced_experts.decoupled for what is trained and how.
"""

import numpy as np
import torch

from balanced_experts.data import ImageFileError, ImageSource, InputSpec
from balanced_experts.decoupled import (DecoupledSettings, as_linear, class_aware_indices, decoupled_head,
                                        steps_per_epoch, tensor_batches)
from balanced_experts.lists import ListFormatError, read_list
from balanced_experts.logits import predict
from balanced_experts.models import load_model, resume_checkpoint_path, save_checkpoint, set_learnable_modules
from balanced_experts.runtime import exit_briefly_on, get_logger, resolve_device, setup_torch
from balanced_experts.training import NonFiniteLoss, TrainSettings, fit, run_fingerprint

method = snakemake.wildcards.method
log = get_logger(f"train_{method}", snakemake.log[0], snakemake.resources.get("attempt"))
exit_briefly_on(log, ListFormatError, ImageFileError, NonFiniteLoss)
execution = snakemake.config.get("execution", {})
device = resolve_device(execution.get("device", "auto"))
train_cfg = dict(snakemake.params.train)
settings = TrainSettings.from_config(train_cfg)
options = DecoupledSettings.from_config(train_cfg)
setup_torch(snakemake.threads, settings.seed, device)
spec = InputSpec.from_config(snakemake.params.input, default_workers=snakemake.threads)
eval_batch = int(execution.get("eval_batch_size", 512))
decode_on_device = bool(execution.get("decode_on_device", False))

# 1. The base model, frozen, with the head this method trains in place of its classifier.
model, meta = load_model(snakemake.input.base)
model.to(device)
head = decoupled_head(method, model.classifier)
lists = {"train": read_list(snakemake.input.train), "val": read_list(snakemake.input.val)}
sources = {split: ImageSource.open(snakemake.params.root, lists[split], spec, cache=cache or None,
                                   decode_on_device=decode_on_device)
           for split, cache in (("train", snakemake.input.train_cache), ("val", snakemake.input.val_cache))}
labels = {split: torch.as_tensor(lists[split].labels, dtype=torch.long) for split in lists}
steps = steps_per_epoch(len(labels["train"]), settings.batch_size)
draws = steps * settings.batch_size
log.info(f"{method}: {meta['backbone']['name']} base model on {device}, features from {options.features}, "
         f"{steps} class-aware batches of {settings.batch_size} per epoch ({options.samples_per_class} "
         f"images per class in a row), {len(labels['val'])} val images, {settings}")


def class_aware_order(generator):
    return class_aware_indices(labels["train"], draws, options.samples_per_class, generator)


# 2. What one epoch feeds the head: augmented images through the frozen backbone, or the
#    features computed once.
if options.features == "images":
    model.classifier = head
    parameters = set_learnable_modules(model, [head])
    trained = model

    def train_batches(generator):
        order = class_aware_order(generator)
        return sources["train"].batches(order, labels["train"][order], settings.batch_size, True, device,
                                        generator, shuffle=False)

    def val_batches():
        return sources["val"].batches(np.arange(len(labels["val"])), labels["val"], eval_batch, False, device)
else:
    features = {}
    for split, source in sources.items():
        batches = source.batches(np.arange(len(source)), labels[split], eval_batch, False, device)
        features[split] = torch.from_numpy(predict(model, batches, len(source), model.feature_dim,
                                                   amp=bool(execution.get("amp", True)), features=True))
        log.info(f"features of {len(source)} {split} images: {tuple(features[split].shape)}")
    parameters = list(head.parameters())
    trained = head

    def train_batches(generator):
        return tensor_batches(features["train"], labels["train"], class_aware_order(generator),
                              settings.batch_size, device)

    def val_batches():
        return tensor_batches(features["val"], labels["val"], torch.arange(len(labels["val"])), eval_batch, device)

# 3. Train (best val epoch kept), then save as a plain model: LWS's scales folded into the classifier.
# The epoch checkpoint stays after the weights are written, until a job that reads them
# removes it (see fit).
resume_path = resume_checkpoint_path(snakemake.output.weights)
result = fit(
    trained,
    parameters,
    train_batches=train_batches,
    val_batches=val_batches,
    steps_per_epoch=steps,
    settings=settings,
    name=method,
    metrics_path=snakemake.output.metrics,
    log=log.info,
    resume_path=resume_path,
    fingerprint=run_fingerprint({"model": method, **dict(snakemake.params.items())}, snakemake.input),
    amp=bool(execution.get("amp", True)),
    compile=bool(execution.get("compile", False)) and options.features == "images",
)
trained.load_state_dict(result["state_dict"])
model.classifier = as_linear(head)
extra = {"lws_scales": [float(s) for s in head.scales.detach().cpu()]} if method == "lws" else {}
save_checkpoint(snakemake.output.weights, model,
                {**meta, "model": method, "features": options.features, "best_epoch": int(result["best_epoch"]),
                 "best_val_acc": float(result["best_val_acc"]), **extra})
log.info(f"wrote {snakemake.output.weights}")
