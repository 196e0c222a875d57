"""The embedded ``synthetic`` dataset: seeded procedural images with a long-tailed profile.

Every class is a random visual *prototype*: an oriented colour grating in the background
and two coloured shapes (ellipse, rectangle or triangle) in the foreground. Each image
redraws the prototype with within-class variation: shift, rotation, scale, grating
phase and frequency, colour jitter and pixel noise. Classes therefore differ by real
visual structure that a network has to learn, and the amount of variation
(``difficulty``) decides how much they overlap, which is what makes a plain classifier
trained on the long tail prefer head classes.

Training counts follow the CIFAR-100-LT profile ``n_i = max_count * imbalance**(-i/(C-1))``;
validation and test sets are balanced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .files import replacing_folder
from .lists import write_list


@dataclass(frozen=True)
class SyntheticSpec:
    num_classes: int = 100
    max_count: int = 500
    imbalance: float = 100.0
    val_per_class: int = 20
    test_per_class: int = 50
    image_size: int = 32
    difficulty: float = 1.0
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict | None) -> "SyntheticSpec":
        return cls(**(cfg or {}))


def long_tail_counts(num_classes: int, max_count: int, imbalance: float) -> np.ndarray:
    """Exponential profile from ``max_count`` down to ``max_count / imbalance``."""
    if num_classes == 1:
        return np.array([max_count])
    exponents = np.arange(num_classes) / (num_classes - 1)
    counts = np.floor(max_count * imbalance ** (-exponents)).astype(np.int64)
    return np.maximum(counts, 1)


_SHAPES = ("ellipse", "rectangle", "triangle")


def _class_prototypes(rng: np.random.Generator, num_classes: int) -> list[dict]:
    prototypes = []
    for _ in range(num_classes):
        shapes = []
        for _ in range(2):
            shapes.append(
                {
                    "kind": _SHAPES[rng.integers(len(_SHAPES))],
                    "center": rng.uniform(0.25, 0.75, size=2),
                    "size": rng.uniform(0.12, 0.28, size=2),
                    "angle": rng.uniform(0, np.pi),
                    "color": rng.uniform(0, 1, size=3),
                }
            )
        prototypes.append(
            {
                "bg_colors": rng.uniform(0, 1, size=(2, 3)),
                "frequency": rng.uniform(1.0, 4.0),
                "orientation": rng.uniform(0, np.pi),
                "shapes": shapes,
            }
        )
    return prototypes


def _render(prototype: dict, n: int, size: int, difficulty: float, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` images of one class, vectorised over the images. Returns n x H x W x 3 uint8."""
    d = difficulty
    grid = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(grid, grid, indexing="ij")  # v: rows (y), u: columns (x)
    u = u[None]
    v = v[None]
    shift = rng.normal(0, 0.06 * d, size=(n, 2))
    uu = u - shift[:, 0, None, None]
    vv = v - shift[:, 1, None, None]

    # Background grating between two class colours.
    theta = prototype["orientation"] + rng.normal(0, 0.25 * d, size=n)
    freq = prototype["frequency"] * np.exp(rng.normal(0, 0.15 * d, size=n))
    phase = rng.uniform(0, 2 * np.pi, size=n)
    proj = uu * np.cos(theta)[:, None, None] + vv * np.sin(theta)[:, None, None]
    mix = 0.5 + 0.5 * np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
    c0, c1 = prototype["bg_colors"]
    jitter = rng.normal(0, 0.08 * d, size=(n, 2, 3))
    c0 = np.clip(c0 + jitter[:, 0], 0, 1)
    c1 = np.clip(c1 + jitter[:, 1], 0, 1)
    image = c0[:, None, None, :] * (1 - mix[..., None]) + c1[:, None, None, :] * mix[..., None]

    rotation = rng.normal(0, 0.3 * d, size=n)
    for shape in prototype["shapes"]:
        center = shape["center"][None] + rng.normal(0, 0.04 * d, size=(n, 2))
        scale = shape["size"][None] * np.exp(rng.normal(0, 0.15 * d, size=(n, 1)))
        angle = shape["angle"] + rotation
        dx = uu - center[:, 0, None, None]
        dy = vv - center[:, 1, None, None]
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        x = (dx * cos + dy * sin) / scale[:, 0, None, None]
        y = (-dx * sin + dy * cos) / scale[:, 1, None, None]
        if shape["kind"] == "ellipse":
            dist = np.sqrt(x**2 + y**2)
        elif shape["kind"] == "rectangle":
            dist = np.maximum(np.abs(x), np.abs(y))
        else:  # triangle pointing up in its own frame
            dist = np.maximum(np.abs(x) * 1.2 + y * 0.6, -y)
        # Soft edge of about one pixel so that shapes are not a pixel code.
        edge = 1.5 / (size * scale.mean(axis=1))[:, None, None]
        alpha = np.clip((1 - dist) / edge + 0.5, 0, 1)[..., None]
        color = np.clip(shape["color"][None] + rng.normal(0, 0.08 * d, size=(n, 3)), 0, 1)
        image = image * (1 - alpha) + color[:, None, None, :] * alpha

    image = image * np.exp(rng.normal(0, 0.1 * d, size=(n, 1, 1, 1)))  # brightness
    image = image + rng.normal(0, 0.04 * d, size=image.shape)  # sensor noise
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate(spec: SyntheticSpec, root: str | Path, log=print) -> dict[str, int]:
    """Write PNG images under ``root/images/<split>/<class>/`` and ``root/<split>.txt`` lists.

    Returns the number of images written per split. Deterministic for a given spec. The
    images are written into a temporary folder that replaces ``root/images`` whole once
    every image is written, and the lists after that: a failed run leaves no partial
    folder of images, and a list never names a missing image.
    """
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    prototypes = _class_prototypes(rng, spec.num_classes)
    train_counts = long_tail_counts(spec.num_classes, spec.max_count, spec.imbalance)
    per_split = {
        "train": train_counts,
        "val": np.full(spec.num_classes, spec.val_per_class),
        "test": np.full(spec.num_classes, spec.test_per_class),
    }
    lists: dict[str, tuple[list[str], list[int]]] = {}
    with replacing_folder(root / "images") as staged:
        for split, counts in per_split.items():
            paths: list[str] = []
            labels: list[int] = []
            for class_id, (prototype, n) in enumerate(zip(prototypes, counts)):
                # One child generator per (split, class) keeps images independent of
                # how many images other classes or splits have.
                child = np.random.default_rng([spec.seed, {"train": 0, "val": 1, "test": 2}[split], class_id])
                images = _render(prototype, int(n), spec.image_size, spec.difficulty, child)
                rel = f"{split}/{class_id:03d}"
                (staged / rel).mkdir(parents=True, exist_ok=True)
                for index, pixels in enumerate(images):
                    Image.fromarray(pixels).save(staged / rel / f"{index:05d}.png", compress_level=1)
                    paths.append(f"images/{rel}/{index:05d}.png")
                    labels.append(class_id)
            lists[split] = (paths, labels)
            log(f"synthetic: wrote {len(paths)} {split} images")
    for split, (paths, labels) in lists.items():
        write_list(root / f"{split}.txt", paths, labels)
    return {split: len(paths) for split, (paths, _) in lists.items()}
