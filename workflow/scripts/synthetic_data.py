"""Stage: generate the embedded synthetic dataset (images + train/val/test lists)."""

from pathlib import Path

from balanced_experts.faults import exit_briefly_on
from balanced_experts.joblog import get_logger
from balanced_experts.synthetic import SyntheticSpec, generate


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    synthetic, root = snakemake.params.synthetic, Path(snakemake.output.train).parent
    log = get_logger("synthetic_data", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log)

    spec = SyntheticSpec.from_config(synthetic)

    log.info(f"generating {spec}")
    counts = generate(spec, root, log=log.info)
    log.info(f"done: {counts}")


if __name__ == "__main__":
    main(snakemake)
