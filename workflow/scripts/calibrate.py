"""Stage: fit the joint calibration of the experts on their validation logits."""

import json

import torch

from balanced_experts.calibration import (expert_outputs_from_table, fit_calibration, fused_predictions,
                                          save_calibration)
from balanced_experts.faults import exit_briefly_on
from balanced_experts.files import writing
from balanced_experts.joblog import get_logger
from balanced_experts.logits import check_aligned, read_logits


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    val_logits = list(snakemake.input.val)
    calibration_path, summary_path = snakemake.output.calibration, snakemake.output.summary
    cfg = dict(snakemake.params.calibration)
    log = get_logger("calibrate", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log)

    # The experts' validation logits, row-aligned.
    tables = {}
    for path in val_logits:
        table = read_logits(path)
        tables[table.meta["model"]] = table
    check_aligned(tables)
    names = list(tables)
    experts = [expert_outputs_from_table(tables[n]) for n in names]
    labels = torch.from_numpy(tables[names[0]].labels)
    num_classes = tables[names[0]].num_classes
    log.info(f"fitting on {len(labels)} validation images, experts {names}, "
             f"open ratios {[e.open_ratio for e in experts]}")

    # Fit. The config section's keys (schema-checked) are fit_calibration's keyword
    # arguments; what a dataset leaves out takes the library's default.
    model, summary = fit_calibration(experts, labels, num_classes, log=log.info, **cfg)
    val_acc = (fused_predictions(model, experts) == labels).float().mean().item() * 100
    summary["val_acc"] = val_acc
    log.info(f"calibrated experts: val top-1 {val_acc:.2f}%")
    save_calibration(calibration_path, model, names)
    with writing(summary_path), open(summary_path, "w") as handle:
        json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main(snakemake)
