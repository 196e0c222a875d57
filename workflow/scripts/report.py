"""Stage: one replicate's report (four-fold accuracy, ECE, NLL per method), per-class table,
predictions and plots."""

import json
from pathlib import Path

import pandas as pd

from balanced_experts.plots import per_class_accuracy_plot, reliability_plot, training_curves_plot
from balanced_experts.report import build_report
from balanced_experts.runtime import exit_briefly_on, get_logger, writing

log = get_logger("report", snakemake.log[0], snakemake.resources.get("attempt"))
exit_briefly_on(log)
report = build_report(
    classes_csv=snakemake.input.classes,
    base_val=snakemake.input.base_val,
    base_test=snakemake.input.base_test,
    base_weights=snakemake.input.base_weights,
    decoupled_logits=list(snakemake.input.decoupled),
    expert_logits=list(snakemake.input.experts),
    calibration=snakemake.input.calibration,
)
# A failed write that names no file (no space left) names the folder of the outputs.
with writing(Path(snakemake.output.report).parent):
    report.summary.to_csv(snakemake.output.report, index=False, float_format="%.2f")
    report.per_class.to_csv(snakemake.output.per_class, index=False, float_format="%.2f")
    report.predictions.to_parquet(snakemake.output.predictions, index=False)
    report.test_shift.to_csv(snakemake.output.test_shift, index=False, float_format="%.2f")
    with open(snakemake.output.info, "w") as handle:
        json.dump(report.info, handle, indent=2)
log.info(f"logit adjustment tau {report.info['logit_adjustment_tau']}, "
         f"tau-norm tau {report.info['tau_norm_tau']} (chosen on val)")
log.info("test top-1 (%), ECE (%), NLL:\n"
         + report.summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"))

plots = Path(snakemake.output.per_class_plot).parent
with writing(plots):
    plots.mkdir(parents=True, exist_ok=True)
    per_class_accuracy_plot([report.per_class], snakemake.output.per_class_plot)
    reliability_plot(report.predictions, ["base", "experts_calibrated"], snakemake.output.reliability_plot)
    training_curves_plot({Path(p).parent.name: [pd.read_csv(p)] for p in snakemake.input.metrics},
                         snakemake.output.training_plot)
log.info(f"plots in {Path(snakemake.output.per_class_plot).parent}")
