"""Stage: cRT baseline, a class-balanced classifier re-trained on frozen base features."""

import numpy as np
import torch
from torch import nn

from balanced_experts.crt import balanced_feature_batches, feature_batches
from balanced_experts.data import ImageFileError, ImageSource, InputSpec
from balanced_experts.lists import ListFormatError, read_list
from balanced_experts.logits import predict
from balanced_experts.models import load_model, save_checkpoint
from balanced_experts.runtime import exit_briefly_on, get_logger, resolve_device, setup_torch
from balanced_experts.training import NonFiniteLoss, TrainSettings, fit

log = get_logger("train_crt", snakemake.log[0], snakemake.resources.get("attempt"))
exit_briefly_on(log, ListFormatError, ImageFileError, NonFiniteLoss)
execution = snakemake.config.get("execution", {})
device = resolve_device(execution.get("device", "auto"))
settings = TrainSettings.from_config(dict(snakemake.params.train))
setup_torch(snakemake.threads, settings.seed, device)
spec = InputSpec.from_config(snakemake.params.input, default_workers=snakemake.threads)
eval_batch = int(execution.get("eval_batch_size", 512))

model, meta = load_model(snakemake.input.base)
model.to(device)
features, labels = {}, {}
for split, path, cache in (("train", snakemake.input.train, snakemake.input.train_cache),
                           ("val", snakemake.input.val, snakemake.input.val_cache)):
    image_list = read_list(path)
    source = ImageSource.open(snakemake.params.root, image_list, spec, cache=cache or None,
                              decode_on_device=bool(execution.get("decode_on_device", False)))
    positions = np.arange(len(image_list))
    batches = source.batches(positions, image_list.labels, eval_batch, train=False, device=device)
    features[split] = torch.from_numpy(
        predict(model, batches, len(image_list), model.fc.out_features, features=True))
    labels[split] = torch.as_tensor(image_list.labels)
    log.info(f"features of {len(image_list)} {split} images: {tuple(features[split].shape)}")

classifier = nn.Linear(features["train"].shape[1], meta["num_classes"]).to(device)
result = fit(
    classifier,
    list(classifier.parameters()),
    train_batches=lambda generator: balanced_feature_batches(
        features["train"], labels["train"], settings.batch_size, device, generator),
    val_batches=lambda: feature_batches(features["val"], labels["val"], eval_batch, device),
    steps_per_epoch=-(-len(labels["train"]) // settings.batch_size),
    settings=settings,
    name="crt",
    metrics_path=snakemake.output.metrics,
    log=log.info,
    amp=bool(execution.get("amp", True)),
)
classifier.load_state_dict(result["state_dict"])
model.classifier.load_state_dict(classifier.state_dict())
save_checkpoint(snakemake.output.weights, model,
                {**meta, "model": "crt", "best_epoch": int(result["best_epoch"]),
                 "best_val_acc": float(result["best_val_acc"])})
log.info(f"wrote {snakemake.output.weights}")
