"""Images of a list file, as batches of normalised tensors for training and inference.

Two paths serve every dataset:

* ``preload: true`` (small images: synthetic, CIFAR): every image is decoded once into a
  uint8 N x 3 x H x W array; augmentation (pad + random crop + flip) runs batch-wise on the
  compute device. This avoids per-sample Python work that would dominate on a CPU. The
  workflow decodes each split once into a ``.npy`` file (:func:`write_image_cache`) that
  every job memory-maps, instead of every job decoding the same PNG files again.
* ``preload: false`` (ImageNet-LT, Places-LT): a DataLoader with workers decodes files and
  applies the ImageNet recipe per sample (RandomResizedCrop, flip, ColorJitter; eval:
  Resize + CenterCrop). With ``decode_on_device`` the workers only read the file bytes and
  the JPEGs are decoded and augmented batch-wise on the job's device (nvJPEG on CUDA).
"""

from __future__ import annotations

import errno
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .faults import ArtifactError
from .files import reading, replacing, unreadable
from .lists import ImageList

# torchvision is imported where the file path needs it, not here: importing it costs
# 1.5 s per job (it pulls in torch._dynamo), and the preloaded datasets never use it.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENTATIONS = ("imagenet", "crop_flip", "none")
"""The training augmentations ``input.augment`` may name (the schema's enum; a test holds them
equal): RandomResizedCrop + flip + ColorJitter, pad + random crop + flip, none."""


