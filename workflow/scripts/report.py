"""Stage: the four-fold test accuracy of every method, as report.csv."""

import torch

from balanced_experts.report import build_report
from balanced_experts.runtime import get_logger

log = get_logger("report", snakemake.log[0])
report = build_report(
    classes_csv=snakemake.input.classes,
    base_logits=snakemake.input.base,
    expert_logits=list(snakemake.input.experts),
    calibration=snakemake.input.calibration,
)
report.to_csv(snakemake.output.report, index=False, float_format="%.2f")
log.info("test top-1 (%):\n" + report.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
