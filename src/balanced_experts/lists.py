"""Split lists in the ImageNet-LT / Places-LT format: one ``relative/path label`` per line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ListFormatError(ValueError):
    """A list file that does not follow the ``relative/path label`` format."""


@dataclass(frozen=True)
class ImageList:
    """The entries of one list file, in file order (the order defines sample ids)."""

    paths: list[str]
    labels: np.ndarray  # int64, one per path
    source: str = "<memory>"
    line_numbers: np.ndarray | None = None  # 1-based line of each entry in ``source``

    def line_of(self, index: int) -> int:
        """The line of ``source`` that entry ``index`` comes from, for error messages."""
        return int(self.line_numbers[index]) if self.line_numbers is not None else index + 1

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def class_counts(self, num_classes: int | None = None) -> np.ndarray:
        n = self.num_classes if num_classes is None else num_classes
        return np.bincount(self.labels, minlength=n)

    def subset(self, indices: np.ndarray) -> "ImageList":
        indices = np.asarray(indices, dtype=np.int64)
        lines = self.line_numbers[indices] if self.line_numbers is not None else indices + 1
        return ImageList([self.paths[i] for i in indices], self.labels[indices], self.source, lines)


def read_list(path: str | Path) -> ImageList:
    """Parse a list file; errors name the file and the 1-based line number."""
    path = Path(path)
    paths: list[str] = []
    labels: list[int] = []
    line_numbers: list[int] = []
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            # The path may contain spaces; the label is the last field.
            parts = text.rsplit(None, 1)
            if len(parts) != 2:
                raise ListFormatError(
                    f"{path}:{lineno}: expected 'relative/path label', got {text!r}"
                )
            rel, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise ListFormatError(
                    f"{path}:{lineno}: label {label_text!r} is not an integer"
                ) from None
            if label < 0:
                raise ListFormatError(f"{path}:{lineno}: label {label} is negative")
            paths.append(rel)
            labels.append(label)
            line_numbers.append(lineno)
    if not paths:
        raise ListFormatError(f"{path}: no entries")
    return ImageList(paths, np.asarray(labels, dtype=np.int64), str(path),
                     np.asarray(line_numbers, dtype=np.int64))


def write_list(path: str | Path, paths: list[str], labels) -> None:
    """Write a list file atomically; a write error names it."""
    from .files import replacing  # not at the top: the Snakefile imports this module, and files imports torch

    with replacing(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for rel, label in zip(paths, labels):
            handle.write(f"{rel} {int(label)}\n")


def check_labels_in_range(image_list: ImageList, num_classes: int) -> None:
    """No label may be ``num_classes`` or more; the error names the first offending line."""
    labels = image_list.labels
    too_big = np.flatnonzero(labels >= num_classes)
    if too_big.size:
        first = int(too_big[0])
        others = f" ({too_big.size - 1} more entries are out of range)" if too_big.size > 1 else ""
        raise ListFormatError(
            f"{image_list.source}:{image_list.line_of(first)}: label {labels[first]} is out of "
            f"range 0..{num_classes - 1}{others}"
        )


def check_labels_cover(image_list: ImageList, num_classes: int) -> None:
    """Every class id 0..num_classes-1 must occur, and no other id."""
    check_labels_in_range(image_list, num_classes)
    labels = image_list.labels
    counts = np.bincount(labels, minlength=num_classes)
    missing = np.flatnonzero(counts[:num_classes] == 0)
    if missing.size:
        shown = ", ".join(str(i) for i in missing[:20])
        more = f" (and {missing.size - 20} more)" if missing.size > 20 else ""
        # A stray large label (the only entry of its class) inflates the class count; point at it.
        largest = int(np.argmax(labels))
        stray = (f" (the largest label, {labels[largest]}, is alone on line {image_list.line_of(largest)})"
                 if counts[labels[largest]] == 1 else "")
        raise ListFormatError(
            f"{image_list.source}: no entries for class ids {shown}{more}; labels must cover "
            f"0..{num_classes - 1}{stray}"
        )


def check_images_exist(image_list: ImageList, root: str | Path) -> None:
    """Every listed image must be a file under ``root``; the error names the list line of
    the first one that is not, and how many more are missing.

    One directory read per folder (``os.scandir``), not a ``stat`` per image: a list names
    few folders and many files (Places-LT: 106,300 images in 368 folders).
    """
    import os

    by_folder: dict[str, list[tuple[int, str]]] = {}
    for index, rel in enumerate(image_list.paths):
        folder, _, name = rel.rpartition("/")
        by_folder.setdefault(folder, []).append((index, name))
    missing = []
    for folder, entries in by_folder.items():
        try:
            with os.scandir(os.path.join(root, folder)) as listing:
                files = {entry.name for entry in listing if entry.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            files = set()
        missing += [index for index, name in entries if name not in files]
    if missing:
        first = min(missing)
        more = f" ({len(missing) - 1} more listed images are missing)" if len(missing) > 1 else ""
        raise ListFormatError(
            f"{image_list.source}:{image_list.line_of(first)}: image {os.path.join(root, image_list.paths[first])} "
            f"does not exist{more}"
        )