@dataclass(frozen=True)
class InputSpec:
    """How images become network inputs; the ``input`` section of a dataset's config."""

    size: int = 224
    resize: int | None = None  # eval: Resize(resize) + CenterCrop(size); default size * 8/7
    augment: str = "imagenet"  # one of AUGMENTATIONS
    preload: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    workers: int = 0  # DataLoader workers; from_config fills in the job's threads when unset
    pad: int = 4  # crop_flip padding

    @classmethod
    def from_config(cls, cfg: dict | None, default_workers: int = 0) -> "InputSpec":
        """``default_workers`` (a job passes its threads) applies when ``workers`` is unset."""
        cfg = dict(cfg or {})
        for key in ("mean", "std"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        if cfg.get("workers") is None:
            cfg["workers"] = int(default_workers)
        return cls(**cfg)


class ImageFileError(RuntimeError):
    """An image named by a list file that cannot be read."""


def describe_image(root: Path, image_list: ImageList, index: int) -> str:
    """``<root>/<path> (<list file>, line <n>)``: how every error names an image."""
    return f"{root / image_list.paths[index]} ({image_list.source}, line {image_list.line_of(index)})"


def open_rgb(root: Path, image_list: ImageList, index: int) -> Image.Image:
    try:
        with Image.open(root / image_list.paths[index]) as image:
            return image.convert("RGB")
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


class _FileDataset(Dataset):
    def __init__(self, root: Path, image_list: ImageList, indices, targets, transform):
        self.root, self.image_list = root, image_list
        self.indices, self.targets = np.asarray(indices), np.asarray(targets)
        self.transform = transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        image = open_rgb(self.root, self.image_list, int(self.indices[i]))
        return self.transform(image), int(self.targets[i])


def decode_all(root: Path, image_list: ImageList, size: int, out: np.ndarray) -> np.ndarray:
    """Decode every listed image into ``out`` (N x 3 x size x size uint8), resized if needed."""
    for i in range(len(image_list)):
        image = open_rgb(root, image_list, i)
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(image).transpose(2, 0, 1)
    return out


def write_image_cache(root: str | Path, image_list: ImageList, size: int, path: str | Path) -> None:
    """Decode a split once into a ``.npy`` file (N x 3 x size x size uint8, list order).

    Written through a memory map, so the array never has to fit in memory twice, and
    atomically, so a failed or killed job leaves no truncated cache behind.
    """
    with replacing(path, suffix=".tmp.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(image_list), 3, size, size))
        try:
            _reserve_space(tmp)
            decode_all(Path(root), image_list, size, out)
            out.flush()
        finally:
            del out


def _reserve_space(path: Path) -> None:
    """Allocate the blocks of a memory-mapped file up front: a full disk then fails here
    with ENOSPC, not with a SIGBUS crash when a page of the map is first written."""
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as error:
                if error.errno == errno.ENOSPC:
                    raise
                # else a file system that cannot allocate ahead: blocks come as pages are written


def read_image_cache(path: str | Path, image_list: ImageList | None, size: int) -> np.ndarray:
    """The cache of a split, memory-mapped read-only: pages are shared by every job reading it.

    Checked against the split (``image_list``; None: any number of images): an
    :class:`ArtifactError` names a damaged cache or one of other images, and the fix.
    """
    with reading(path, ".npy array"):
        pixels = np.load(path, mmap_mode="r", allow_pickle=False)
    if not isinstance(pixels, np.ndarray):  # np.load opens a zip file too
        raise unreadable(path, ".npy array")
    rows = len(image_list) if image_list is not None else (pixels.shape[0] if pixels.ndim else -1)
    if pixels.shape != (rows, 3, size, size) or pixels.dtype != np.uint8:
        expected = f"({rows if image_list is not None else 'N'}, 3, {size}, {size})"
        of = f" of {image_list.source}" if image_list is not None else ""
        raise ArtifactError(path, f"holds {pixels.dtype} {pixels.shape}, not the uint8 {expected} images{of}")
    return pixels


@dataclass
class ImageSource:
    """The images of one list file, ready to be batched."""

    root: Path
    image_list: ImageList
    spec: InputSpec
    pixels: np.ndarray | None = field(default=None, repr=False)  # N x 3 x H x W uint8 when preloaded
    decode_on_device: bool = False  # file path: decode JPEGs on the job's device (see module doc)

    @classmethod
    def open(cls, root: str | Path, image_list: ImageList, spec: InputSpec, cache: str | Path | None = None,
             cache_rows=None, decode_on_device: bool = False) -> "ImageSource":
        """``cache``: the split's :func:`write_image_cache` file, whose rows ``cache_rows`` are
        the entries of ``image_list`` (all rows, in order, when None); preloaded sources only.
        """
        source = cls(Path(root), image_list, spec, decode_on_device=decode_on_device)
        if spec.preload and cache is not None:
            if cache_rows is None:
                source.pixels = read_image_cache(cache, image_list, spec.size)
            else:
                rows = np.asarray(cache_rows)
                full = read_image_cache(cache, None, spec.size)
                if len(rows) and rows.max() >= len(full):
                    raise ArtifactError(cache, f"holds {len(full)} images, fewer than {image_list.source} needs")
                source.pixels = np.ascontiguousarray(full[rows])  # a subset: copied once, small
        elif spec.preload:
            size = spec.size
            source.pixels = decode_all(source.root, image_list, size,
                                       np.empty((len(image_list), 3, size, size), dtype=np.uint8))
        else:
            check_files_exist(source.root, image_list)
        return source

    def __len__(self) -> int:
        return len(self.image_list)

    # -- per-sample transforms for the file path -------------------------------------
    def _file_transform(self, train: bool):
        from torchvision.transforms import v2

        s = self.spec
        # Workers hand over uint8 images (a quarter of the bytes through shared memory); the
        # scaling to [0, 1] and the normalisation run batch-wise on the device (_normalizer).
        tail = [v2.PILToTensor()]
        if train and s.augment == "imagenet":
            head = [v2.RandomResizedCrop(s.size, antialias=True), v2.RandomHorizontalFlip(),
                    v2.ColorJitter(0.4, 0.4, 0.4)]
        elif train and s.augment == "crop_flip":
            head = [v2.Resize(s.size, antialias=True), v2.CenterCrop(s.size),
                    v2.RandomCrop(s.size, padding=s.pad), v2.RandomHorizontalFlip()]
        else:
            resize = s.resize or round(s.size * 8 / 7)
            head = [v2.Resize(resize, antialias=True), v2.CenterCrop(s.size)]
        return v2.Compose(head + tail)

    # -- batches ------------------------------------------------------------------------
    def batches(
        self,
        indices,
        targets,
        batch_size: int,
        train: bool,
        device: torch.device,
        generator: torch.Generator | None = None,
        shuffle: bool | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, targets)`` on ``device``; shuffled (with ``generator``) when training.

        ``indices`` select entries of the list; ``targets`` are the labels to train on
        (global labels for the base model, remapped ones for an expert). ``shuffle=False``
        keeps the given order in training (a sampler's batches), augmentation still on.
        """
        indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        if train if shuffle is None else shuffle:
            order = torch.randperm(len(indices), generator=generator)
            indices, targets = indices[order], targets[order]
        if self.pixels is not None:
            yield from self._tensor_batches(indices, targets, batch_size, train, device, generator)
        elif self.decode_on_device:
            yield from self._device_decoded_batches(indices, targets, batch_size, train, device, generator)
        else:
            yield from self._file_batches(indices, targets, batch_size, train, device, generator)

    def _normalizer(self, device: torch.device, unit: float):
        """``x -> (x / unit - mean) / std`` as float, channels-last, for images on ``device``
        (uint8 with ``unit`` 255, or float in [0, 1] with ``unit`` 1). One float copy and one
        in-place multiply-add (the layout is changed while the images are still uint8): a
        quarter of the memory traffic of four passes. Made once per pass over the data."""
        std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)
        mean = torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1)
        scale, shift = 1 / (unit * std), mean / std

        def normalize(x: torch.Tensor) -> torch.Tensor:
            return x.contiguous(memory_format=torch.channels_last).float().mul_(scale).sub_(shift)

        return normalize

    def _tensor_batches(self, indices, targets, batch_size, train, device, generator):
        normalize = self._normalizer(device, 255.0)
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            x = torch.from_numpy(np.asarray(self.pixels[idx.numpy()]))  # a copy, also from a memory map
            if device.type == "cuda":
                x = x.pin_memory()  # so the copy below is asynchronous
            x = x.to(device, non_blocking=True)
            if train and self.spec.augment != "none":
                x = _random_crop_flip(x, self.spec.pad, generator)
            yield normalize(x), targets[start:start + batch_size].to(device, non_blocking=True)

    def _file_batches(self, indices, targets, batch_size, train, device, generator):
        dataset = _FileDataset(self.root, self.image_list, indices.numpy(), targets.numpy(),
                               self._file_transform(train))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator else 0
        workers = self.spec.workers
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,  # already shuffled above, reproducibly
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=None,
            generator=torch.Generator().manual_seed(seed),
        )
        normalize = self._normalizer(device, 255.0)
        for x, y in loader:
            yield normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)


    def _device_decoded_batches(self, indices, targets, batch_size, train, device, generator):
        """Workers read file bytes; JPEGs are decoded (nvJPEG on CUDA, libjpeg on the CPU) and
        resized on ``device``, and the flip, colour jitter and normalisation run batch-wise there.

        The augmentation draws its random numbers from ``generator`` on the CPU, so the crops
        are the same on every device. Its colour jitter applies brightness, contrast and
        saturation in that fixed order (torchvision's ColorJitter shuffles the order).
        """
        dataset = _EncodedDataset(self.root, self.image_list, indices.numpy(), targets.numpy())
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.spec.workers,
                            collate_fn=_keep_list, pin_memory=False,
                            prefetch_factor=4 if self.spec.workers else None)
        s = self.spec
        normalize = self._normalizer(device, 1.0)  # the crops below are floats in [0, 1]
        for items in loader:
            encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data, _, _ in items]
            y = torch.tensor([target for _, target, _ in items])
            images = decode_images(encoded, device,
                                   lambda k: describe_image(self.root, self.image_list, items[k][2]))
            crops = []
            for image in images:
                h, w = image.shape[-2:]
                if train and s.augment == "imagenet":
                    top, left, ch, cw = _random_resized_crop_box(h, w, generator)
                    crop = _resize(image[:, top:top + ch, left:left + cw], (s.size, s.size))
                else:
                    short = s.size if train else (s.resize or round(s.size * 8 / 7))
                    scale = short / min(h, w)
                    resized = _resize(image, (max(short, round(h * scale)), max(short, round(w * scale))))
                    # CenterCrop's offsets (rounded, not floored), so eval inputs match the PIL path.
                    top = int(round((resized.shape[1] - s.size) / 2))
                    left = int(round((resized.shape[2] - s.size) / 2))
                    crop = resized[:, top:top + s.size, left:left + s.size]
                crops.append(crop)
            x = torch.stack(crops).div_(255)
            if train and s.augment == "imagenet":
                x = _flip_and_jitter(x, generator)
            elif train and s.augment == "crop_flip":
                x = _random_crop_flip(x, s.pad, generator)
            yield normalize(x), y.to(device, non_blocking=True)


class _EncodedDataset(Dataset):
    """The raw bytes of each file: the cheap part of loading, left to the workers."""

    def __init__(self, root: Path, image_list: ImageList, indices, targets):
        self.root, self.image_list = root, image_list
        self.indices, self.targets = np.asarray(indices), np.asarray(targets)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        """``(file bytes, target, list index)``; the index names the file if it fails to decode."""
        index = int(self.indices[i])
        try:
            # Plain bytes, not a tensor: a tensor would cross to the main process as a
            # shared-memory file descriptor per image, and hundreds in flight exhaust them.
            data = (self.root / self.image_list.paths[index]).read_bytes()
        except OSError as error:
            raise ImageFileError(
                f"cannot read image {describe_image(self.root, self.image_list, index)}: {error}") from error
        return data, int(self.targets[i]), index


def _keep_list(items):
    return items


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


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of one 3 x H x W image to float 3 x size."""
    return torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear",
                                           antialias=True, align_corners=False)[0]


def _random_resized_crop_box(h: int, w: int, generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop's box (torchvision's algorithm), drawn from ``generator``."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(4, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        cw, ch = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(draws[2] * (h - ch + 1)), int(draws[3] * (w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _flip_and_jitter(x: torch.Tensor, generator, strength: float = 0.4) -> torch.Tensor:
    """Horizontal flip of half the images and ColorJitter(0.4, 0.4, 0.4), batch-wise on [0, 1] images."""
    n = x.shape[0]
    flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    factors = (1 + strength * (2 * torch.rand(n, 3, generator=generator) - 1)).to(x.device)
    x = torch.where(flips[:, None, None, None], x.flip(3), x)
    x = (x * factors[:, 0, None, None, None]).clamp_(0, 1)  # brightness
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = (x - gray.mean((2, 3), keepdim=True)) * factors[:, 1, None, None, None] + gray.mean((2, 3), keepdim=True)
    x = x.clamp_(0, 1)  # contrast
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    return ((x - gray) * factors[:, 2, None, None, None] + gray).clamp_(0, 1)  # saturation


def _random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero-pad by ``pad``, crop back at a random offset and flip half the images, batch-wise."""
    n, _, h, w = x.shape
    # Draw on the CPU generator so results do not depend on the device.
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0, None] + torch.arange(h)).to(x.device)  # n x h
    cols = (offsets[:, 1, None] + torch.arange(w)).to(x.device)  # n x w
    cols = torch.where(flips.to(x.device)[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return out.permute(0, 3, 1, 2).contiguous()
