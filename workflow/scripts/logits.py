"""Stage: logits of one model on one data split, in list order, as Parquet."""

import numpy as np

from balanced_experts.device import resolve_device, setup_torch
from balanced_experts.execution import ExecutionSettings
from balanced_experts.faults import exit_briefly_on
from balanced_experts.images.decoding import ImageFileError
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.joblog import get_logger
from balanced_experts.lists import ListFormatError, check_labels_in_range, read_list
from balanced_experts.logits import model_logits_table, predict, write_logits
from balanced_experts.models import discard_resume_checkpoint
from balanced_experts.multi_expert import load_scoring_model


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    model_name, split = snakemake.wildcards.model, snakemake.wildcards.split
    weights, images, cache = snakemake.input.weights, snakemake.input.images, snakemake.input.cache
    input_config, root, output = snakemake.params.input, snakemake.params.root, snakemake.output.logits
    log_path, attempt, threads = snakemake.log[0], snakemake.resources.get("attempt"), snakemake.threads
    execution = ExecutionSettings.from_config(snakemake.config.get("execution"))

    # Device, threads and seeds.
    log = get_logger(f"logits_{model_name}_{split}", log_path, attempt)
    exit_briefly_on(log, ListFormatError, ImageFileError)
    device = resolve_device(execution.device)
    setup_torch(threads, 0, device)

    # The model (a multi-expert one: the experts' mean), and the split's images in list order.
    model, meta = load_scoring_model(weights)
    model.to(device)
    image_list = read_list(images)
    check_labels_in_range(image_list, meta["num_classes"])
    spec = InputSpec.from_config(input_config, default_workers=threads)
    source = ImageSource.open(root, image_list, spec, cache=cache or None, decode_on_device=execution.decode_on_device)

    # Its logits, written with what later stages need to know of the model.
    batches = source.batches(np.arange(len(image_list)), image_list.labels, execution.eval_batch_size, False, device)
    logits = predict(model, batches, len(image_list), len(meta["output_class_ids"]),
                     amp=execution.amp, compile=execution.compile)
    write_logits(output, model_logits_table(logits, image_list, model_name, split, meta))
    summary = f"{model_name} on {split}: {len(image_list)} images x {logits.shape[1]} outputs"
    if model_name == "base":  # outputs are the global classes in order
        summary += f", top-1 {100 * (logits.argmax(1) == image_list.labels).mean():.2f}%"
    log.info(f"{summary} -> {output}")

    # Snakemake started this job, so it has accepted the weights: the epoch checkpoint kept
    # beside them, to restore them had it discarded them, is no longer needed.
    if discard_resume_checkpoint(weights):
        log.info(f"removed the epoch checkpoint beside {weights}: the weights are accepted")


if __name__ == "__main__":
    main(snakemake)
