"""Stage: a setting's report over its seeds (mean, std, every seed's rows; as CSV and as a
paper's table), per-class table, class splits and plots of the spread."""

from pathlib import Path

import pandas as pd

from balanced_experts.faults import exit_briefly_on
from balanced_experts.files import writing
from balanced_experts.joblog import get_logger
from balanced_experts.methods import GENERALIST, PROPOSED
from balanced_experts.plots import (four_fold_plot, long_tail_plot, per_class_accuracy_plot,
                                    reliability_plot, test_shift_plot, training_curves_plot)
from balanced_experts.over_seeds import mean_over_seeds, mean_per_class, mean_shift_over_seeds, seed_rows, split_counts
from balanced_experts.splits import read_class_table
from balanced_experts.tables import setting_table, write_table


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    files, out = snakemake.input, dict(snakemake.output.items())  # out: name -> path
    setting, seeds = snakemake.wildcards.setting, [int(k) for k in snakemake.params.seeds]
    reports, test_shifts = dict(zip(seeds, files.reports)), dict(zip(seeds, files.test_shift))  # seed -> path
    per_class_paths, prediction_paths, classes_path = list(files.per_class), list(files.predictions), files.classes
    # metrics_<model>: every seed's metrics.csv of each model the setting trains.
    metrics_paths = {name.removeprefix("metrics_"): list(files[name]) for name in files.keys()
                     if name.startswith("metrics_")}
    log = get_logger("aggregate", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log)

    # The seeds' tables, and their means. The per-seed reports as written (two decimals):
    # report.csv is then exactly the mean and std of report_seeds.csv's rows, which a
    # reader can recompute.
    rows = seed_rows({k: pd.read_csv(path) for k, path in reports.items()})
    summary = mean_over_seeds(rows)
    per_class = [pd.read_csv(path) for path in per_class_paths]
    predictions = [pd.read_parquet(path) for path in prediction_paths]
    classes = read_class_table(classes_path)
    counts = split_counts(classes, predictions[0]["label"].to_numpy())
    test_shift = mean_shift_over_seeds({k: pd.read_csv(path) for k, path in test_shifts.items()})
    # A failed write that names no file (no space left) names the folder of the outputs.
    with writing(Path(out["report"]).parent):
        rows.to_csv(out["seeds"], index=False, float_format="%.2f")
        summary.to_csv(out["report"], index=False, float_format="%.2f")
        mean_per_class(per_class).to_csv(out["per_class"], index=False, float_format="%.2f")
        counts.to_csv(out["split_counts"], index=False)
        test_shift.to_csv(out["test_shift"], index=False, float_format="%.2f")
        write_table(setting_table(rows, setting), out["report_md"], out["report_tex"])
    log.info("classes per split:\n" + counts.to_string(index=False))
    log.info(f"test top-1 (%), ECE (%), NLL: mean over seeds {seeds}"
             + (" (std: sample std over the seeds)" if len(seeds) > 1 else " (one seed: no std)") + ":\n"
             + summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"))

    # Plots of the spread.
    metrics = {model: [pd.read_csv(p) for p in paths] for model, paths in metrics_paths.items()}
    plots = Path(out["four_fold_plot"]).parent
    with writing(plots):
        plots.mkdir(parents=True, exist_ok=True)
        four_fold_plot(rows, out["four_fold_plot"])
        per_class_accuracy_plot(per_class, out["per_class_plot"])
        # Every seed's test predictions pooled: the calibration of the method, not of one run.
        reliability_plot(pd.concat(predictions, ignore_index=True), [GENERALIST, PROPOSED], out["reliability_plot"])
        training_curves_plot(metrics, out["training_plot"])
        long_tail_plot(classes[["class_id", "train_count", "split"]], out["long_tail_plot"])
        test_shift_plot(test_shift, out["test_shift_plot"])
    log.info(f"plots in {plots}")


if __name__ == "__main__":
    main(snakemake)
