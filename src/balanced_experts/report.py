"""The report: test accuracy (four-fold), ECE and NLL of the base model, its post-hoc and
re-trained baselines, and the fused experts; per-class accuracies and test predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import SPLIT_NAMES
from .baselines import choose_tau, logit_adjusted, softmax, tau_normalised
from .calibration import (calibration_from_state, expert_outputs_from_table, fuse,
                          oracle_predictions, read_calibration)
from .logits import check_aligned, read_logits
from .metrics import (expected_calibration_error, four_fold_accuracy, negative_log_likelihood,
                      per_class_accuracy)
from .models import load_checkpoint
from .splits import read_class_table

METHODS = {
    "base": "plain cross-entropy model (the generalist)",
    "base_logit_adjusted": "base logits minus tau * log(train prior), tau chosen on val (Menon et al. 2021)",
    "base_tau_norm": "base classifier weights divided by their norm^tau, tau chosen on val (Kang et al. 2020)",
    "base_crt": "classifier re-trained on frozen base features, class-balanced sampling (Kang et al. 2020)",
    "experts_naive": "experts fused with identity calibration",
    "experts_prior": "experts fused with only the reject-prior correction",
    "experts_calibrated": "experts fused with the joint calibration fit on val (the method)",
    "oracle": "each image routed to the expert owning its true class (an upper bound)",
}
REPORT_COLUMNS = ["method", "many", "medium", "few", "all", "ece", "nll"]
ECE_BINS = 15


@dataclass
class Report:
    summary: pd.DataFrame  # one row per method: REPORT_COLUMNS
    per_class: pd.DataFrame  # class_id, train_count, split, one accuracy column per method
    split_counts: pd.DataFrame  # split, classes, train_images, test_images
    predictions: pd.DataFrame  # sample_id, label, pred_<method>, conf_<method>
    info: dict  # the chosen taus and their validation accuracies


def build_report(classes_csv, base_val, base_test, base_weights, crt_test, expert_logits: list,
                 calibration) -> Report:
    classes = read_class_table(classes_csv)
    class_split = classes["split"].to_numpy()
    train_counts = classes["train_count"].to_numpy()
    num_classes = len(classes)

    test = {"base": read_logits(base_test), "crt": read_logits(crt_test)}
    for path in expert_logits:
        table = read_logits(path)
        test[table.meta["model"]] = table
    check_aligned(test)
    val_base = read_logits(base_val)
    labels = test["base"].labels

    # Post-hoc baselines on the base model, tau chosen on the validation logits.
    classifier = load_checkpoint(base_weights)["state_dict"]
    weight, bias = classifier["classifier.weight"].numpy(), classifier["classifier.bias"].numpy()
    la_tau, la_val = choose_tau(lambda z, t: logit_adjusted(z, train_counts, t), val_base.logits, val_base.labels)
    tn_tau, tn_val = choose_tau(lambda z, t: tau_normalised(z, weight, bias, t), val_base.logits, val_base.labels)

    # Fused experts.
    state = read_calibration(calibration)
    missing = [n for n in state["experts"] if n not in test]
    if missing:
        raise ValueError(f"calibration covers experts {state['experts']}, but the test logits lack {missing}")
    experts = [expert_outputs_from_table(test[n]) for n in state["experts"]]
    calibrated = calibration_from_state(state)
    with torch.no_grad():
        fused = {
            "experts_naive": fuse(experts, num_classes, prior_correction=False),
            "experts_prior": fuse(experts, num_classes, prior_correction=True),
            "experts_calibrated": calibrated(experts),
        }
        oracle = oracle_predictions(experts, torch.from_numpy(labels)).numpy()

    probabilities = {
        "base": softmax(test["base"].logits),
        "base_logit_adjusted": softmax(logit_adjusted(test["base"].logits, train_counts, la_tau)),
        "base_tau_norm": softmax(tau_normalised(test["base"].logits, weight, bias, tn_tau)),
        "base_crt": softmax(test["crt"].logits),
        **{name: log_p.exp().double().numpy() for name, log_p in fused.items()},
    }

    rows, per_class, predictions = [], {}, {"sample_id": test["base"].sample_ids, "label": labels}
    for method in METHODS:
        if method == "oracle":
            pred, probs = oracle, None
        else:
            probs = probabilities[method]
            pred = probs.argmax(1)
        row = {"method": method, **four_fold_accuracy(pred, labels, class_split)}
        row["ece"] = expected_calibration_error(probs, labels, ECE_BINS) if probs is not None else np.nan
        row["nll"] = negative_log_likelihood(probs, labels) if probs is not None else np.nan
        rows.append(row)
        per_class[method] = per_class_accuracy(pred, labels, num_classes)
        predictions[f"pred_{method}"] = pred.astype(np.int64)
        predictions[f"conf_{method}"] = probs.max(1) if probs is not None else np.full(len(labels), np.nan)

    test_counts = np.bincount(labels, minlength=num_classes)
    split_counts = pd.DataFrame(
        [{"split": name, "classes": int((class_split == name).sum()),
          "train_images": int(train_counts[class_split == name].sum()),
          "test_images": int(test_counts[class_split == name].sum())} for name in SPLIT_NAMES]
    )
    return Report(
        summary=pd.DataFrame(rows, columns=REPORT_COLUMNS),
        per_class=pd.concat([classes[["class_id", "train_count", "split"]],
                             pd.DataFrame(per_class)], axis=1),
        split_counts=split_counts,
        predictions=pd.DataFrame(predictions),
        info={"logit_adjustment_tau": la_tau, "logit_adjustment_val_acc": la_val,
              "tau_norm_tau": tn_tau, "tau_norm_val_acc": tn_val, "ece_bins": ECE_BINS,
              "methods": METHODS},
    )
