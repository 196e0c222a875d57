"""The three ways from a list's images to batches on the job's device.

- :func:`preloaded_batches`: images decoded once (synthetic, CIFAR: small), augmented
  batch-wise on the device, which avoids per-sample Python work that would dominate on a CPU;
- :func:`file_batches`: DataLoader workers decode each file with PIL and crop it to the
  input size (ImageNet-LT, Places-LT) into a pool of shared memory that the main process
  reads in place; the rest of the augmentation (the colour jitter) runs batch-wise on the
  device;
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
import dataclasses
import itertools
import os
import warnings
import weakref
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

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
    The batch-wise draws (the jitter's) come from ``generator`` itself.

    A worker writes batch b's crops into slot b % slots of a pool of shared memory that the
    main process allocates for the pass and reads in place (for CUDA, DataLoader's pinning
    thread copies a slot to pinned memory): no shared memory is created, handed over and
    mapped per batch, each time with fresh pages for the worker to fault in. A DataLoader asks
    its workers for at most ``prefetch_factor x workers`` batches beyond the one it has just
    returned, which is read before the next is asked for: one slot more is never one whose
    batch is still needed. The pool's size: ``(_PREFETCH x workers + 1) x batch_size x size^2 x 4`` bytes.
    """
    recipe = spec.recipe
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator else 0
    pool = torch.empty((_PREFETCH * spec.workers + 1, min(batch_size, len(indices)), spec.size, spec.size, 4),
                       dtype=torch.uint8)
    if spec.workers:
        _check_shared_memory(pool, spec.workers)
        pool.share_memory_()
    token = next(_POOL_TOKENS)
    _POOLS[token] = pool  # for as long as the loader's dataset holds it
    loader = DataLoader(
        _Batches(root, image_list, indices.numpy(), targets.numpy(), spec, train, seed, batch_size, pool, token),
        batch_size=None,  # a dataset of whole batches
        shuffle=False,  # already shuffled, reproducibly
        num_workers=spec.workers,
        prefetch_factor=_PREFETCH if spec.workers else None,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),  # its own seed draw, not from torch's global one
    )
    # The images stay uint8 up to the device (a quarter of the bytes of floats).
    normalize = {torch.uint8: normalizer(spec, device, 255.0), torch.float32: normalizer(spec, device, 1.0)}
    for batch in loader:
        x, y = _raise_failure(batch).tensors()
        # N x H x W x 4 (RGBX) as N x 3 x H x W, channels-last; pinned (CUDA) or synchronous
        x = x.to(device, non_blocking=device.type == "cuda").permute(0, 3, 1, 2)[:, :3]
        if train:
            x = recipe.augment_loaded(x, spec, generator)
        yield normalize[x.dtype](x), y.to(device, non_blocking=device.type == "cuda")


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


_PREFETCH = 2
"""DataLoader's ``prefetch_factor`` in :func:`file_batches`: the batches a worker may have in
flight, which the pool's number of slots counts on (DataLoader's default)."""


class SharedMemoryShortage(ImageFileError):
    """The file path's workers cannot have the shared memory their batches need (an
    ImageFileError: every job that reads images ends on one in one line)."""


def _check_shared_memory(pool: torch.Tensor, workers: int, where: str = "/dev/shm") -> None:
    """A pool larger than the free shared memory fails here, in one line: else the first
    worker to write past the end dies of SIGBUS, and DataLoader reports a killed worker."""
    try:
        stats = os.statvfs(where)
    except OSError:  # no such file system here (macOS): nothing to check
        return
    free = stats.f_bavail * stats.f_frsize
    if pool.nbytes > free:
        _, batch, size = pool.shape[:3]
        raise SharedMemoryShortage(
            f"the image loader's {workers} workers need {pool.nbytes / 2**20:,.0f} MiB of shared memory for their "
            f"batches (({_PREFETCH} x input.workers + 1) x {batch} images x {size} x {size} x 4 bytes), and "
            f"{where} has {free / 2**20:,.0f} MiB free: lower input.workers or the batch size, or give the machine "
            f"more (a container: docker run --shm-size)")


_POOLS: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
"""The main process's pools of :func:`file_batches`' passes under way, by token: what a
:class:`_Filled` batch names, so that DataLoader's pinning thread finds its images."""
_POOL_TOKENS = itertools.count()


