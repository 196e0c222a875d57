"""The report: test accuracy (four-fold), ECE and NLL of the base model, its post-hoc and
re-trained baselines, the fused experts and the peers; per-class accuracies and test predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import DECOUPLED_METHODS, SPLIT_NAMES
from .baselines import choose_tau, logit_adjusted, softmax, tau_normalised
from .calibration import (calibration_from_state, expert_outputs_from_table, fuse,
                          oracle_predictions, read_calibration)
from .logits import check_aligned, read_logits
from .methods import METHODS, PEER_METHODS, TEST_TIME_METHODS
from .metrics import (expected_calibration_error, four_fold_accuracy, negative_log_likelihood,
                      per_class_accuracy)
from .models import load_checkpoint
from .shift import SHIFT_COLUMNS, assumed_prior, shift_table
from .splits import read_class_table

REPORT_COLUMNS = ["method", "many", "medium", "few", "all", "ece", "nll"]
METRIC_COLUMNS = REPORT_COLUMNS[1:]
ECE_BINS = 15


@dataclass
class Report:
    summary: pd.DataFrame  # one row per method: REPORT_COLUMNS
    per_class: pd.DataFrame  # class_id, train_count, split, one accuracy column per method
    predictions: pd.DataFrame  # sample_id, label, pred_<method>, conf_<method>
    test_shift: pd.DataFrame  # shift.SHIFT_COLUMNS: accuracy under shifted test label distributions
    info: dict  # the chosen taus and their validation accuracies


def build_report(classes_csv, base_val, base_test, base_weights, decoupled_logits: list, expert_logits: list,
                 calibration, peer_logits: list = (), test_time: dict | None = None) -> Report:
    """``decoupled_logits``: test logits of the decoupled classifiers (rows ``base_<model>``);
    ``expert_logits``: test logits of the experts; ``peer_logits``: test logits of the peers
    the setting runs (a row each, of the peer's name); ``test_time``: method -> its table of
    accuracies on each shifted test set (:data:`.methods.TEST_TIME_METHODS`: SADE's
    aggregation, ``sade.agnostic_shift_table``), rows of the test-shift table only."""
    classes = read_class_table(classes_csv)
    class_split = classes["split"].to_numpy()
    train_counts = classes["train_count"].to_numpy()
    num_classes = len(classes)

    test = {"base": read_logits(base_test)}
    for path in [*decoupled_logits, *expert_logits, *peer_logits]:
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
        **{f"base_{name}": softmax(test[name].logits) for name in DECOUPLED_METHODS},
        **{name: log_p.exp().double().numpy() for name, log_p in fused.items()},
        **{name: softmax(test[name].logits) for name in PEER_METHODS if name in test},
    }
    methods = [m for m in METHODS if m in probabilities or m == "oracle"]  # the peers it runs

    rows, per_class, predictions = [], {}, {"sample_id": test["base"].sample_ids, "label": labels}
    for method in methods:
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

    # Accuracy under forward / backward long-tailed test distributions, plain and re-targeted
    # to the known test prior from the prior each method's probabilities carry (a peer's:
    # its weights', which its logits carry).
    priors = {m: np.asarray(test[m].meta["prior"]) if m in PEER_METHODS
              else assumed_prior(m, train_counts, class_split, la_tau) for m in probabilities}
    test_shift = shift_table(probabilities, priors, labels, train_counts)
    test_shift = pd.concat([test_shift, *(test_time_rows(name, path) for name, path in (test_time or {}).items())],
                           ignore_index=True)

    return Report(
        summary=pd.DataFrame(rows, columns=REPORT_COLUMNS),
        per_class=pd.concat([classes[["class_id", "train_count", "split"]],
                             pd.DataFrame(per_class)], axis=1),
        predictions=pd.DataFrame(predictions),
        test_shift=test_shift,
        info={"logit_adjustment_tau": la_tau, "logit_adjustment_val_acc": la_val,
              "tau_norm_tau": tn_tau, "tau_norm_val_acc": tn_val, "ece_bins": ECE_BINS,
              "methods": {m: METHODS[m] for m in methods}},
    )


def test_time_rows(method: str, table_csv) -> pd.DataFrame:
    """Rows of the test-shift table (``SHIFT_COLUMNS``) of a method that adapts to each shifted
    test set itself (``table_csv``: its accuracy per distribution): no ``accuracy_adapted``,
    since it never sees the test prior."""
    if method not in TEST_TIME_METHODS:
        raise ValueError(f"{method!r} is not a test-time method; known: {', '.join(TEST_TIME_METHODS)}")
    table = pd.read_csv(table_csv)
    return table.assign(method=method, accuracy_adapted=np.nan)[SHIFT_COLUMNS]


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
