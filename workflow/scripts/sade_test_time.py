"""Stage: SADE's test-time aggregation (balanced_experts.sade) on every shifted test set of
test_shift.csv, drawn from the test images: its experts' weights learned on each set's
unlabeled images, from the stability of two augmented views' predictions, then scored there.

Steps (main): the model and the test images; every expert's logits on the plain images and
on two augmented views (the dataset's training augmentation, seeded), once; per test
distribution, draw its test set, learn the weights on its images' views, score it.
"""

import numpy as np
import torch

from balanced_experts.device import resolve_device, setup_torch
from balanced_experts.execution import ExecutionSettings
from balanced_experts.faults import exit_briefly_on
from balanced_experts.files import replacing
from balanced_experts.images.decoding import ImageFileError
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.joblog import get_logger
from balanced_experts.lists import ListFormatError, check_labels_in_range, read_list
from balanced_experts.multi_expert import load_multi_expert
from balanced_experts.sade import AggregationSettings, agnostic_shift_table, expert_logits

VIEWS = 2
"""Augmented views per image: SADE's prediction stability compares two."""


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    weights, images, cache, train = (snakemake.input.weights, snakemake.input.images, snakemake.input.cache,
                                     snakemake.input.train)
    input_config, root, base_lr = snakemake.params.input, snakemake.params.root, snakemake.params.lr
    test_time, output = snakemake.params.test_time, snakemake.output.table  # test_time: its seed the replicate's
    log_path, attempt, threads = snakemake.log[0], snakemake.resources.get("attempt"), snakemake.threads
    execution = ExecutionSettings.from_config(snakemake.config.get("execution"))

    # Device, threads, seeds: the replicate's (its views and drawn test sets differ by replicate).
    log = get_logger("sade_test_time", log_path, attempt)
    exit_briefly_on(log, ListFormatError, ImageFileError)
    device = resolve_device(execution.device)
    settings = AggregationSettings.from_config({"lr": base_lr, **test_time})  # lr: the base model's unless set
    setup_torch(threads, settings.seed, device)

    # The model, and the test images in list order.
    model, meta = load_multi_expert(weights)
    model.to(device)
    image_list = read_list(images)
    check_labels_in_range(image_list, meta["num_classes"])
    source = ImageSource.open(root, image_list, InputSpec.from_config(input_config, default_workers=threads),
                              cache=cache or None, decode_on_device=execution.decode_on_device)
    rows, count = np.arange(len(image_list)), len(image_list)

    def batches(train: bool, generator: torch.Generator | None = None):
        return source.batches(rows, image_list.labels, execution.eval_batch_size, train, device, generator,
                              shuffle=False)

    # Every expert's logits, once: the plain images, then each augmented view.
    test_logits = expert_logits(model, batches(False), count, amp=execution.amp)
    generator = torch.Generator().manual_seed(settings.seed)
    views = [expert_logits(model, batches(True, generator), count, amp=execution.amp) for _ in range(VIEWS)]
    log.info(f"sade: {meta['multi_expert']['num_experts']} experts' logits of {count} test images, plain and "
             f"{VIEWS} augmented views; aggregation {settings}")

    # Per shifted test distribution: its drawn test set, the learned weights, their accuracy.
    train_counts = np.bincount(read_list(train).labels, minlength=meta["num_classes"])  # as its training's
    table = agnostic_shift_table(test_logits, [tuple(views)], image_list.labels, train_counts, settings.seed,
                                 settings)
    with replacing(output) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info("test-time aggregation on the drawn test sets:\n" + table.to_string(index=False))


if __name__ == "__main__":
    main(snakemake)
