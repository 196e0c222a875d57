# Class-balanced experts for long-tailed recognition (Sharma et al., GCPR 2020).
#
#   data -> classes.csv -> base -> experts (many, medium, few) -> logits (every model x
#   train/val/test) -> joint calibration (fit on val) -> report.csv (test, four-fold)
#
# Usage: snakemake --cores 2 results/synthetic/report.csv
#        snakemake --cores 16 results/places/report.csv   (data paths: config.yaml, README)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/logits.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/report.smk"


rule all:
    """Reports and plots of the default datasets, and the logits of every model on every split."""
    input:
        expand("results/{dataset}/report.csv", dataset=config.get("default_datasets", ["synthetic"])),
        expand("results/{dataset}/plots/per_class_accuracy.png", dataset=config.get("default_datasets", ["synthetic"])),
        expand(
            "results/{dataset}/logits/{model}/{split}.parquet",
            dataset=config.get("default_datasets", ["synthetic"]),
            model=MODELS,
            split=DATA_SPLITS,
        ),
    default_target: True
