"""Class-balanced experts for long-tailed recognition (Sharma et al., GCPR 2020).

The library behind the Snakemake workflow: split lists, class splits, the synthetic
dataset, models, the training loop, logits I/O, joint calibration and metrics.
Nothing in this package imports Snakemake.
"""

__version__ = "0.1.0"

SPLIT_NAMES = ("many", "medium", "few")
"""The three class splits, in the order the report lists them."""

DATA_SPLITS = ("train", "val", "test")
"""The three data splits every model is scored on."""

DECOUPLED_METHODS = ("crt", "lws")
"""The decoupled classifiers re-trained on the frozen base model (Kang et al. 2020), each
its own model (``models/<method>/``) and report row (``base_<method>``)."""
