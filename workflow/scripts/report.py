"""Stage: one replicate's report (four-fold accuracy, ECE, NLL per method), per-class table,
predictions and plots."""

import json
from pathlib import Path

import pandas as pd

from balanced_experts.faults import exit_briefly_on
from balanced_experts.files import writing
from balanced_experts.joblog import get_logger
from balanced_experts.methods import GENERALIST, PROPOSED
from balanced_experts.plots import per_class_accuracy_plot, reliability_plot, training_curves_plot
from balanced_experts.report import build_report


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    files, out = snakemake.input, dict(snakemake.output.items())  # out: name -> path
    classes, base_val, base_test, base_weights = files.classes, files.base_val, files.base_test, files.base_weights
    decoupled, experts, calibration = list(files.decoupled), list(files.experts), files.calibration
    peers, metrics = list(files.peers), list(files.metrics)  # peers: those the setting runs
    test_time = {"sade_test_time": files.sade_test_time} if files.sade_test_time else {}  # where it runs SADE
    log = get_logger("report", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log)

    # Every method scored on the test set.
    report = build_report(classes_csv=classes, base_val=base_val, base_test=base_test, base_weights=base_weights,
                          decoupled_logits=decoupled, expert_logits=experts, calibration=calibration,
                          peer_logits=peers, test_time=test_time)
    # A failed write that names no file (no space left) names the folder of the outputs.
    with writing(Path(out["report"]).parent):
        report.summary.to_csv(out["report"], index=False, float_format="%.2f")
        report.per_class.to_csv(out["per_class"], index=False, float_format="%.2f")
        report.predictions.to_parquet(out["predictions"], index=False)
        report.test_shift.to_csv(out["test_shift"], index=False, float_format="%.2f")
        with open(out["info"], "w") as handle:
            json.dump(report.info, handle, indent=2)
    log.info(f"logit adjustment tau {report.info['logit_adjustment_tau']}, "
             f"tau-norm tau {report.info['tau_norm_tau']} (chosen on val)")
    log.info("test top-1 (%), ECE (%), NLL:\n"
             + report.summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"))

    # Its plots.
    folder = Path(out["per_class_plot"]).parent
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        per_class_accuracy_plot([report.per_class], out["per_class_plot"])
        reliability_plot(report.predictions, [GENERALIST, PROPOSED], out["reliability_plot"])
        training_curves_plot({Path(p).parent.name: [pd.read_csv(p)] for p in metrics}, out["training_plot"])
    log.info(f"plots in {folder}")


if __name__ == "__main__":
    main(snakemake)
