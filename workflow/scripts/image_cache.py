"""Stage: decode one split of a preloaded dataset once into a memory-mappable .npy array."""

from balanced_experts.data import ImageFileError, write_image_cache
from balanced_experts.lists import ListFormatError, read_list
from balanced_experts.runtime import exit_briefly_on, get_logger

log = get_logger(f"image_cache_{snakemake.wildcards.split}", snakemake.log[0], snakemake.resources.get("attempt"))
exit_briefly_on(log, ListFormatError, ImageFileError)
image_list = read_list(snakemake.input.images)
size = int(snakemake.params.size)
write_image_cache(snakemake.params.root, image_list, size, snakemake.output.cache)
log.info(f"{len(image_list)} images decoded to {size}x{size} -> {snakemake.output.cache}")
