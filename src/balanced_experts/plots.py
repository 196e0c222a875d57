"""Figures of a run, drawn with matplotlib (Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics import binned_calibration_error, reliability_bins  # noqa: E402

SPLIT_COLORS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#55a868"}
METHOD_STYLES = {
    "base": ("#7f7f7f", "o"),
    "base_logit_adjusted": ("#bcbd22", "v"),
    "base_tau_norm": ("#17becf", "^"),
    "base_crt": ("#9467bd", "s"),
    "base_lws": ("#8c564b", "P"),
    "experts_naive": ("#ff9896", "x"),
    "experts_calibrated": ("#d62728", "D"),
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


def per_class_accuracy_plot(per_class: pd.DataFrame, path: str | Path) -> None:
    """Accuracy of each class against its training count (log x), per method, smoothed."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    counts = per_class["train_count"].to_numpy(dtype=float)
    window = max(1, len(per_class) // 12)
    for method, (color, marker) in METHOD_STYLES.items():
        if method not in per_class:
            continue
        acc = per_class[method].to_numpy(dtype=float)
        ax.scatter(counts, acc, s=8, color=color, alpha=0.25, marker=marker)
        xs, ys = _smooth(counts, acc, window)
        ax.plot(xs, ys, color=color, lw=2 if method == "experts_calibrated" else 1.3, label=method)
    ax.set_xscale("log")
    _split_boundaries(ax, per_class)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test top-1 accuracy of the class (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Per-class accuracy (lines: moving average over {window} classes)")
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


def training_curves_plot(metrics: dict[str, pd.DataFrame], path: str | Path) -> None:
    """Training loss and validation accuracy per epoch, one line per model."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, frame in metrics.items():
        loss_ax.plot(frame["epoch"], frame["train_loss"], marker=".", label=name)
        acc_ax.plot(frame["epoch"], frame["val_acc"], marker=".", label=name)
    loss_ax.set_title("training loss")
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
