"""Stage: logits of one model on one data split, in list order, as Parquet."""

import numpy as np
import torch

from balanced_experts.data import ImageFileError, ImageSource, InputSpec
from balanced_experts.lists import ListFormatError, check_labels_in_range, read_list
from balanced_experts.logits import LogitsTable, predict, write_logits
from balanced_experts.models import discard_resume_checkpoint, load_model
from balanced_experts.runtime import exit_briefly_on, get_logger, resolve_device, setup_torch

model_name, split = snakemake.wildcards.model, snakemake.wildcards.split
log = get_logger(f"logits_{model_name}_{split}", snakemake.log[0], snakemake.resources.get("attempt"))
exit_briefly_on(log, ListFormatError, ImageFileError)
execution = snakemake.config.get("execution", {})
device = resolve_device(execution.get("device", "auto"))
setup_torch(snakemake.threads, 0, device)

model, meta = load_model(snakemake.input.weights)
model.to(device)
image_list = read_list(snakemake.input.images)
check_labels_in_range(image_list, meta["num_classes"])
spec = InputSpec.from_config(snakemake.params.input, default_workers=snakemake.threads)
source = ImageSource.open(snakemake.params.root, image_list, spec, cache=snakemake.input.cache or None,
                          decode_on_device=bool(execution.get("decode_on_device", False)))
positions = np.arange(len(image_list))
batches = source.batches(positions, image_list.labels, int(execution.get("eval_batch_size", 512)),
                         False, device)
logits = predict(model, batches, len(image_list), len(meta["output_class_ids"]),
                 amp=bool(execution.get("amp", True)), compile=bool(execution.get("compile", False)))

table = LogitsTable(
    logits=logits,
    labels=image_list.labels,
    sample_ids=positions,
    paths=image_list.paths,
    output_class_ids=np.asarray(meta["output_class_ids"]),
    meta={"model": model_name, "split": split, "num_classes": meta["num_classes"],
          **({"open_ratio": meta["open_ratio"]} if "open_ratio" in meta else {})},
)
write_logits(snakemake.output.logits, table)
summary = f"{model_name} on {split}: {len(image_list)} images x {logits.shape[1]} outputs"
if model_name == "base":  # outputs are the global classes in order
    summary += f", top-1 {100 * (logits.argmax(1) == image_list.labels).mean():.2f}%"
log.info(f"{summary} -> {snakemake.output.logits}")
# Snakemake started this job, so it has accepted the weights: the epoch checkpoint kept beside
# them, to restore them had it discarded them, is no longer needed.
if discard_resume_checkpoint(snakemake.input.weights):
    log.info(f"removed the epoch checkpoint beside {snakemake.input.weights}: the weights are accepted")
