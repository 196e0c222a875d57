"""The three ways from a list's images to batches on the job's device.

- :func:`preloaded_batches`: images decoded once (synthetic, CIFAR: small), augmented
  batch-wise on the device, which avoids per-sample Python work that would dominate on a CPU;
- :func:`file_batches`: DataLoader workers decode each file with PIL and crop it to the
  input size (ImageNet-LT, Places-LT); the rest of the augmentation (the colour jitter) runs
  batch-wise on the device;
- :func:`device_batches` (``decode_on_device``): the workers only read the files' bytes; the
  JPEGs are decoded (nvJPEG on CUDA) and augmented batch-wise on the device.

Each yields ``(images, targets)`` on the device: images float N x 3 x size x size,
channels-last, normalised with the spec's mean and std, in the order of ``indices``.

A worker hands an :class:`ImageFileError` to the main process as a value, which raises it
there: raised in the worker, it would arrive as torch's re-raise, its message the worker's
whole traceback, instead of its one line.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from ..lists import ImageList
from .augment import one_thread
from .decoding import ImageFileError, decode_images, describe_image, open_rgb
from .spec import InputSpec

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def normalizer(spec: InputSpec, device: torch.device, unit: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> (x / unit - mean) / std`` as float, channels-last, for images on ``device``
    (uint8 with ``unit`` 255, or float in [0, 1] with ``unit`` 1). One float copy and one
    in-place multiply-add (the layout is changed while the images are still uint8): a
    quarter of the memory traffic of four passes. Made once per pass over the data."""
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    scale, shift = 1 / (unit * std), mean / std

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last).float().mul_(scale).sub_(shift)

    return normalize


def preloaded_batches(pixels: np.ndarray, spec: InputSpec, indices: torch.Tensor, targets: torch.Tensor,
                      batch_size: int, train: bool, device: torch.device, generator) -> Batches:
    """Batches of ``pixels`` (N x 3 x size x size uint8, e.g. a memory-mapped cache)."""
    normalize = normalizer(spec, device, 255.0)
    for start in range(0, len(indices), batch_size):
        x = torch.from_numpy(np.asarray(pixels[indices[start:start + batch_size].numpy()]))  # a copy, also of a map
        if device.type == "cuda":
            x = x.pin_memory()  # so the copy below is asynchronous
        x = x.to(device, non_blocking=True)
        if train:
            x = spec.recipe.augment_preloaded(x, spec, generator)
        yield normalize(x), targets[start:start + batch_size].to(device, non_blocking=True)


def file_batches(root: Path, image_list: ImageList, spec: InputSpec, indices: torch.Tensor, targets: torch.Tensor,
                 batch_size: int, train: bool, device: torch.device, generator) -> Batches:
    """Batches of the listed files, decoded and cropped by ``spec.workers`` workers
    (:meth:`~.augment.Recipe.worker_train`), augmented further batch-wise on ``device``
    (:meth:`~.augment.Recipe.augment_loaded`).

    A worker's random draws (crop box, flip) come from a generator seeded by the pass's seed
    (from ``generator``) and the image's position: the same crops for any number of workers.
    The batch-wise draws (the jitter's) come from ``generator`` itself."""
    recipe = spec.recipe
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator else 0
    loader = DataLoader(
        _Images(root, image_list, indices.numpy(), targets.numpy(), spec, train, seed),
        batch_size=batch_size,
        shuffle=False,  # already shuffled, reproducibly
        num_workers=spec.workers,
        collate_fn=_stack_or_failure,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),  # its own seed draw, not from torch's global one
    )
    # Workers hand over uint8 images (a quarter of the bytes through shared memory).
    normalize = {torch.uint8: normalizer(spec, device, 255.0), torch.float32: normalizer(spec, device, 1.0)}
    for batch in loader:
        x, y = _raise_failure(batch)
        x = x.permute(0, 3, 1, 2).to(device, non_blocking=True)  # N x H x W x 3 as N x 3 x H x W, channels-last
        if train:
            x = recipe.augment_loaded(x, spec, generator)
        yield normalize[x.dtype](x), y.to(device, non_blocking=True)


