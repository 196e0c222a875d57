"""Stage: write a setting's merged config (defaults, dataset, variant) beside its results."""

import yaml

from balanced_experts.faults import exit_briefly_on
from balanced_experts.files import writing
from balanced_experts.joblog import get_logger


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    setting, path = snakemake.wildcards.setting, snakemake.output.config
    settings = dict(snakemake.params.settings)
    log = get_logger("resolved_config", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log)

    with writing(path), open(path, "w") as handle:
        handle.write(f"# The settings of results/{setting}/ as the workflow ran them:\n"
                     "# config.yaml's defaults, the dataset's section and (for a variant) the variant's,\n"
                     "# merged. Replicate k trains with every model's seed + 1000 k.\n")
        yaml.safe_dump(settings, handle, sort_keys=False)
    log.info(f"wrote {path}")


if __name__ == "__main__":
    main(snakemake)
