"""The report: four-fold test accuracy of the base model and of the fused experts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .calibration import (calibration_from_state, expert_outputs_from_table, fuse,
                          oracle_predictions)
from .logits import check_aligned, read_logits
from .metrics import four_fold_accuracy
from .splits import read_class_table

METHODS = {
    "base": "plain cross-entropy model (the generalist)",
    "experts_naive": "experts fused with identity calibration",
    "experts_prior": "experts fused with only the reject-prior correction",
    "experts_calibrated": "experts fused with the joint calibration fit on val",
    "oracle": "each image routed to the expert owning its true class (upper bound)",
}


def build_report(classes_csv, base_logits, expert_logits: list, calibration) -> pd.DataFrame:
    """One row per method, columns ``method, many, medium, few, all`` (top-1 %)."""
    classes = read_class_table(classes_csv)
    class_split = classes["split"].to_numpy()
    tables = {"base": read_logits(base_logits)}
    for path in expert_logits:
        table = read_logits(path)
        tables[table.meta["model"]] = table
    check_aligned(tables)
    labels = torch.from_numpy(tables["base"].labels)
    num_classes = len(classes)

    state = torch.load(Path(calibration), map_location="cpu", weights_only=True)
    expert_names = state["experts"]
    missing = [n for n in expert_names if n not in tables]
    if missing:
        raise ValueError(f"calibration covers experts {expert_names}, but logits lack {missing}")
    experts = [expert_outputs_from_table(tables[n]) for n in expert_names]
    calibrated = calibration_from_state(state)

    with torch.no_grad():
        predictions = {
            "base": torch.from_numpy(tables["base"].logits).argmax(1),
            "experts_naive": fuse(experts, num_classes, prior_correction=False).argmax(1),
            "experts_prior": fuse(experts, num_classes, prior_correction=True).argmax(1),
            "experts_calibrated": calibrated(experts).argmax(1),
            "oracle": oracle_predictions(experts, labels),
        }
    rows = [
        {"method": method, **four_fold_accuracy(pred.numpy(), labels.numpy(), class_split)}
        for method, pred in predictions.items()
    ]
    return pd.DataFrame(rows, columns=["method", "many", "medium", "few", "all"])
