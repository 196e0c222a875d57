"""CIFAR-10-LT / CIFAR-100-LT from a local copy of the standard CIFAR python archives.

The archives are the ones torchvision downloads (``cifar-10-python.tar.gz``,
``cifar-100-python.tar.gz``): pickled dicts with ``data`` (N x 3072 uint8, channel-major
32x32 images) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100), in the members
``data_batch_1..5`` / ``test_batch`` (CIFAR-10) or ``train`` / ``test`` (CIFAR-100).

How the long-tailed dataset is made, seeded and deterministic:

* validation: ``val_per_class`` images per class are held out of the CIFAR *train* set
  first (a balanced slice; the test set is never touched for model selection);
* train: from each class's remaining images, the first ``n_c`` of a seeded shuffle, with
  ``n_c = floor(n_max * imbalance ** (-c / (C - 1)))`` (the exponential profile of Cao et
  al. 2019 and Cui et al. 2019), ``n_max`` the images left per class after the hold-out
  (480 for CIFAR-100 with 20 held out, so 480 -> 4 at imbalance 100 rather than 500 -> 5);
* test: the whole balanced CIFAR test set.

The images are written as PNG files with list files in the ImageNet-LT format, so the one
list-based loader serves CIFAR like every other dataset.
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .files import replacing_folder
from .lists import write_list
from .synthetic import long_tail_counts

# Member names inside each archive (torchvision's layout).
_ARCHIVE_MEMBERS = {
    "cifar10": {"folder": "cifar-10-python", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "labels": b"labels", "meta": "batches.meta",
                "names": b"label_names"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"],
                 "labels": b"fine_labels", "meta": "meta", "names": b"fine_label_names"},
}

VARIANTS = tuple(_ARCHIVE_MEMBERS)
"""The archives ``data.cifar.variant`` may name (the schema's enum; a test holds them equal)."""


class CifarArchiveError(ValueError):
    """An archive that is not a CIFAR python archive of the expected variant."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a CIFAR batch needs nothing
    else, and a tampered archive cannot run code (as ``torch.load(weights_only=True)``)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("_codecs", "encode")}  # how Python 3 writes protocol-2 bytes

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


@dataclass(frozen=True)
class CifarLTSpec:
    """The ``data.cifar`` section of a dataset's config (the archive path travels apart)."""

    variant: str = "cifar100"  # cifar10 | cifar100
    imbalance: float = 100.0
    val_per_class: int = 20
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict | None) -> "CifarLTSpec":
        cfg = {k: v for k, v in dict(cfg or {}).items() if k != "archive"}
        spec = cls(**cfg)
        if spec.variant not in VARIANTS:
            raise ValueError(f"unknown CIFAR variant {spec.variant!r}; expected one of {', '.join(VARIANTS)}")
        return spec


def read_archive(path: str | Path, variant: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images N x 32 x 32 x 3 uint8, labels N int64), "test": ...}`` and class names."""
    members = _ARCHIVE_MEMBERS[variant]
    path = Path(path)
    out: dict = {}
    try:
        with tarfile.open(path, "r:*") as archive:
            def load(name: str) -> dict:
                member = f"{members['folder']}/{name}"
                try:
                    handle = archive.extractfile(member)
                except KeyError:
                    raise CifarArchiveError(
                        f"{path}: no member {member!r}; is this the {variant} python archive?") from None
                # The CIFAR batches are pickles written by Python 2; bytes keys, latin1 strings.
                return _ArrayUnpickler(handle, encoding="bytes").load()

            for split in ("train", "test"):
                images, labels = [], []
                for name in members[split]:
                    batch = load(name)
                    images.append(np.asarray(batch[b"data"], dtype=np.uint8))
                    labels.append(np.asarray(batch[members["labels"]], dtype=np.int64))
                data = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                out[split] = (np.ascontiguousarray(data), np.concatenate(labels))
            names = load(members["meta"])[members["names"]]
            out["class_names"] = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (tarfile.TarError, OSError, pickle.UnpicklingError, EOFError) as error:
        raise CifarArchiveError(f"{path}: cannot read as a CIFAR python archive: {error}") from None
    return out


def long_tail_selection(labels: np.ndarray, num_classes: int, spec: CifarLTSpec):
    """Indices of the held-out val slice and the long-tailed train subset, per class order."""
    rng = np.random.default_rng(spec.seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    available = min(len(idx) for idx in per_class) - spec.val_per_class
    if available < 1:
        raise CifarArchiveError(
            f"val_per_class {spec.val_per_class} leaves no training images in the smallest class")
    counts = long_tail_counts(num_classes, available, spec.imbalance)
    val = np.concatenate([idx[:spec.val_per_class] for idx in per_class])
    train = np.concatenate([idx[spec.val_per_class:spec.val_per_class + n]
                            for idx, n in zip(per_class, counts)])
    return val, train, counts


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray,
                indices: np.ndarray) -> list[str]:
    """PNG files ``<folder>/<split>/<class>/<index>.png``; returns their paths as the list
    file names them (``images/<split>/...``)."""
    paths = []
    for i in indices:
        rel = f"{split}/{int(labels[i]):03d}/{int(i):05d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / rel, optimize=False, compress_level=1)
        paths.append(f"images/{rel}")
    return paths


def prepare(archive: str | Path, spec: CifarLTSpec, root: str | Path, log=print) -> dict:
    """Write the long-tailed train, held-out val and full test split under ``root``: PNG
    files in ``root/images``, which replaces the folder whole once every image is written
    (a failed run leaves no partial folder), then the lists ``root/<split>.txt``."""
    root = Path(root)
    data = read_archive(archive, spec.variant)
    train_images, train_labels = data["train"]
    test_images, test_labels = data["test"]
    num_classes = len(data["class_names"])
    if train_labels.max() >= num_classes or test_labels.max() >= num_classes:
        raise CifarArchiveError(f"{archive}: labels exceed the {num_classes} class names")
    val, train, counts = long_tail_selection(train_labels, num_classes, spec)
    log(f"{spec.variant}: {num_classes} classes, train counts {counts[0]} -> {counts[-1]} "
        f"(imbalance {spec.imbalance:g}), {spec.val_per_class} val per class")
    splits = {"train": (train_images, train_labels, train), "val": (train_images, train_labels, val),
              "test": (test_images, test_labels, np.arange(len(test_labels)))}
    with replacing_folder(root / "images") as staged:
        paths = {split: write_split(staged, split, *arrays) for split, arrays in splits.items()}
    for split, (_, labels, indices) in splits.items():
        write_list(root / f"{split}.txt", paths[split], labels[indices])
    return {split: len(names) for split, names in paths.items()}
