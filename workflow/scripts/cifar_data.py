"""Stage: CIFAR-10/100-LT from the local python archive (PNG images + train/val/test lists)."""

from pathlib import Path

from balanced_experts.cifar import CifarArchiveError, CifarLTSpec, prepare
from balanced_experts.runtime import exit_briefly_on, get_logger

log = get_logger("cifar_data", snakemake.log[0], snakemake.resources.get("attempt"))
exit_briefly_on(log, CifarArchiveError)
spec = CifarLTSpec.from_config(snakemake.params.cifar)
log.info(f"reading {snakemake.input.archive}: {spec}")
counts = prepare(snakemake.input.archive, spec, Path(snakemake.output.train).parent, log=log.info)
log.info(f"done: {counts}")
