"""Generators of small real-format data for the tests: an ImageNet-LT-style root with
JPEG files and list files, a CIFAR python archive, and ResNet state dicts as saved by
torchvision and by the Caffe conversion OLTR used."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.resnet import BasicBlock, ResNet

# Per-class training counts of the mini ImageNet-LT root; val 3 and test 4 per class.
MINI_TRAIN_COUNTS = (24, 16, 10, 6, 4, 3)


def _class_image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A noisy image whose mean colour says its class (learnable in a few steps)."""
    base = np.array([(label * 53) % 256, (label * 97 + 60) % 256, (label * 151 + 120) % 256])
    noise = rng.integers(-40, 41, (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_imagenet_lt_root(root: Path, counts=MINI_TRAIN_COUNTS, val=3, test=4, size=20) -> dict:
    """ImageNet-LT layout: images under ``images/train/<wnid>/`` (train and val lists) and
    ``images/val/<wnid>/`` (test list), lists ``lists/ImageNet_LT_{train,val,test}.txt``."""
    rng = np.random.default_rng(0)
    images, lists = root / "images", root / "lists"
    lines = {"train": [], "val": [], "test": []}
    serial = 0
    for label, train_count in enumerate(counts):
        wnid = f"n{label:08d}"
        for split, n in (("train", train_count), ("val", val), ("test", test)):
            for _ in range(n):
                serial += 1
                if split == "test":
                    rel = f"val/{wnid}/ILSVRC2012_val_{serial:08d}.JPEG"
                else:
                    rel = f"train/{wnid}/{wnid}_{serial}.JPEG"
                (images / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_class_image(rng, label, size)).save(images / rel, format="JPEG")
                lines[split].append(f"{rel} {label}")
    lists.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, entries in lines.items():
        paths[split] = lists / f"ImageNet_LT_{split}.txt"
        paths[split].write_text("\n".join(entries) + "\n")
    return {"root": str(images), **{f"{split}_list": str(p) for split, p in paths.items()}}


def make_cifar_archive(path: Path, variant: str = "cifar100", num_classes: int = 6,
                       train_per_class: int = 40, test_per_class: int = 5) -> Path:
    """A CIFAR python archive in torchvision's format, with fewer classes and images."""
    rng = np.random.default_rng(1)

    def batch(per_class: int) -> tuple[np.ndarray, list[int]]:
        labels = np.repeat(np.arange(num_classes), per_class)
        rng.shuffle(labels)
        data = np.stack([_class_image(rng, int(y), 32).transpose(2, 0, 1).reshape(-1) for y in labels])
        return data, labels.tolist()

    if variant == "cifar100":
        folder, label_key = "cifar-100-python", b"fine_labels"
        train_data, train_labels = batch(train_per_class)
        test_data, test_labels = batch(test_per_class)
        members = {"train": {b"data": train_data, label_key: train_labels,
                             b"coarse_labels": [0] * len(train_labels)},
                   "test": {b"data": test_data, label_key: test_labels,
                            b"coarse_labels": [0] * len(test_labels)},
                   "meta": {b"fine_label_names": [f"class{c}".encode() for c in range(num_classes)]}}
    else:
        folder, label_key = "cifar-10-python", b"labels"
        data, labels = batch(train_per_class)
        members = {f"data_batch_{i + 1}": {b"data": chunk, label_key: chunk_labels.tolist()}
                   for i, (chunk, chunk_labels) in enumerate(zip(np.array_split(data, 5),
                                                                  np.array_split(labels, 5)))}
        test_data, test_labels = batch(test_per_class)
        members["test_batch"] = {b"data": test_data, label_key: test_labels}
        members["batches.meta"] = {b"label_names": [f"class{c}".encode() for c in range(num_classes)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            payload = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def resnet10_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-named ResNet-10 (BasicBlock [1, 1, 1, 1]) state dict with its fc."""
    torch.manual_seed(seed)
    return ResNet(BasicBlock, [1, 1, 1, 1]).state_dict()


def caffe_style(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors with the differences a Caffe-converted file can show: written by a
    PyTorch without BatchNorm's ``num_batches_tracked``, from a ``DataParallel`` model
    (``module.`` prefix)."""
    return {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}


# iNaturalist 2018's shape: 8,142 classes, 437,513 training images (1,000 down to 2 per
# class), 24,426 validation images (3 per class); 842 / 4,076 / 3,224 many / medium / few
# classes under the standard rule.
INATURALIST_SPLITS = {"many": (842, 1000, 101), "medium": (4076, 100, 20), "few": (3224, 19, 2)}
INATURALIST_TRAIN_IMAGES = 437_513
INATURALIST_SUPERCATEGORIES = ("Plantae", "Insecta", "Aves", "Reptilia", "Mammalia", "Fungi", "Amphibia",
                               "Mollusca", "Animalia", "Arachnida", "Actinopterygii", "Chromista", "Protozoa",
                               "Bacteria")


def inaturalist_train_counts() -> np.ndarray:
    """Per-class training counts of iNaturalist 2018's shape, in class-id order (shuffled
    against their size, as the real ids are): each split's counts fall from its largest to
    its smallest as lo * (hi / lo) ** ((1 - t) ** p), p chosen so the total is the real one."""

    def counts(p):
        return np.concatenate([np.floor(lo * (hi / lo) ** ((1 - np.linspace(0, 1, n)) ** p)).astype(np.int64)
                               for n, hi, lo in INATURALIST_SPLITS.values()])

    low, high = 0.1, 20.0  # the total falls as p grows
    for _ in range(60):
        low, high = ((low + high) / 2, high) if counts((low + high) / 2).sum() > INATURALIST_TRAIN_IMAGES \
            else (low, (low + high) / 2)
    by_size = counts(high)
    by_size[1:1 + INATURALIST_TRAIN_IMAGES - by_size.sum()] += 1  # the floor's remainder, to the largest classes
    return np.random.default_rng(2018).permutation(by_size)


def make_inaturalist_lists(folder: Path, val_per_class: int = 3) -> dict:
    """The field's list files of iNaturalist 2018's shape (paths ``train_val2018/<super
    category>/<class>/<n>.jpg``, as classifier-balancing's iNaturalist18_*.txt), no images:
    ``{"train": path, "val": path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = inaturalist_train_counts()
    files = {}
    for split, per_class in (("train", counts), ("val", np.full(len(counts), val_per_class))):
        lines = [f"train_val2018/{INATURALIST_SUPERCATEGORIES[c % len(INATURALIST_SUPERCATEGORIES)]}/{c}/"
                 f"{split}{i:04d}.jpg {c}\n" for c, n in enumerate(per_class) for i in range(n)]
        files[split] = folder / f"iNaturalist18_{split}.txt"
        files[split].write_text("".join(lines))
    return files
