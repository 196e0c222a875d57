"""Stage: a dataset's main settings and every variant side by side (mean and std over seeds)."""

from pathlib import Path

import pandas as pd

from balanced_experts.faults import exit_briefly_on
from balanced_experts.files import writing
from balanced_experts.joblog import get_logger
from balanced_experts.plots import comparison_plot
from balanced_experts.over_seeds import comparison


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    reports = dict(zip(snakemake.params.settings, snakemake.input.reports))  # setting -> its report.csv
    table_path, plot_path = snakemake.output.comparison, snakemake.output.plot
    log = get_logger("compare", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log)

    table = comparison({name: pd.read_csv(path) for name, path in reports.items()})
    with writing(Path(table_path).parent):
        table.to_csv(table_path, index=False, float_format="%.2f")
        comparison_plot(table, plot_path)
    columns = ["setting", "method", "many", "medium", "few", "all", "all_std", "seeds"]
    log.info("test top-1 (%), mean over seeds:\n"
             + table[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main(snakemake)
