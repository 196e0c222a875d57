# Class-balanced experts for long-tailed recognition (Sharma et al., GCPR 2020).
#
#   data -> classes.csv -> base -> experts (many, medium, few) -> logits (every model x
#   train/val/test) -> joint calibration (fit on val) -> report (test, four-fold), per seed
#   -> report.csv (mean and std over the seeds); variants side by side in comparison.csv
#
# Usage: snakemake --cores 2 results/synthetic/report.csv
#        snakemake --cores 16 results/places/report.csv   (data paths: config.yaml, README)
#        snakemake --cores 2 results/synthetic/comparison.csv   (main settings and variants)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


# Set-up, then the input functions (the user's files and the config; the workflow's own
# results, whose paths are balanced_experts.paths), then the rules.
include: "workflow/rules/setup.smk"
include: "workflow/rules/inputs.smk"
include: "workflow/rules/results.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/logits.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/report.smk"


# Reports and plots of the default datasets and their variants, and the logits of every
# model on every split. (A comment: snakefmt 2.1 moves `default_target` above a docstring,
# where it can no longer parse it.)
rule all:
    default_target: True
    input:
        default_targets(),
