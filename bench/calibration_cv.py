"""The joint calibration's optimisers compared on held-out validation images (never the test set).

    python bench/calibration_cv.py results/synthetic            # every seed<k>/ of a finished run
    python bench/calibration_cv.py results/places --folds 5 --seed 0

The calibration is fit on the validation logits, so its accuracy there is in-sample: it says
how well an optimiser fits, not how well the fit carries to new images. This bench splits each
replicate's validation images into ``--folds`` class-stratified folds, fits each optimiser
(``calibration.optimizer``: lbfgs, sgd) on all folds but one with the run's own calibration
settings (its ``resolved_config.yaml``), and scores the fused experts on the fold left out:
top-1 accuracy and NLL, pooled over the folds. It prints one markdown table: per replicate
and optimiser, then the mean and standard deviation over the replicates, and for each seed
which optimiser is ahead. This is the validation evidence that chooses the default optimiser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "src"))
from balanced_experts.calibration import (OPTIMIZERS, expert_outputs_from_table, fit_calibration,  # noqa: E402
                                          select_rows)
from balanced_experts.experiments import EXPERTS  # noqa: E402
from balanced_experts.logits import check_aligned, read_logits  # noqa: E402


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of every row: each class's rows dealt round-robin over the folds after a shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = np.arange(len(rows)) % folds
    return fold


def held_out_scores(replicate: Path, calibration: dict, folds: int, seed: int) -> dict[str, tuple[float, float]]:
    """optimizer -> (held-out top-1 %, held-out NLL) of one replicate's validation logits."""
    tables = {e: read_logits(replicate / f"logits/{e}/val.parquet") for e in EXPERTS}
    check_aligned(tables)
    experts = [expert_outputs_from_table(tables[e]) for e in EXPERTS]
    labels = torch.from_numpy(tables[EXPERTS[0]].labels)
    num_classes = tables[EXPERTS[0]].num_classes
    fold = torch.from_numpy(stratified_folds(labels.numpy(), folds, seed))
    scores = {}
    for optimizer in OPTIMIZERS:
        correct, nll = 0, 0.0
        for k in range(folds):
            fit_rows, held = (fold != k).nonzero().squeeze(1), (fold == k).nonzero().squeeze(1)
            settings = {**calibration, "optimizer": optimizer}
            model, _ = fit_calibration(select_rows(experts, fit_rows), labels[fit_rows], num_classes,
                                       log=lambda _: None, **settings)
            with torch.no_grad():
                log_probs = model(select_rows(experts, held))
            correct += (log_probs.argmax(1) == labels[held]).sum().item()
            nll -= log_probs[torch.arange(len(held)), labels[held]].sum().item()
        scores[optimizer] = (100.0 * correct / len(labels), nll / len(labels))
    return scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path,
                        help="a setting's results folder (holds seed<k>/ and resolved_config.yaml)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="of the fold assignment")
    args = parser.parse_args(argv)

    calibration = yaml.safe_load((args.results / "resolved_config.yaml").read_text())["calibration"]
    replicates = sorted(args.results.glob("seed*/logits"), key=lambda p: int(p.parent.name[4:]))
    if not replicates:
        sys.exit(f"{args.results}: no seed<k>/logits folders (run the pipeline first)")
    per_seed = {}
    for logits in replicates:
        per_seed[logits.parent.name] = held_out_scores(logits.parent, calibration, args.folds, args.seed)
        print(f"{logits.parent.name}: " + ", ".join(f"{o} {a:.2f}% / NLL {n:.4f}"
                                                    for o, (a, n) in per_seed[logits.parent.name].items()),
              file=sys.stderr)

    print(f"Held-out validation ({args.folds}-fold, class-stratified) of {args.results}\n")
    print("| replicate | " + " | ".join(f"{o} top-1 % | {o} NLL" for o in OPTIMIZERS) + " | ahead (top-1) |")
    print("|---|" + "---:|---:|" * len(OPTIMIZERS) + "---|")
    for name, scores in per_seed.items():
        best = max(OPTIMIZERS, key=lambda o: scores[o][0])
        tied = len({scores[o][0] for o in OPTIMIZERS}) == 1
        print(f"| {name} | " + " | ".join(f"{scores[o][0]:.2f} | {scores[o][1]:.4f}" for o in OPTIMIZERS)
              + f" | {'tie' if tied else best} |")
    if len(per_seed) > 1:
        cells = []
        for o in OPTIMIZERS:
            acc = np.array([s[o][0] for s in per_seed.values()])
            nll = np.array([s[o][1] for s in per_seed.values()])
            cells.append(f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f} | {nll.mean():.4f} ± {nll.std(ddof=1):.4f}")
        print(f"| mean ± std ({len(per_seed)}) | " + " | ".join(cells) + " | |")


if __name__ == "__main__":
    main()
