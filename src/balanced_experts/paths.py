"""Where every file the workflow writes lies: one template per file, under ``results/``.

A template's ``{fields}`` are the rules' wildcards. A rule's output is the template itself, or
:func:`pattern` of it where the rule fills a field or names it otherwise (``{expert}`` for
``{model}``); an input function formats it with the job's values, ``setting`` being the
setting that owns the file (:meth:`balanced_experts.experiments.Experiments.stage_file`).

Fields: ``dataset``; ``setting``, a dataset's main settings (named by the dataset) or one of
its variants (``<dataset>/variants/<variant>``); ``seed``, the replicate k; ``model``, one of
``experiments.MODELS``; ``split``, a data split.
"""

from __future__ import annotations

from string import Formatter

RESULTS = "results"
"""Every result's folder: what spans several datasets (the summary table)."""

DATASET = RESULTS + "/{dataset}"
"""A dataset's folder: its prepared data and the comparison of its settings (the same folder
as its main settings')."""

SETTING = RESULTS + "/{setting}"
"""A setting's folder: what no replicate changes (class splits, image caches) and the report
over the seeds."""

REPLICATE = SETTING + "/seed{seed}"
"""Replicate k of a setting: its models, logits, calibration and report."""


def log(folder: str, job: str) -> str:
    """The log of job ``job`` (a name, may hold wildcards) in ``folder`` (a template above)."""
    return f"{folder}/logs/{job}.log"


def benchmark(folder: str, job: str) -> str:
    """The benchmark table of job ``job`` in ``folder`` (a template above)."""
    return f"{folder}/benchmarks/{job}.tsv"


# -- a prepared dataset (`synthetic`, `cifar`; a `lists` dataset is read where it lies) -----
DATA = DATASET + "/data"
"""The image root: the list files' relative paths start here."""
DATA_LIST = DATA + "/{split}.txt"
DATA_IMAGES = DATA + "/images"

# -- per setting ----------------------------------------------------------------------------
CLASSES = SETTING + "/classes.csv"
IMAGE_CACHE = SETTING + "/cache/{split}.npy"
RESOLVED_CONFIG = SETTING + "/resolved_config.yaml"

# -- per replicate --------------------------------------------------------------------------
WEIGHTS = REPLICATE + "/models/{model}/weights.pt"
METRICS = REPLICATE + "/models/{model}/metrics.csv"
"""A model's training curve, one row per epoch."""
LOGITS = REPLICATE + "/logits/{model}/{split}.parquet"
CALIBRATION = REPLICATE + "/calibration/calibration.pt"
CALIBRATION_SUMMARY = REPLICATE + "/calibration/summary.json"
REPLICATE_REPORT = REPLICATE + "/report.csv"
REPLICATE_PER_CLASS = REPLICATE + "/per_class.csv"
REPLICATE_PREDICTIONS = REPLICATE + "/predictions/test.parquet"
REPLICATE_REPORT_INFO = REPLICATE + "/report_info.json"
REPLICATE_TEST_SHIFT = REPLICATE + "/test_shift.csv"
SADE_TEST_TIME = REPLICATE + "/test_time/sade.csv"
"""SADE's test-time aggregation on each shifted test set drawn from the test images (its
learned expert weights too); its accuracy is a row of the replicate's test_shift.csv."""
REPLICATE_PER_CLASS_PLOT = REPLICATE + "/plots/per_class_accuracy.png"
REPLICATE_RELIABILITY_PLOT = REPLICATE + "/plots/reliability.png"
REPLICATE_TRAINING_PLOT = REPLICATE + "/plots/training_curves.png"

# -- a setting's report over its seeds ------------------------------------------------------
REPORT = SETTING + "/report.csv"
REPORT_SEEDS = SETTING + "/report_seeds.csv"
REPORT_MD = SETTING + "/report.md"
"""The report as a paper's table (Markdown; mean ± std over the seeds), and as LaTeX:"""
REPORT_TEX = SETTING + "/report.tex"
PER_CLASS = SETTING + "/per_class.csv"
SPLIT_COUNTS = SETTING + "/split_counts.csv"
TEST_SHIFT = SETTING + "/test_shift.csv"
FOUR_FOLD_PLOT = SETTING + "/plots/four_fold.png"
PER_CLASS_PLOT = SETTING + "/plots/per_class_accuracy.png"
RELIABILITY_PLOT = SETTING + "/plots/reliability.png"
TRAINING_PLOT = SETTING + "/plots/training_curves.png"
LONG_TAIL_PLOT = SETTING + "/plots/long_tail.png"
TEST_SHIFT_PLOT = SETTING + "/plots/test_shift.png"

# -- a dataset's settings side by side ------------------------------------------------------
COMPARISON = DATASET + "/comparison.csv"
COMPARISON_PLOT = DATASET + "/plots/comparison.png"

# -- several datasets side by side -----------------------------------------------------------
SUMMARY_MD = RESULTS + "/summary.md"
SUMMARY_TEX = RESULTS + "/summary.tex"


def fields(template: str) -> list[str]:
    """The names of ``template``'s fields, in order."""
    return [name for _, name, _, _ in Formatter().parse(template) if name is not None]


def pattern(template: str, **values: str) -> str:
    """``template`` as a rule's wildcard pattern: each field in ``values`` replaced by its
    value (a fixed name, or another wildcard such as ``"{expert}"``), every other field kept
    as the wildcard of its name."""
    unknown = set(values) - set(fields(template))
    if unknown:
        raise KeyError(f"{template} has no field {', '.join(sorted(unknown))}")
    return template.format(**{name: "{" + name + "}" for name in fields(template)} | values)
