"""Stage: CIFAR-10/100-LT from the local python archive (PNG images + train/val/test lists)."""

from pathlib import Path

from balanced_experts.cifar import CifarArchiveError, CifarLTSpec, prepare
from balanced_experts.faults import exit_briefly_on
from balanced_experts.joblog import get_logger


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    archive, root = snakemake.input.archive, Path(snakemake.output.train).parent
    cifar = snakemake.params.cifar
    log = get_logger("cifar_data", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log, CifarArchiveError)

    spec = CifarLTSpec.from_config(cifar)

    log.info(f"reading {archive}: {spec}")
    counts = prepare(archive, spec, root, log=log.info)
    log.info(f"done: {counts}")


if __name__ == "__main__":
    main(snakemake)
