"""A validation list held out of a training list, a few images per class.

For a benchmark whose only labelled evaluation set is the one the report scores
(iNaturalist 2018: the field reports on its official val list), so that early stopping,
the calibration and every tau are chosen on images the report never scores
(docs/datasets.md, iNaturalist 2018)::

    python -m balanced_experts.holdout TRAIN_LIST --train-out FIT_LIST --val-out VAL_LIST

A class of n images gives min(per_class, n // 2) of them to the validation list, chosen by
a seeded generator; both lists keep the training list's order. The same list, per-class
count and seed give the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .lists import ImageList, ListFormatError, read_list, write_list


def held_out(image_list: ImageList, per_class: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The entries (indices, in list order) that stay in training and those held out for
    validation. Every class keeps at least half of its images and gives at least one; a
    class with a single image (nothing to hold out) is an error naming it."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    labels = image_list.labels
    counts = np.bincount(labels)
    single = np.flatnonzero(counts == 1)
    if single.size:
        shown = ", ".join(str(c) for c in single[:10]) + (f" (and {single.size - 10} more)" if single.size > 10 else "")
        raise ListFormatError(f"{image_list.source}: classes {shown} have a single training image: "
                              f"none can be held out for validation")
    take = np.minimum(per_class, counts // 2)
    rng = np.random.default_rng(seed)
    # Each class's entries in list order (a stable sort by label), a random pick of them.
    by_class = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    val = np.concatenate([rng.choice(by_class[s:s + n], size=k, replace=False)
                          for s, n, k in zip(starts, counts, take) if n])
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m balanced_experts.holdout", description=__doc__.split("\n\n")[0])
    parser.add_argument("train_list", type=Path, help="the official training list (relative/path label per line)")
    parser.add_argument("--train-out", type=Path, required=True, help="the training list without the held-out images")
    parser.add_argument("--val-out", type=Path, required=True, help="the held-out validation list")
    parser.add_argument("--per-class", type=int, default=3, help="images held out per class (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed (default 0)")
    args = parser.parse_args(argv)
    try:
        image_list = read_list(args.train_list)
        fit, val = held_out(image_list, args.per_class, args.seed)
    except (ListFormatError, OSError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    for path, rows in ((args.train_out, fit), (args.val_out, val)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_list(path, [image_list.paths[i] for i in rows], image_list.labels[rows])
    print(f"{args.train_list}: {len(image_list)} images of {image_list.num_classes} classes; "
          f"{len(fit)} stay in {args.train_out}, {len(val)} are held out in {args.val_out}")


if __name__ == "__main__":
    main()