@dataclasses.dataclass
class _Filled:
    """A batch that a worker wrote into the pool: its ``count`` images in slot ``slot`` of
    pool ``token``, and their ``targets``; ``pinned``: a pinned copy of both, once
    DataLoader's pinning thread has made it (:meth:`pin_memory`, for CUDA)."""

    token: int
    slot: int
    count: int
    targets: np.ndarray  # inline in the pickle: a tensor would cross as one more shared-memory file
    pinned: tuple[torch.Tensor, torch.Tensor] | None = None

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, targets)``: N x size x size x 4 uint8 (RGBX, a view of the pool) and N int64."""
        if self.pinned is not None:
            return self.pinned
        return _POOLS[self.token][self.slot, :self.count], torch.from_numpy(self.targets)

    def pin_memory(self) -> "_Filled":
        images, targets = self.tensors()
        return dataclasses.replace(self, pinned=(images.pin_memory(), targets.pin_memory()))


class _Batches(_Listed):
    """Batch b: the ``batch_size`` images from position b x ``batch_size`` on, each decoded and
    cropped to the input size into slot b % slots of ``pool`` (slots x batch_size x size x size
    x 4 uint8, RGBX): a :class:`_Filled`, or the first ImageFileError."""

    def __init__(self, root: Path, image_list: ImageList, indices, targets, spec: InputSpec, train: bool,
                 seed: int, batch_size: int, pool: torch.Tensor, token: int):
        super().__init__(root, image_list, indices, targets)
        self.spec, self.train, self.seed = spec, train, seed
        self.batch_size, self.pool, self.token = batch_size, pool, token
        self.rows = pool.permute(0, 1, 4, 2, 3)  # each row's size x size x 4 as 4 x size x size, channels-last

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

    def __getitem__(self, b):
        start = b * self.batch_size
        positions = range(start, min(start + self.batch_size, len(self.indices)))
        slot = b % len(self.pool)
        recipe = self.spec.recipe
        # A worker has one thread; the main process (no workers) keeps its own for the model.
        with one_thread() if get_worker_info() is None else contextlib.nullcontext():
            for out, i in zip(self.rows[slot], positions):
                try:
                    image = open_rgb(self.root, self.image_list, int(self.indices[i]))
                except ImageFileError as error:
                    return error
                pixels = rgbx_pixels(image)
                if self.train:
                    recipe.worker_train(pixels, self.spec, worker_generator(self.seed, i), out)
                else:
                    recipe.worker_eval(pixels, self.spec, out)
        return _Filled(self.token, slot, len(positions), self.targets[positions.start:positions.stop].copy())


def rgbx_pixels(image: Image.Image) -> torch.Tensor:
    """The pixels of an RGB image as 4 x H x W uint8, channels-last: PIL's own layout, 4 bytes
    a pixel (RGBX, the 4th padding), not to be written.

    A view of PIL's memory through its Arrow export (Pillow 11.2 and later, an image in one
    block of memory), else one plain copy. NumPy's copy of an RGB image packs its pixels to
    3 bytes, a quarter of the decoding's time; torch's uint8 resize is fastest on 4 channels.
    """
    try:
        buffer = pyarrow.array(image).buffers()[-1]
    except (AttributeError, TypeError, ValueError, pyarrow.ArrowException):
        # An old Pillow, or an image too large for one block ("rows are not contiguous")
        buffer = image.tobytes("raw", "RGBX")
    pixels = np.frombuffer(buffer, dtype=np.uint8).reshape(image.height, image.width, 4).transpose(2, 0, 1)
    return torch.from_numpy(pixels)  # read-only memory, only read: torch's warning is spent below


with warnings.catch_warnings():
    # torch warns once per process of a tensor of read-only memory, as rgbx_pixels' are: here,
    # silenced, rather than a filter set and removed for every image (a tenth of its cost).
    warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
    torch.from_numpy(np.frombuffer(b"\0", dtype=np.uint8))


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


def _list_or_failure(items):
    """The batch of ``items`` as a list, or the first ImageFileError among them."""
    return next((item for item in items if isinstance(item, ImageFileError)), items)


def _raise_failure(batch):
    """``batch``, unless a worker sent an ImageFileError in its place: then that is raised."""
    if isinstance(batch, ImageFileError):
        raise batch
    return batch
