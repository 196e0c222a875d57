"""Image files to pixels, and the one-line error that names a file that cannot be read.

The file and preloaded paths decode with PIL (:func:`open_rgb`); the device path with
torchvision's decoders, JPEGs as one batch on the job's device (:func:`decode_images`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from ..lists import ImageList

if TYPE_CHECKING:
    import torch


class ImageFileError(RuntimeError):
    """An image named by a list file that cannot be read."""


def describe_image(root: Path, image_list: ImageList, index: int) -> str:
    """``<root>/<path> (<list file>, line <n>)``: how every error names an image."""
    return f"{root / image_list.paths[index]} ({image_list.source}, line {image_list.line_of(index)})"


def open_rgb(root: Path, image_list: ImageList, index: int) -> Image.Image:
    try:
        # os.path.join: a worker opens thousands of files a second, and a Path is built slowly
        with Image.open(os.path.join(root, image_list.paths[index])) as image:
            image.load()
            # convert() copies an image even into its own mode: most files are RGB already.
            return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ImageFileError(f"cannot read image {describe_image(root, image_list, index)}: {error}") from error


def check_files_exist(root: Path, image_list: ImageList) -> None:
    """Every listed image must exist: a wrong root or a missing file fails before training starts.

    Only the file system is asked (no decoding), which is cheap even for ImageNet-LT; a
    corrupt file is reported, with its list line, when it is decoded.
    """
    missing = [i for i, rel in enumerate(image_list.paths) if not (root / rel).is_file()]
    if missing:
        raise ImageFileError(
            f"image {describe_image(root, image_list, missing[0])} does not exist; "
            f"{len(missing)} of {len(image_list)} listed images are missing"
        )


def decode_all(root: Path, image_list: ImageList, size: int, out: np.ndarray) -> np.ndarray:
    """Decode every listed image into ``out`` (N x 3 x size x size uint8), resized if needed."""
    for i in range(len(image_list)):
        image = open_rgb(root, image_list, i)
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(image).transpose(2, 0, 1)
    return out


def decode_images(encoded: list[torch.Tensor], device: torch.device,
                  name_of: Callable[[int], str] = lambda k: f"#{k} of the batch") -> list[torch.Tensor]:
    """3 x H x W uint8 RGB images on ``device`` from encoded files.

    JPEGs are decoded as one batch on ``device`` (nvJPEG on CUDA); anything else (PNG, ...)
    on the CPU and copied over. One file nvJPEG cannot decode (a CMYK JPEG; ImageNet has
    about 22) or a truncated one fails the whole batch with an error that names no file:
    then the batch's JPEGs are decoded one by one on the CPU, and a file that fails there
    too raises :class:`ImageFileError` naming it (``name_of(k)`` names the k-th image).
    """
    is_jpeg = [len(data) > 2 and data[0] == 0xFF and data[1] == 0xD8 for data in encoded]
    images: list[torch.Tensor | None] = [None] * len(encoded)
    positions = [k for k, jpeg in enumerate(is_jpeg) if jpeg]
    if positions:
        try:
            decoded = _decode_jpeg_batch([encoded[k] for k in positions], device)
        except RuntimeError:
            decoded = [None] * len(positions)  # decoded one by one below
        for k, image in zip(positions, decoded):
            images[k] = image
    for k, image in enumerate(images):
        if image is None:
            images[k] = _decode_on_cpu(encoded[k], name_of(k)).to(device)
    return images


def _decode_jpeg_batch(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    wait_for_device(device)
    return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)


def wait_for_device(device: torch.device) -> None:
    """Before a device decode, wait for the work queued on ``device``'s current stream; a no-op
    on the CPU.

    torchvision's CUDA ``decode_jpeg`` allocates its outputs on the caller's stream but
    writes them from a private stream that does not wait for it (pytorch/vision#9606), so
    it can overwrite memory that a queued forward pass still reads (freed by the caller,
    recycled by the caching allocator): silently wrong inputs, logits and cRT features.
    Nothing else between two batches syncs with the host (``predict`` never does).
    """
    if device.type == "cuda":
        import torch

        torch.cuda.current_stream(device).synchronize()


def _decode_on_cpu(data: torch.Tensor, name: str) -> torch.Tensor:
    """One image by the CPU decoders (libjpeg reads CMYK JPEGs too), or an error naming it."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as error:
        # torchvision prefixes its C++ source location ("decode_jpeg, .../decode_jpeg.cpp:171, ").
        message = re.sub(r"^.*\.cpp:\d+, ", "", str(error))
        raise ImageFileError(f"cannot read image {name}: {message}") from error
