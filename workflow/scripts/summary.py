"""Stage: several datasets' main settings side by side, as a paper's table (Markdown and
LaTeX, balanced_experts.tables.summary_table), from their per-seed report rows."""

from pathlib import Path

import pandas as pd

from balanced_experts.faults import exit_briefly_on
from balanced_experts.files import writing
from balanced_experts.joblog import get_logger
from balanced_experts.tables import FOLDS, summary_table, write_table


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    reports = dict(zip(snakemake.params.datasets, snakemake.input.reports))  # dataset -> report_seeds.csv
    columns = snakemake.params.columns or FOLDS
    markdown, latex = snakemake.output.markdown, snakemake.output.latex
    log = get_logger("summary", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log)

    table = summary_table({name: pd.read_csv(path) for name, path in reports.items()}, columns)
    with writing(Path(markdown).parent):
        write_table(table, markdown, latex)
    log.info(f"{', '.join(reports)} side by side ({', '.join(columns)}):\n{table.markdown()}")


if __name__ == "__main__":
    main(snakemake)
