"""Training and validation sets of a class-balanced expert (METHOD.md section 3).

An expert over the ``k`` classes of one split is a ``(k+1)``-way classifier: output ``j < k``
is the ``j``-th class of the split (ascending global id), output ``k`` is "reject".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REJECT = -1
"""The class id written for the reject output in ``output_class_ids``."""

REJECT_SAMPLINGS = ("images", "classes")
"""How an expert's reject images are drawn (``reject_sampling``; the schema's enum, a test
holds them equal): see :func:`sample_reject`."""

REJECT_COUNTS = ("round", "floor")
"""How ``N_split / open_ratio`` becomes a number of reject images (``reject_count``; the
schema's enum): rounded to the nearest, or floored as the original code's ``//``."""


@dataclass(frozen=True)
class ExpertSettings:
    """What an ``experts.<split>`` config section adds to its training settings
    (:class:`balanced_experts.training.TrainSettings`); the schema requires the first two."""

    open_ratio: float  # in-split training images per reject image
    num_learnable: int  # -1 all, 1 the classifier, 2 + fc, k >= 3 + the last k - 2 backbone stages
    reject_sampling: str = "images"  # one of REJECT_SAMPLINGS: see sample_reject
    reject_count: str = "round"  # one of REJECT_COUNTS

    @classmethod
    def from_config(cls, cfg: dict) -> "ExpertSettings":
        return cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ExpertSet:
    """Entries of a list file chosen for an expert, with the targets it is trained on."""

    indices: np.ndarray  # positions in the list file
    targets: np.ndarray  # 0..k-1 for split classes, k for reject

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_reject(self) -> int:
        return int((self.targets == self.targets.max()).sum()) if len(self.targets) else 0


def output_class_ids(split_classes) -> list[int]:
    """Global class id of each expert output; the reject output is ``REJECT``."""
    return [int(c) for c in np.sort(np.asarray(split_classes))] + [REJECT]


def _remap(labels: np.ndarray, split_classes: np.ndarray) -> np.ndarray:
    lookup = {int(c): j for j, c in enumerate(np.sort(split_classes))}
    return np.array([lookup[int(y)] for y in labels], dtype=np.int64)


def sample_reject(
    labels: np.ndarray,
    pool: np.ndarray,
    count: int,
    rng: np.random.Generator,
    sampling: str = "images",
) -> np.ndarray:
    """Choose ``count`` entries of ``pool`` (positions whose class is outside the split).

    ``images``: uniformly over images, so the reject sample follows the training
    distribution of the other classes (as the original code did).
    ``classes``: as evenly over the other classes as their images allow.
    """
    count = min(count, len(pool))
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    if sampling == "images":
        return np.sort(rng.choice(pool, size=count, replace=False))
    if sampling != "classes":
        raise ValueError(f"reject sampling must be one of {', '.join(REJECT_SAMPLINGS)}, got {sampling!r}")
    # Round-robin over a shuffled copy of each class's images.
    by_class = {}
    for position in rng.permutation(pool):
        by_class.setdefault(int(labels[position]), []).append(int(position))
    queues = [by_class[c] for c in rng.permutation(sorted(by_class))]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count:
        for queue in queues:
            if depth < len(queue):
                chosen.append(queue[depth])
                if len(chosen) == count:
                    break
        depth += 1
    return np.sort(np.asarray(chosen, dtype=np.int64))


def expert_training_set(
    labels,
    split_classes,
    open_ratio: float,
    seed: int,
    sampling: str = "images",
    count: str = "round",
) -> ExpertSet:
    """All images of the split's classes plus ``round(N_split / open_ratio)`` reject images
    (``count="floor"``: ``N_split // open_ratio``, as the original code)."""
    labels = np.asarray(labels, dtype=np.int64)
    split_classes = np.sort(np.asarray(split_classes, dtype=np.int64))
    if open_ratio < 1:
        raise ValueError(f"open_ratio must be >= 1, got {open_ratio}")
    inside = np.isin(labels, split_classes)
    members = np.flatnonzero(inside)
    if count not in REJECT_COUNTS:
        raise ValueError(f"reject_count must be one of {', '.join(REJECT_COUNTS)}, got {count!r}")
    reject_count = int(round(len(members) / open_ratio) if count == "round" else len(members) // open_ratio)
    rng = np.random.default_rng(seed)
    reject = sample_reject(labels, np.flatnonzero(~inside), reject_count, rng, sampling)
    return _assemble(labels, split_classes, members, reject)


def small_reject_sample(labels, split_classes, train_set: ExpertSet, open_ratio: float) -> str | None:
    """Why an expert's reject sample is too small to teach it, or None.

    The rule: fewer reject images than the split's smallest class has training images,
    so that the reject output is the expert's rarest one. It holds for no expert of
    Places-LT (its few-shot expert draws 100 reject images for classes of 5 to 19) or of
    the synthetic preset, and catches the ImageNet-LT recipe on a small dataset: at open
    ratio 16, 25 images of two few-shot classes give 2 reject images. The advice is the
    largest open ratio that keeps the sample at that size, N_split / smallest count, unless
    the other classes have fewer images than that.
    """
    labels = np.asarray(labels, dtype=np.int64)
    split_classes = np.asarray(split_classes, dtype=np.int64)
    smallest = int(np.bincount(labels, minlength=int(split_classes.max()) + 1)[split_classes].min())
    reject = int((train_set.targets == len(split_classes)).sum())
    if reject >= smallest:
        return None
    members = len(train_set) - reject
    pool = len(labels) - members  # the other classes' images, the most a sample can draw
    largest = max(1.0, np.floor(10 * members / smallest) / 10)
    advice = (f"an open_ratio of at most {largest:g} draws {smallest} or more" if pool >= smallest
              else f"the other classes have only {pool} training images")
    images = "image" if reject == 1 else "images"
    return (f"{reject} reject {images} (open_ratio {open_ratio:g}), fewer than the {smallest} of the "
            f"split's smallest class: too few to teach the reject output; {advice}")


def expert_validation_set(labels, split_classes, seed: int) -> ExpertSet:
    """The split's validation images plus as many other-class images scored as reject (1:1)."""
    labels = np.asarray(labels, dtype=np.int64)
    split_classes = np.sort(np.asarray(split_classes, dtype=np.int64))
    inside = np.isin(labels, split_classes)
    members = np.flatnonzero(inside)
    rng = np.random.default_rng(seed)
    # The validation set is balanced, so sampling by images is also balanced over classes.
    reject = sample_reject(labels, np.flatnonzero(~inside), len(members), rng, "images")
    return _assemble(labels, split_classes, members, reject)


def _assemble(labels, split_classes, members, reject) -> ExpertSet:
    k = len(split_classes)
    indices = np.concatenate([members, reject]).astype(np.int64)
    targets = np.concatenate([_remap(labels[members], split_classes), np.full(len(reject), k)])
    order = np.argsort(indices, kind="stable")
    return ExpertSet(indices[order], targets[order].astype(np.int64))
