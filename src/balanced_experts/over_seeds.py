"""The report's columns, and the reports of several seeds and settings put together:
the rows of every seed, their means and standard deviations, the settings side by side.

pandas only, no torch: the jobs that aggregate reports start in a fraction of the time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import SPLIT_NAMES
from .shift import SHIFT_COLUMNS

REPORT_COLUMNS = ["method", "many", "medium", "few", "all", "ece", "nll"]
METRIC_COLUMNS = REPORT_COLUMNS[1:]
ECE_BINS = 15


def split_counts(classes: pd.DataFrame, test_labels: np.ndarray) -> pd.DataFrame:
    """Classes, training images and test images of each class split."""
    class_split = classes["split"].to_numpy()
    train_counts = classes["train_count"].to_numpy()
    test_counts = np.bincount(test_labels, minlength=len(classes))
    return pd.DataFrame(
        [{"split": name, "classes": int((class_split == name).sum()),
          "train_images": int(train_counts[class_split == name].sum()),
          "test_images": int(test_counts[class_split == name].sum())} for name in SPLIT_NAMES]
    )


# -- several seeds, several settings ---------------------------------------------------------

def seed_rows(reports: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Every replicate's report rows (``seed -> report``), with a leading ``seed`` column."""
    return pd.concat([report.assign(seed=seed)[["seed", *REPORT_COLUMNS]] for seed, report in reports.items()],
                     ignore_index=True)


def mean_over_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method (in report order): the mean of every column over the seeds (the report's
    columns, in their order), then each one's sample standard deviation (``<column>_std``,
    ddof 1: empty for a single seed, which has no spread to estimate), then ``seeds``, the
    number of seeds."""
    methods = [frame["method"].tolist() for _, frame in rows.groupby("seed", sort=False)]
    if any(m != methods[0] for m in methods):
        raise ValueError(f"the seeds' reports list different methods: {methods}")
    return _mean_and_std(rows, ["method"], METRIC_COLUMNS)


def mean_shift_over_seeds(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """The seeds' test-shift tables (``seed -> table``, as written) averaged per method and
    test distribution: ``accuracy`` and ``accuracy_adapted``, their sample standard
    deviations (``_std``, empty for one seed) and ``seeds``."""
    rows = pd.concat([t.assign(seed=k) for k, t in tables.items()])
    return _mean_and_std(rows, SHIFT_COLUMNS[:3], SHIFT_COLUMNS[3:])


def _mean_and_std(rows: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    """Per ``keys`` (in first-seen order): the mean of ``values`` over the rows' seeds, their
    sample standard deviations (``<value>_std``) and ``seeds``, the number of seeds."""
    grouped = rows.groupby(keys, sort=False)
    return pd.concat([grouped[values].mean(), grouped[values].std(ddof=1).add_suffix("_std"),
                      grouped["seed"].nunique().rename("seeds")], axis=1).reset_index()


def mean_per_class(per_class: list[pd.DataFrame]) -> pd.DataFrame:
    """Every class's accuracy under every method, averaged over the seeds' per-class tables."""
    keys = ["class_id", "train_count", "split"]
    stacked = pd.concat(per_class, ignore_index=True)
    methods = [c for c in per_class[0].columns if c not in keys]
    return stacked.groupby(keys, sort=False)[methods].mean().reset_index()


def comparison(reports: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Settings side by side (``name -> report over seeds``), with a leading ``setting`` column."""
    return pd.concat([report.assign(setting=name)[["setting", *report.columns]] for name, report in reports.items()],
                     ignore_index=True)
