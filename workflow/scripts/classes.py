"""Stage: per-class training counts and the many/medium/few split (train list only)."""

from balanced_experts.faults import exit_briefly_on
from balanced_experts.files import writing
from balanced_experts.joblog import get_logger
from balanced_experts.lists import ListFormatError, check_labels_cover, read_list
from balanced_experts.splits import (EmptySplitError, SplitRule, check_splits_not_empty, class_table,
                                     split_summary)


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    train_path, classes_path = snakemake.input.train, snakemake.output.classes
    class_splits = snakemake.params.class_splits
    log = get_logger("classes", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log, ListFormatError, EmptySplitError)

    # Every class's training count and its split.
    rule = SplitRule.from_config(class_splits)
    train = read_list(train_path)
    num_classes = train.num_classes
    check_labels_cover(train, num_classes)
    table = class_table(train.labels, num_classes, rule)
    summary = split_summary(table)
    log.info(f"{len(train)} training images, {num_classes} classes; rule {rule}")
    log.info("classes per split: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    # Fail here, before any expert is trained, rather than in the expert's job.
    check_splits_not_empty(table, rule)
    with writing(classes_path):
        table.to_csv(classes_path, index=False)


if __name__ == "__main__":
    main(snakemake)
