"""Stage: a dataset's main settings and every variant side by side (mean and std over seeds)."""

from pathlib import Path

import pandas as pd

from balanced_experts.plots import comparison_plot
from balanced_experts.report import comparison
from balanced_experts.runtime import exit_briefly_on, get_logger, writing

log = get_logger("compare", snakemake.log[0], snakemake.resources.get("attempt"))
exit_briefly_on(log)
table = comparison({name: pd.read_csv(path) for name, path in zip(snakemake.params.settings, snakemake.input.reports)})
with writing(Path(snakemake.output.comparison).parent):
    table.to_csv(snakemake.output.comparison, index=False, float_format="%.2f")
    comparison_plot(table, snakemake.output.plot)
columns = ["setting", "method", "many", "medium", "few", "all", "all_std", "seeds"]
log.info("test top-1 (%), mean over seeds:\n"
         + table[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
