"""The per-class plot at iNaturalist size: bins of classes instead of one dot per class."""

import numpy as np
import pandas as pd

from balanced_experts.plots import CLASS_BINS, DOTS_MAX_CLASSES, class_bins, per_class_accuracy_plot


def test_class_bins_cover_every_class_once_and_never_split_a_count():
    rng = np.random.default_rng(0)
    counts = np.concatenate([np.full(3000, 2), rng.integers(3, 1000, 5142)])  # many classes of 2 images
    groups = class_bins(counts)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(counts)))
    assert len(groups) <= CLASS_BINS + 1
    for lower, upper in zip(groups, groups[1:]):
        assert counts[lower].max() < counts[upper].min()  # neighbouring counts, none in two bins
    assert len(groups[0]) == 3000  # the count 2 is one bin, however large
    assert [g.tolist() for g in class_bins([5, 1, 3], bins=10)] == [[1], [2], [0]]


def test_the_per_class_plot_draws_few_and_many_classes(tmp_path):
    rng = np.random.default_rng(1)
    for classes in (100, DOTS_MAX_CLASSES + 1, 8142):
        counts = np.maximum(np.round(1000 * (2 / 1000) ** np.linspace(0, 1, classes)), 2).astype(int)
        frame = pd.DataFrame({"class_id": np.arange(classes), "train_count": counts,
                              "split": np.where(counts > 100, "many", np.where(counts < 20, "few", "medium"))})
        seeds = []
        for _ in range(2):
            seed = frame.copy()
            for method in ("base", "experts_calibrated"):
                seed[method] = rng.choice([0.0, 100 / 3, 200 / 3, 100.0], classes)
            seed.loc[0, "base"] = np.nan  # a class without test images
            seeds.append(seed)
        for tables in (seeds[:1], seeds):
            path = tmp_path / f"{classes}_{len(tables)}.png"
            per_class_accuracy_plot(tables, path)
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
