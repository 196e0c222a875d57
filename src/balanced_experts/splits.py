"""Many / medium / few-shot class splits from training counts (METHOD.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import SPLIT_NAMES


@dataclass(frozen=True)
class SplitRule:
    """many: count > many_threshold (>= if many_inclusive);
    few: count < few_threshold (<= if few_inclusive); medium: the rest.

    The defaults are the field's standard rule (OLTR, Decoupling): many > 100, few < 20.
    The original experts code used many >= 100 (``many_inclusive=True``).
    """

    many_threshold: int = 100
    few_threshold: int = 20
    many_inclusive: bool = False
    few_inclusive: bool = False

    def __post_init__(self):
        if self.few_threshold > self.many_threshold:
            raise ValueError(
                f"few_threshold ({self.few_threshold}) must not exceed "
                f"many_threshold ({self.many_threshold})"
            )

    @classmethod
    def from_config(cls, cfg: dict | None) -> "SplitRule":
        return cls(**(cfg or {}))

    def describe(self) -> str:
        many = ">=" if self.many_inclusive else ">"
        few = "<=" if self.few_inclusive else "<"
        return f"many {many} {self.many_threshold}, few {few} {self.few_threshold}"

    def assign(self, counts) -> np.ndarray:
        """Split name of each class, given its training count."""
        counts = np.asarray(counts)
        many = counts >= self.many_threshold if self.many_inclusive else counts > self.many_threshold
        few = counts <= self.few_threshold if self.few_inclusive else counts < self.few_threshold
        out = np.full(counts.shape, "medium", dtype=object)
        out[many] = "many"
        out[few & ~many] = "few"
        return out


def class_table(train_labels, num_classes: int, rule: SplitRule) -> pd.DataFrame:
    """One row per class: ``class_id, train_count, split``."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    return pd.DataFrame(
        {
            "class_id": np.arange(num_classes, dtype=np.int64),
            "train_count": counts.astype(np.int64),
            "split": rule.assign(counts),
        }
    )


def read_class_table(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    expected = {"class_id", "train_count", "split"}
    if not expected.issubset(table.columns):
        raise ValueError(f"{path}: expected columns {sorted(expected)}, got {list(table.columns)}")
    return table.sort_values("class_id").reset_index(drop=True)


def split_class_ids(table: pd.DataFrame, split: str) -> np.ndarray:
    """Global class ids of one split, ascending."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
    return table.loc[table["split"] == split, "class_id"].to_numpy(dtype=np.int64)


def split_summary(table: pd.DataFrame) -> dict[str, int]:
    return {name: int((table["split"] == name).sum()) for name in SPLIT_NAMES}


class EmptySplitError(ValueError):
    """A class split with no classes: its expert cannot be trained."""


def check_splits_not_empty(table: pd.DataFrame, rule: SplitRule) -> None:
    """Every split needs a class: an expert over no classes has nothing to learn."""
    empty = [name for name, count in split_summary(table).items() if count == 0]
    if empty:
        counts = table["train_count"]
        raise EmptySplitError(
            f"class_splits leave the {' and '.join(empty)}-shot split{'s' if len(empty) > 1 else ''} "
            f"empty: training counts range from {counts.min()} to {counts.max()}, and the rule is "
            f"{rule.describe()}; change many_threshold / few_threshold so that every split has a class"
        )