def device_batches(root: Path, image_list: ImageList, spec: InputSpec, indices: torch.Tensor, targets: torch.Tensor,
                   batch_size: int, train: bool, device: torch.device, generator) -> Batches:
    """Batches of the listed files, decoded (nvJPEG on CUDA, libjpeg on the CPU) and
    transformed on ``device``; the workers only read the files.

    The augmentation draws its random numbers from ``generator`` on the CPU, so the crops
    are the same on every device."""
    loader = DataLoader(_EncodedImages(root, image_list, indices.numpy(), targets.numpy()), batch_size=batch_size,
                        shuffle=False, num_workers=spec.workers, collate_fn=_list_or_failure, pin_memory=False,
                        prefetch_factor=4 if spec.workers else None)
    recipe = spec.recipe
    normalize = normalizer(spec, device, 1.0)  # the crops below are floats in [0, 1]
    for items in loader:
        items = _raise_failure(items)
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data, _, _ in items]
        y = torch.tensor([target for _, target, _ in items])
        images = decode_images(encoded, device, lambda k: describe_image(root, image_list, items[k][2]))
        x = torch.stack([recipe.train_crop(image, spec, generator) if train else recipe.eval_crop(image, spec)
                         for image in images]).div_(255)
        if train:
            x = recipe.augment_batch(x, spec, generator)
        yield normalize(x), y.to(device, non_blocking=True)


# -- what the workers run ----------------------------------------------------------------------

def worker_generator(seed: int, position: int) -> torch.Generator:
    """The generator of a worker's draws for the image at ``position`` of a pass of ``seed``."""
    # torch's mt19937 takes a 32-bit seed: the two are mixed into one.
    return torch.Generator().manual_seed((seed * 1_000_003 + position) % 2**32)


class _Listed(Dataset):
    """The listed images ``indices`` (positions in ``image_list``), with their ``targets``."""

    def __init__(self, root: Path, image_list: ImageList, indices, targets):
        self.root, self.image_list = root, image_list
        self.indices, self.targets = np.asarray(indices), np.asarray(targets)

    def __len__(self):
        return len(self.indices)


class _Images(_Listed):
    """Each image decoded and cropped to the input size: ``(uint8 size x size x 3 image,
    target)``, or the ImageFileError."""

    def __init__(self, root: Path, image_list: ImageList, indices, targets, spec: InputSpec, train: bool,
                 seed: int):
        super().__init__(root, image_list, indices, targets)
        self.spec, self.train, self.seed = spec, train, seed

    def __getitem__(self, i):
        try:
            image = open_rgb(self.root, self.image_list, int(self.indices[i]))
        except ImageFileError as error:
            return error
        with warnings.catch_warnings():
            # PIL's pixels as a read-only array, only read here: a copy would cost an eighth
            # of the decoding.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)  # a 3 x H x W view
        recipe = self.spec.recipe
        # A worker has one thread; the main process (no workers) keeps its own for the model.
        with one_thread() if get_worker_info() is None else contextlib.nullcontext():
            if self.train:
                crop = recipe.worker_train(pixels, self.spec, worker_generator(self.seed, i))
            else:
                crop = recipe.worker_eval(pixels, self.spec)
        return crop, int(self.targets[i])  # stacked into shared memory by the collate


class _EncodedImages(_Listed):
    """The raw bytes of each file, the cheap part of loading: ``(file bytes, target, list
    index)`` (the index names the file if it fails to decode), or the ImageFileError."""

    def __getitem__(self, i):
        index = int(self.indices[i])
        try:
            # Plain bytes, not a tensor: a tensor would cross to the main process as a
            # shared-memory file descriptor per image, and hundreds in flight exhaust them.
            data = (self.root / self.image_list.paths[index]).read_bytes()
        except OSError as error:
            return ImageFileError(f"cannot read image {describe_image(self.root, self.image_list, index)}: {error}")
        return data, int(self.targets[i]), index


def _first_failure(items) -> ImageFileError | None:
    return next((item for item in items if isinstance(item, ImageFileError)), None)


def _stack_or_failure(items):
    """The batch of ``items`` stacked (torch's default), or the first ImageFileError among them."""
    failure = _first_failure(items)
    return failure if failure is not None else default_collate(items)


def _list_or_failure(items):
    """The batch of ``items`` as a list, or the first ImageFileError among them."""
    failure = _first_failure(items)
    return failure if failure is not None else items


def _raise_failure(batch):
    """``batch``, unless a worker sent an ImageFileError in its place: then that is raised."""
    if isinstance(batch, ImageFileError):
        raise batch
    return batch
