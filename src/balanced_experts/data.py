"""Images of a list file, as batches of normalised tensors for training and inference.

Two paths serve every dataset:

* ``preload: true`` (small images: synthetic, CIFAR): every image is decoded once into a
  uint8 tensor in memory; augmentation (pad + random crop + flip) runs batch-wise on the
  compute device. This avoids per-sample Python work that would dominate on a CPU.
* ``preload: false`` (ImageNet-LT, Places-LT): a DataLoader with workers decodes files and
  applies the ImageNet recipe per sample (RandomResizedCrop, flip, ColorJitter; eval:
  Resize + CenterCrop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .lists import ImageList

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How images become network inputs; the ``input`` section of a dataset's config."""

    size: int = 224
    resize: int | None = None  # eval: Resize(resize) + CenterCrop(size); default size * 8/7
    augment: str = "imagenet"  # "imagenet" | "crop_flip" | "none"
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


def open_rgb(root: Path, image_list: ImageList, index: int) -> Image.Image:
    path = root / image_list.paths[index]
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ImageFileError(
            f"cannot read image {path} ({image_list.source}, line {image_list.line_of(index)}): {error}"
        ) from error


def check_files_exist(root: Path, image_list: ImageList) -> None:
    """Every listed image must exist: a wrong root or a missing file fails before training starts.

    Only the file system is asked (no decoding), which is cheap even for ImageNet-LT; a
    corrupt file is reported, with its list line, when it is decoded.
    """
    missing = [i for i, rel in enumerate(image_list.paths) if not (root / rel).is_file()]
    if missing:
        first = missing[0]
        raise ImageFileError(
            f"image {root / image_list.paths[first]} does not exist ({image_list.source}, line "
            f"{image_list.line_of(first)}); {len(missing)} of {len(image_list)} listed images are missing"
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


@dataclass
class ImageSource:
    """The images of one list file, ready to be batched."""

    root: Path
    image_list: ImageList
    spec: InputSpec
    pixels: torch.Tensor | None = field(default=None, repr=False)  # N x 3 x H x W uint8 when preloaded

    @classmethod
    def open(cls, root: str | Path, image_list: ImageList, spec: InputSpec) -> "ImageSource":
        source = cls(Path(root), image_list, spec)
        if spec.preload:
            source.pixels = source._decode_all()
        else:
            check_files_exist(source.root, image_list)
        return source

    def __len__(self) -> int:
        return len(self.image_list)

    def _decode_all(self) -> torch.Tensor:
        size = self.spec.size
        pixels = torch.empty((len(self.image_list), 3, size, size), dtype=torch.uint8)
        for i in range(len(self.image_list)):
            image = open_rgb(self.root, self.image_list, i)
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            pixels[i] = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return pixels

    # -- per-sample transforms for the file path -------------------------------------
    def _file_transform(self, train: bool):
        s = self.spec
        tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(s.mean, s.std)]
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
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, targets)`` on ``device``; shuffled (with ``generator``) when training.

        ``indices`` select entries of the list; ``targets`` are the labels to train on
        (global labels for the base model, remapped ones for an expert).
        """
        indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        if train:
            order = torch.randperm(len(indices), generator=generator)
            indices, targets = indices[order], targets[order]
        if self.pixels is not None:
            yield from self._tensor_batches(indices, targets, batch_size, train, device, generator)
        else:
            yield from self._file_batches(indices, targets, batch_size, train, device, generator)

    def _tensor_batches(self, indices, targets, batch_size, train, device, generator):
        mean = torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            x = self.pixels[idx].to(device, non_blocking=True)
            if train and self.spec.augment != "none":
                x = _random_crop_flip(x, self.spec.pad, generator)
            x = ((x.float().div_(255) - mean) / std).contiguous(memory_format=torch.channels_last)
            yield x, targets[start:start + batch_size].to(device, non_blocking=True)

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
        for x, y in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yield x, y.to(device, non_blocking=True)


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
