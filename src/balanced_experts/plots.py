"""Figures of a run, drawn with matplotlib (Agg backend, PNG files)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import SPLIT_NAMES  # noqa: E402
from .methods import PROPOSED  # noqa: E402
from .metrics import binned_calibration_error, reliability_bins  # noqa: E402
from .shift import DISTRIBUTIONS  # noqa: E402

SPLIT_COLORS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#55a868"}
# Colour and marker of the methods the curves show (a test holds the names to methods.METHODS).
METHOD_STYLES = {
    "base": ("#7f7f7f", "o"),
    "base_logit_adjusted": ("#bcbd22", "v"),
    "base_tau_norm": ("#17becf", "^"),
    "base_crt": ("#9467bd", "s"),
    "base_lws": ("#8c564b", "P"),
    "experts_naive": ("#ff9896", "x"),
    "experts_calibrated": ("#d62728", "D"),
    "balanced_softmax": ("#1f77b4", "h"),
    "ldam_drw": ("#e377c2", "*"),
    "ride": ("#2ca02c", "p"),
    "sade": ("#ff7f0e", "X"),
    "sade_test_time": ("#ffbb78", "<"),  # the shift plot's only (methods.TEST_TIME_METHODS)
}


def _split_boundaries(ax, classes: pd.DataFrame) -> None:
    """Dashed lines between splits, at the geometric mean of the neighbouring counts."""
    for lower, upper in (("few", "medium"), ("medium", "many")):
        lo = classes.loc[classes["split"] == lower, "train_count"]
        hi = classes.loc[classes["split"] == upper, "train_count"]
        if len(lo) and len(hi):
            ax.axvline(np.sqrt(max(lo.max(), 1) * max(hi.min(), 1)), color="black", ls="--", lw=0.8)


def _smooth(x: np.ndarray, y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(y) < window:
        return x, y
    kernel = np.ones(window) / window
    half = window // 2
    return x[half:len(x) - window + half + 1], np.convolve(y, kernel, mode="valid")


DOTS_MAX_CLASSES = 1000
"""Up to this many classes the per-class plot shows every class as a dot under a moving
average; above it (iNaturalist's 8,142), means over bins of classes."""
CLASS_BINS = 40
"""About how many bins of classes the per-class plot of many classes has."""


def class_bins(train_counts, bins: int = CLASS_BINS) -> list[np.ndarray]:
    """The classes in about ``bins`` groups of consecutive training counts, each of about
    equal size; classes of one count are never split (so a count that many classes share is
    one group of its own)."""
    counts = np.asarray(train_counts)
    order = np.argsort(counts, kind="stable")
    ordered = counts[order]
    size = max(1, -(-len(counts) // bins))
    groups, start = [], 0
    while start < len(counts):
        end = min(start + size, len(counts))
        end = int(np.searchsorted(ordered, ordered[end - 1], side="right"))
        groups.append(order[start:end])
        start = end
    return groups


def per_class_accuracy_plot(per_class: list[pd.DataFrame], path: str | Path) -> None:
    """Accuracy of each class against its training count (log x), per method, smoothed.

    ``per_class``: one table per seed. Up to :data:`DOTS_MAX_CLASSES` classes, dots are the
    classes' accuracies averaged over the seeds, lines the moving average; with more classes,
    points are the mean accuracy of bins of classes of neighbouring training counts
    (:func:`class_bins`), at the bins' geometric mean count, and no class is drawn alone.
    With several seeds a band spans one standard deviation of the seeds' lines either side.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    first = per_class[0]
    counts = first["train_count"].to_numpy(dtype=float)
    binned = len(first) > DOTS_MAX_CLASSES
    window = max(1, len(first) // 12)
    groups = class_bins(counts) if binned else []
    for method, (color, marker) in METHOD_STYLES.items():
        if method not in first:
            continue
        accs = np.stack([frame[method].to_numpy(dtype=float) for frame in per_class])
        if binned:
            xs = np.array([np.exp(np.log(np.maximum(counts[g], 1)).mean()) for g in groups])
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a bin of classes without test images
                ys = np.stack([[np.nanmean(acc[g]) for g in groups] for acc in accs])
            ax.plot(xs, ys.mean(0), color=color, lw=2 if method == PROPOSED else 1.3, label=method,
                    marker=marker, ms=3)
        else:
            ax.scatter(counts, accs.mean(0), s=8, color=color, alpha=0.25, marker=marker)
            curves = [_smooth(counts, acc, window) for acc in accs]
            xs, ys = curves[0][0], np.stack([c[1] for c in curves])
            ax.plot(xs, ys.mean(0), color=color, lw=2 if method == PROPOSED else 1.3, label=method)
        if len(per_class) > 1:
            spread = ys.std(0, ddof=1)
            ax.fill_between(xs, np.clip(ys.mean(0) - spread, 0, 100), np.clip(ys.mean(0) + spread, 0, 100),
                            color=color, alpha=0.15, lw=0)
    ax.set_xscale("log")
    _split_boundaries(ax, first)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test top-1 accuracy of the class (%)")
    ax.set_ylim(-2, 102)
    spread = f"; bands: ± 1 std over {len(per_class)} seeds" if len(per_class) > 1 else "; one seed"
    if binned:
        ax.set_title(f"Per-class accuracy of {len(first):,} classes\n(points: mean over {len(groups)} bins of "
                     f"~{len(first) // len(groups)} classes by training count{spread})", fontsize=10)
    else:
        ax.set_title(f"Per-class accuracy (lines: moving average over {window} classes{spread})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_plot(predictions: pd.DataFrame, methods: list[str], path: str | Path, bins: int = 15) -> None:
    """Accuracy against confidence per bin, one panel per method, with the gap shaded."""
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4.2), squeeze=False)
    labels = predictions["label"].to_numpy()
    centers = (np.arange(bins) + 0.5) / bins
    for ax, method in zip(axes[0], methods):
        conf = predictions[f"conf_{method}"].to_numpy()
        correct = predictions[f"pred_{method}"].to_numpy() == labels
        count, mean_conf, accuracy = reliability_bins(conf, correct, bins)
        used = count > 0
        ax.bar(centers[used], accuracy[used], width=1 / bins, edgecolor="black", color="#4c72b0",
               alpha=0.8, label="accuracy")
        ax.bar(centers[used], mean_conf[used] - accuracy[used], bottom=accuracy[used], width=1 / bins,
               color="#d62728", alpha=0.3, label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="black", ls="--", lw=0.8)
        ece = binned_calibration_error(count, mean_conf, accuracy)
        ax.set_title(f"{method}  (ECE {ece:.2f}%)")
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves_plot(metrics: dict[str, list[pd.DataFrame]], path: str | Path) -> None:
    """Training loss and validation accuracy per epoch: one colour per model, one line per seed."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, frames) in enumerate(metrics.items()):
        color = colors[index % len(colors)]
        for seed_index, frame in enumerate(frames):
            label = name if seed_index == 0 else None
            loss_ax.plot(frame["epoch"], frame["train_loss"], marker=".", color=color, label=label)
            acc_ax.plot(frame["epoch"], frame["val_acc"], marker=".", color=color, label=label)
    seeds = max(len(frames) for frames in metrics.values())
    loss_ax.set_title("training loss" + (f" ({seeds} seeds: one line each)" if seeds > 1 else ""))
    acc_ax.set_title("validation accuracy (%) (experts: their split + reject)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def long_tail_plot(classes: pd.DataFrame, path: str | Path) -> None:
    """Training images per class, classes sorted by count, coloured by split."""
    ordered = classes.sort_values("train_count", ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for split, color in SPLIT_COLORS.items():
        part = ordered[ordered["split"] == split]
        ax.bar(part.index, part["train_count"], width=1.0, color=color,
               label=f"{split} ({len(part)} classes, {int(part['train_count'].sum())} images)")
    ax.set_yscale("log")
    ax.set_xlabel("classes, sorted by training count")
    ax.set_ylabel("training images (log scale)")
    ax.set_title("Long-tail profile of the training set")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FOLDS = (*SPLIT_NAMES, "all")


def _spread(seeds: int, each: str = "") -> str:
    """What a figure's error bars show, for its title."""
    return f"mean ± std over {seeds} seeds{each}" if seeds > 1 else "one seed: no spread"


def _folds_figure(title: str):
    """One panel per fold, methods on a shared y axis, listed top down in report order."""
    fig, axes = plt.subplots(1, len(FOLDS), figsize=(3.4 * len(FOLDS), 4.2), sharey=True)
    fig.suptitle(title, fontsize=10)
    axes[0].invert_yaxis()  # once: the panels share the axis
    return fig, axes


def four_fold_plot(rows: pd.DataFrame, path: str | Path) -> None:
    """Test accuracy per method and fold: mean over seeds (bar), ± 1 std (error bar), and
    each seed's value (dots). ``rows``: every seed's report rows (a ``seed`` column)."""
    methods = list(dict.fromkeys(rows["method"]))
    seeds = rows["seed"].nunique()
    fig, axes = _folds_figure(f"Test top-1 accuracy (%) ({_spread(seeds, ', dots: seeds')})")
    positions = np.arange(len(methods))
    for ax, fold in zip(axes, FOLDS):
        grouped = rows.groupby("method", sort=False)[fold]
        mean, std = grouped.mean().reindex(methods), grouped.std(ddof=1).reindex(methods)
        colors = [METHOD_STYLES.get(m, ("#444444", "o"))[0] for m in methods]
        ax.barh(positions, mean, xerr=std.fillna(0) if seeds > 1 else None, color=colors, alpha=0.8,
                capsize=3)
        if seeds > 1:
            for i, method in enumerate(methods):
                values = rows.loc[rows["method"] == method, fold].to_numpy()
                ax.scatter(values, np.full(len(values), i), s=10, color="black", zorder=3)
        ax.set_title(fold)
        ax.set_xlim(0, 100)
        ax.set_yticks(positions, methods, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comparison_plot(table: pd.DataFrame, path: str | Path) -> None:
    """Settings side by side: per method and fold, one bar per setting (mean over seeds)
    with ± 1 std. ``table``: the comparison (a ``setting`` column, ``<fold>_std`` columns)."""
    settings = list(dict.fromkeys(table["setting"]))
    methods = list(dict.fromkeys(table["method"]))
    seeds = int(table["seeds"].min())
    fig, axes = _folds_figure(f"Test top-1 accuracy (%) of the main settings and each variant ({_spread(seeds)})")
    height = 0.8 / len(settings)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, fold in zip(axes, FOLDS):
        for index, setting in enumerate(settings):
            part = table[table["setting"] == setting].set_index("method").reindex(methods)
            ax.barh(np.arange(len(methods)) + (index - (len(settings) - 1) / 2) * height, part[fold],
                    height=height, xerr=part[f"{fold}_std"].fillna(0) if seeds > 1 else None,
                    color=colors[index % len(colors)], label=setting, capsize=2)
        ax.set_title(fold)
        ax.set_xlim(0, 100)
        ax.set_yticks(np.arange(len(methods)), methods, fontsize=8)
    # Below the panels, clear of the bars.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(settings), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def test_shift_plot(table: pd.DataFrame, path: str | Path) -> None:
    """Expected test accuracy under each test label distribution, forward-LT 50 (the
    training order, most skewed) through uniform to backward-LT 50, one line per method:
    left as predicted, right re-targeted to the known test prior. ``table``: the mean over
    seeds (``accuracy``, ``accuracy_adapted`` and their ``_std``), as written to test_shift.csv."""
    labels = [{"forward": "F", "backward": "B"}.get(kind, "") + (f"{rho:g}" if kind != "uniform" else "uniform")
              for kind, rho in DISTRIBUTIONS]
    x = np.arange(len(DISTRIBUTIONS))
    seeds = int(table["seeds"].min())
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    fig.suptitle(f"Expected test top-1 accuracy (%) under shifted test label distributions ({_spread(seeds)})",
                 fontsize=10)
    for ax, column, title in ((axes[0], "accuracy", "as predicted"),
                              (axes[1], "accuracy_adapted", "adapted to the test prior")):
        for method, (color, marker) in METHOD_STYLES.items():
            part = table[table["method"] == method]
            if part.empty:
                continue
            order = [part.index[(part["distribution"] == kind) & (part["imbalance"] == rho)][0]
                     for kind, rho in DISTRIBUTIONS]
            values, std = part.loc[order, column].to_numpy(), part.loc[order, f"{column}_std"].to_numpy()
            ax.errorbar(x, values, yerr=np.nan_to_num(std) if seeds > 1 else None, color=color, marker=marker,
                        ms=4, lw=2 if method == PROPOSED else 1.2, capsize=2, label=method)
        ax.axvline(labels.index("uniform"), color="black", ls="--", lw=0.8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlabel("test label distribution: forward-LT (F) ... uniform ... backward-LT (B), imbalance")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
