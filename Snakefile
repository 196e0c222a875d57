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


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/logits.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/report.smk"


def default_targets():
    """Of each default dataset: the report of its main settings and of each variant (with
    their plots and resolved configs), the logits of every model on every split for every
    seed, and, when the dataset has variants, the comparison."""
    targets = []
    for dataset in config.get("default_datasets", ["synthetic"]):
        settings = [dataset, *EXPERIMENTS.variants(dataset)]
        for setting in settings:
            targets.append(f"results/{setting}/report.csv")
            targets += [f"{EXPERIMENTS.folder(setting, 'logits', seed, model)}/logits/{model}/{split}.parquet"
                        for seed in EXPERIMENTS.seeds(setting) for model in MODELS for split in DATA_SPLITS]
        if len(settings) > 1:
            targets.append(f"results/{dataset}/comparison.csv")
    return list(dict.fromkeys(targets))


rule all:
    """Reports and plots of the default datasets and their variants, and the logits of every
    model on every split."""
    input:
        default_targets(),
    default_target: True
