"""Stage: decode one split of a preloaded dataset once into a memory-mappable .npy array."""

from balanced_experts.faults import exit_briefly_on
from balanced_experts.images.cache import write_image_cache
from balanced_experts.images.decoding import ImageFileError
from balanced_experts.joblog import get_logger
from balanced_experts.lists import ListFormatError, read_list


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    split, images, cache = snakemake.wildcards.split, snakemake.input.images, snakemake.output.cache
    root, size = snakemake.params.root, int(snakemake.params.size)
    log = get_logger(f"image_cache_{split}", snakemake.log[0], snakemake.resources.get("attempt"))
    exit_briefly_on(log, ListFormatError, ImageFileError)

    image_list = read_list(images)
    write_image_cache(root, image_list, size, cache)
    log.info(f"{len(image_list)} images decoded to {size}x{size} -> {cache}")


if __name__ == "__main__":
    main(snakemake)
