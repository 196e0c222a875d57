"""The images of one list file, and the batch path that serves them (:mod:`.batches`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..lists import ImageList
from .batches import Batches, device_batches, file_batches, preloaded_batches
from .cache import cached_pixels
from .decoding import check_files_exist, decode_all
from .spec import InputSpec


@dataclass
class ImageSource:
    """The images of one list file, ready to be batched."""

    root: Path
    image_list: ImageList
    spec: InputSpec
    pixels: np.ndarray | None = field(default=None, repr=False)  # N x 3 x H x W uint8 when preloaded
    decode_on_device: bool = False  # file path: decode JPEGs on the job's device (batches.device_batches)

    @classmethod
    def open(cls, root: str | Path, image_list: ImageList, spec: InputSpec, cache: str | Path | None = None,
             cache_rows=None, decode_on_device: bool = False) -> "ImageSource":
        """``cache``: the split's :func:`~.cache.write_image_cache` file, whose rows ``cache_rows``
        are the entries of ``image_list`` (all rows, in order, when None); preloaded sources only.
        A source of files checks that each exists.
        """
        source = cls(Path(root), image_list, spec, decode_on_device=decode_on_device)
        size = spec.size
        if spec.preload and cache is not None:
            source.pixels = cached_pixels(cache, image_list, size, cache_rows)
        elif spec.preload:
            source.pixels = decode_all(source.root, image_list, size,
                                       np.empty((len(image_list), 3, size, size), dtype=np.uint8))
        else:
            check_files_exist(source.root, image_list)
        return source

    def __len__(self) -> int:
        return len(self.image_list)

    def batches(
        self,
        indices,
        targets,
        batch_size: int,
        train: bool,
        device: torch.device,
        generator: torch.Generator | None = None,
        shuffle: bool | None = None,
    ) -> Batches:
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
            yield from preloaded_batches(self.pixels, self.spec, indices, targets, batch_size, train, device,
                                         generator)
        else:
            files = device_batches if self.decode_on_device else file_batches
            yield from files(self.root, self.image_list, self.spec, indices, targets, batch_size, train, device,
                             generator)
