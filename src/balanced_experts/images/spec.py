"""How images become network inputs: the ``input`` section of a dataset's config."""

from __future__ import annotations

from dataclasses import dataclass

from .augment import AUGMENTATIONS, Recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How images become network inputs; the ``input`` section of a dataset's config."""

    size: int = 224
    resize: int | None = None  # eval: Resize(resize) + CenterCrop(size); default size * 8/7
    augment: str = "imagenet"  # a name of AUGMENTATIONS
    preload: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    workers: int = 0  # DataLoader workers; from_config fills in the job's threads when unset
    pad: int = 4  # crop_flip padding

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"input.augment: {self.augment!r} is none of {', '.join(AUGMENTATIONS)}")

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

    @property
    def recipe(self) -> Recipe:
        """The augmentation recipe ``augment`` names."""
        return AUGMENTATIONS[self.augment]

    @property
    def eval_resize(self) -> int:
        """The short side that evaluation resizes an image to before its centre crop."""
        return self.resize or round(self.size * 8 / 7)
