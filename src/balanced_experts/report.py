"""The report: test accuracy (four-fold), ECE and NLL of the base model, its post-hoc and
re-trained baselines, the fused experts and the peers; per-class accuracies and test predictions."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from . import DECOUPLED_METHODS
from .baselines import choose_tau, logit_adjusted, softmax, tau_normalised, weight_norms
from .calibration import (calibration_from_state, expert_outputs_from_table, fuse,
                          oracle_predictions, read_calibration, select_rows)
from .logits import READ_BLOCK_COLUMNS, check_aligned, logits_meta, read_logits
from .methods import METHODS, PEER_METHODS, TEST_TIME_METHODS
from .metrics import (binned_calibration_error, four_fold_accuracy, negative_log_likelihood_of,
                      per_class_accuracy, reliability_bins)
from .models import load_checkpoint
from .over_seeds import ECE_BINS, REPORT_COLUMNS
from .shift import DISTRIBUTIONS, SHIFT_COLUMNS, assumed_prior, shift_predictions, shift_rows
from .splits import read_class_table


@dataclass
class Report:
    summary: pd.DataFrame  # one row per method: REPORT_COLUMNS
    per_class: pd.DataFrame  # class_id, train_count, split, one accuracy column per method
    predictions: pd.DataFrame  # sample_id, label, pred_<method>, conf_<method>
    test_shift: pd.DataFrame  # shift.SHIFT_COLUMNS: accuracy under shifted test label distributions
    info: dict  # the chosen taus and their validation accuracies


BLOCK_BYTES = 64 * 2**20
"""About the size of one block of a method's float64 probabilities (the report's rows are
scored a block at a time)."""


def block_rows_for(num_classes: int) -> int:
    """Rows of N x ``num_classes`` float64 probabilities in about :data:`BLOCK_BYTES`."""
    return max(16, BLOCK_BYTES // (8 * max(num_classes, 1)))


class _Scores:
    """One method's per-sample results on the test set, filled a block of rows at a time:
    its top-1, its confidence, the probability of the true class and its predictions under
    the shifted test priors (:func:`.shift.shift_predictions`)."""

    def __init__(self, labels: np.ndarray, prior: np.ndarray, train_counts: np.ndarray):
        n = len(labels)
        self.labels, self.prior, self.train_counts = labels, prior, train_counts
        self.pred = np.empty(n, dtype=np.int64)
        self.conf = np.empty(n, dtype=np.float64)
        self.true_prob = np.empty(n, dtype=np.float64)
        self.shift = np.empty((1 + len(DISTRIBUTIONS), n), dtype=np.int64)

    def add(self, rows: slice, probs: np.ndarray) -> None:
        self.pred[rows] = probs.argmax(1)
        self.conf[rows] = probs.max(1)
        self.true_prob[rows] = probs[np.arange(len(probs)), self.labels[rows]]
        self.shift[:, rows] = shift_predictions(probs, self.prior, self.train_counts)


def _row_blocks(total: int, block_rows: int) -> list[slice]:
    return [slice(start, start + block_rows) for start in range(0, max(total, 1), block_rows)]


def build_report(classes_csv, base_val, base_test, base_weights, decoupled_logits: list, expert_logits: list,
                 calibration, peer_logits: list = (), test_time: dict | None = None,
                 block_rows: int | None = None, block_columns: int = READ_BLOCK_COLUMNS) -> Report:
    """``decoupled_logits``: test logits of the decoupled classifiers (rows ``base_<model>``);
    ``expert_logits``: test logits of the experts; ``peer_logits``: test logits of the peers
    the setting runs (a row each, of the peer's name); ``test_time``: method -> its table of
    accuracies on each shifted test set (:data:`.methods.TEST_TIME_METHODS`: SADE's
    aggregation, ``sade.agnostic_shift_table``), rows of the test-shift table only.

    Model by model: a model's logits are read (``block_columns`` columns at a time,
    :func:`.logits.read_logits`) when its methods are scored and dropped after, and each
    method's probabilities exist only ``block_rows`` rows at a time (by default about
    :data:`BLOCK_BYTES` of them). The report is the same for any block sizes."""
    classes = read_class_table(classes_csv)
    class_split = classes["split"].to_numpy()
    train_counts = classes["train_count"].to_numpy()
    num_classes = len(classes)
    block_rows = max(1, block_rows or block_rows_for(num_classes))

    def read(path):
        return read_logits(path, block_columns=block_columns)

    # Which file holds which model (their metadata only): each is read when it is scored.
    paths = {"base": base_test}
    for path in [*decoupled_logits, *expert_logits, *peer_logits]:
        paths[logits_meta(path)["model"]] = path
    state = read_calibration(calibration)
    missing = [n for n in state["experts"] if n not in paths]
    if missing:
        raise ValueError(f"calibration covers experts {state['experts']}, but the test logits lack {missing}")

    # Post-hoc baselines on the base model, tau chosen on the validation logits.
    classifier = load_checkpoint(base_weights)["state_dict"]
    weight, bias = classifier["classifier.weight"].numpy(), classifier["classifier.bias"].numpy()
    norms = weight_norms(weight)
    val_base = read(base_val)
    la_tau, la_val = choose_tau(lambda z, t: logit_adjusted(z, train_counts, t), val_base.logits,
                                val_base.labels, block_rows=block_rows)
    tn_tau, tn_val = choose_tau(lambda z, t: tau_normalised(z, weight, bias, t, norms), val_base.logits,
                                val_base.labels, block_rows=block_rows)
    del val_base

    base = read(paths["base"])
    labels, sample_ids = base.labels, base.sample_ids
    rows_of = _row_blocks(len(labels), block_rows)
    scores: dict[str, _Scores | np.ndarray] = {}  # method -> its scores (the oracle: its predictions)
    shift_priors: dict[str, np.ndarray] = {}

    def scored(method: str, prior, probabilities) -> None:
        """Score ``method``: ``probabilities(rows)`` gives its probabilities of those rows."""
        shift_priors[method] = prior
        result = scores[method] = _Scores(labels, prior, train_counts)
        for rows in rows_of:
            result.add(rows, probabilities(rows))

    def aligned(name: str):
        table = read(paths[name])
        check_aligned({"base": reference, name: table})
        return table

    def assumed(method):
        return assumed_prior(method, train_counts, class_split, la_tau)

    # The base model and its post-hoc baselines; then only its rows are kept, to align the others with.
    z = base.logits
    scored("base", assumed("base"), lambda r: softmax(z[r]))
    scored("base_logit_adjusted", assumed("base_logit_adjusted"),
           lambda r: softmax(logit_adjusted(z[r], train_counts, la_tau)))
    scored("base_tau_norm", assumed("base_tau_norm"), lambda r: softmax(tau_normalised(z[r], weight, bias, tn_tau,
                                                                                         norms)))
    reference = replace(base, logits=np.empty((len(labels), 0), dtype=np.float32))
    base = z = None
    # The decoupled classifiers, one at a time.
    for name in DECOUPLED_METHODS:
        z = aligned(name).logits
        scored(f"base_{name}", assumed(f"base_{name}"), lambda r: softmax(z[r]))
        z = None

    # Fused experts (the experts' logits together).
    tables = {n: aligned(n) for n in state["experts"]}
    experts = [expert_outputs_from_table(tables[n]) for n in state["experts"]]
    tables = None
    calibrated = calibration_from_state(state)
    fusions = {
        "experts_naive": lambda e: fuse(e, num_classes, prior_correction=False),
        "experts_prior": lambda e: fuse(e, num_classes, prior_correction=True),
        "experts_calibrated": calibrated,
    }
    with torch.no_grad():
        for method, fusion in fusions.items():
            scored(method, assumed(method), lambda r: fusion(select_rows(experts, r)).exp().double().numpy())
        scores["oracle"] = oracle_predictions(experts, torch.from_numpy(labels)).numpy()
    experts = None

    # The peers the setting runs, one at a time: the prior their logits carry (their weights').
    for name in PEER_METHODS:
        if name in paths:
            table = aligned(name)
            z = table.logits
            scored(name, np.asarray(table.meta["prior"]), lambda r: softmax(z[r]))
            table = z = None
    methods = [m for m in METHODS if m in scores]

    rows, per_class, predictions = _method_tables(methods, scores, labels, class_split, num_classes)
    predictions = {"sample_id": sample_ids, "label": labels, **predictions}

    # Accuracy under forward / backward long-tailed test distributions, plain and re-targeted
    # to the known test prior from the prior each method's probabilities carry (a peer's:
    # its weights', which its logits carry).
    test_shift = pd.concat([*(shift_rows(m, scores[m].shift, labels, train_counts) for m in shift_priors),
                            *(test_time_rows(name, path) for name, path in (test_time or {}).items())],
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


def _method_tables(methods: list[str], scores: dict, labels, class_split, num_classes: int):
    """Each method's report row, per-class accuracies and prediction columns, from its
    scores (the oracle's: its predictions alone, with no confidence, ECE or NLL)."""
    rows, per_class, predictions = [], {}, {}
    for method in methods:
        result = scores[method]
        pred = result if method == "oracle" else result.pred
        conf = np.full(len(labels), np.nan) if method == "oracle" else result.conf
        row = {"method": method, **four_fold_accuracy(pred, labels, class_split), "ece": np.nan, "nll": np.nan}
        if method != "oracle":
            row["ece"] = binned_calibration_error(*reliability_bins(conf, pred == labels, ECE_BINS))
            row["nll"] = negative_log_likelihood_of(result.true_prob)
        rows.append(row)
        per_class[method] = per_class_accuracy(pred, labels, num_classes)
        predictions[f"pred_{method}"] = pred.astype(np.int64)
        predictions[f"conf_{method}"] = conf
    return rows, per_class, predictions


def test_time_rows(method: str, table_csv) -> pd.DataFrame:
    """Rows of the test-shift table (``SHIFT_COLUMNS``) of a method that adapts to each shifted
    test set itself (``table_csv``: its accuracy per distribution): no ``accuracy_adapted``,
    since it never sees the test prior."""
    if method not in TEST_TIME_METHODS:
        raise ValueError(f"{method!r} is not a test-time method; known: {', '.join(TEST_TIME_METHODS)}")
    table = pd.read_csv(table_csv)
    return table.assign(method=method, accuracy_adapted=np.nan)[SHIFT_COLUMNS]
