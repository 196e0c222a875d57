"""A split decoded once into a ``.npy`` file (N x 3 x size x size uint8, list order) that
every job of a preloaded dataset memory-maps, instead of each decoding the same files again."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from ..faults import ArtifactError
from ..files import reading, replacing, unreadable
from ..lists import ImageList
from .decoding import decode_all


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


def cached_pixels(path: str | Path, image_list: ImageList, size: int, rows=None) -> np.ndarray:
    """The pixels of ``image_list`` from its split's cache ``path``, whose rows ``rows`` are
    the entries of ``image_list`` (all rows, in order, when None)."""
    if rows is None:
        return read_image_cache(path, image_list, size)
    rows = np.asarray(rows)
    full = read_image_cache(path, None, size)
    if len(rows) and rows.max() >= len(full):
        raise ArtifactError(path, f"holds {len(full)} images, fewer than {image_list.source} needs")
    return np.ascontiguousarray(full[rows])  # a subset: copied once, small
