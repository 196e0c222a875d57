import functools
import glob
import os
import sys
from pathlib import Path

# Stage programs import the library from src/ of this checkout, installed or not.
_SRC = str(Path(workflow.basedir) / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)
# ... and so does this process, to check the config and a dataset's list files while building the DAG.
sys.path.insert(0, _SRC)

from snakemake.exceptions import WorkflowError  # noqa: E402

from balanced_experts.configuration import ConfigError, check_config  # noqa: E402
from balanced_experts.lists import (ListFormatError, check_labels_cover,  # noqa: E402
                                    check_labels_in_range, read_list)

# Before any job runs. snakemake.utils.validate would print the whole jsonschema dump;
# check_config names the key path and the allowed values in one line, and also checks
# what the schema cannot express (few_threshold <= many_threshold).
try:
    check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as error:
    sys.exit(str(error))

DATASETS = list(config["datasets"])
EXPERTS = ["many", "medium", "few"]
# Start order of the experts when they compete for cores (higher first); see rule train_expert.
EXPERT_PRIORITY = {"many": 2, "medium": 1, "few": 0}
# Every model whose logits are written: the base model, the experts, and the cRT baseline.
MODELS = ["base"] + EXPERTS + ["crt"]
DATA_SPLITS = ["train", "val", "test"]
EXECUTION = config.get("execution", {})


def gpus_per_job():
    """The `gpu` resource of the training and logits jobs when no profile sets it: 1 when
    a job may use CUDA, 0 when it runs on the CPU.

    The default profile caps the `gpu` resource at 1, so that two jobs never share this
    machine's GPU; jobs that ask for 0 are not held back by that cap, so a CPU-only run
    still trains the experts side by side. "May use CUDA": `execution.device` is cuda, or
    it is auto and this machine has an NVIDIA device (a file check; importing torch here
    would slow every parse). A cluster profile sets the resource per rule instead.
    """
    device = str(EXECUTION.get("device", "auto"))
    if device.startswith("cuda"):
        return 1
    if device == "auto" and glob.glob("/dev/nvidia[0-9]*"):
        return 1
    return 0


wildcard_constraints:
    dataset="|".join(DATASETS),
    expert="|".join(EXPERTS),
    model="|".join(MODELS),
    split="|".join(DATA_SPLITS),


def job_attempt(wildcards, attempt):
    """Resource `attempt` of every rule: 1, then 2, ... when `--retries` runs a failed job
    again. The stage writes it in the header line that starts each attempt in its log."""
    return attempt


def code(script, *modules):
    """A stage's program and the library modules it runs, declared as inputs.

    Snakemake reruns a `script:` rule whenever the script's mtime changes; the default
    profile turns that `code` trigger off and these inputs take its place: an edit
    changes their checksum and reruns the stage, a mere touch does not, and editing a
    library module reruns exactly the stages that use it.
    """
    return [f"workflow/scripts/{script}.py"] + [f"src/balanced_experts/{m}.py" for m in modules]


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


# Where each data kind's images and list files come from. `synthetic` and `cifar` are
# prepared by a rule under results/<dataset>/data/; `lists` points at the user's files.
PREPARED_DATA_KINDS = ("synthetic", "cifar")


def existing_path(dataset, key, kind="file", hint=""):
    """The path at config key ``datasets.<dataset>.<key>`` (dotted), which must exist.

    Called from input functions, so only for datasets a target actually needs: the
    default (synthetic) run does not care whether the Places-LT root exists here. The
    error is one line naming the key and the path, before any job starts.
    """
    value = config["datasets"][dataset]
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    where = f"config key datasets.{dataset}.{key}"
    if not value:
        raise WorkflowError(f"{where} is not set")
    if kind == "dir" and not Path(value).is_dir():
        raise WorkflowError(f"{where}: {value} is not an existing folder{hint}")
    if kind == "file" and not Path(value).is_file():
        raise WorkflowError(f"{where}: {value} does not exist{hint}")
    return value


def image_root(wildcards):
    """Folder the list files' relative paths start from (must exist for image-reading jobs)."""
    data = dataset_config(wildcards)["data"]
    if data["kind"] in PREPARED_DATA_KINDS:
        return f"results/{wildcards.dataset}/data"
    return existing_path(wildcards.dataset, "data.root", kind="dir")


def list_file(split, images=True):
    """Input function: the list file of one data split of the job's dataset.

    ``images``: the job also reads the images, so the image root must exist too; the
    classes job reads the train list alone and runs without any image.
    """

    def _list_file(wildcards):
        data = dataset_config(wildcards)["data"]
        if data["kind"] in PREPARED_DATA_KINDS:
            return f"results/{wildcards.dataset}/data/{split}.txt"
        if images:
            image_root(wildcards)
        path = existing_path(wildcards.dataset, f"data.{split}_list")
        check_list(wildcards.dataset, split)
        return path

    return _list_file


@functools.lru_cache(maxsize=None)
def _parsed_list(path, mtime_ns):
    return read_list(path)


def check_list(dataset, split):
    """Parse a user's list file while the DAG is built, so that a malformed line (file and
    line number) or a label gap (which ids are missing) stops Snakemake before any job
    starts, not a training job hours later. Train and val must cover 0..C-1, with C from
    the train list; test labels must lie in that range. Parsed once per file and version.
    """
    def parsed(which):
        path = Path(existing_path(dataset, f"data.{which}_list"))
        return _parsed_list(str(path), path.stat().st_mtime_ns)

    try:
        image_list = parsed(split)
        num_classes = image_list.num_classes if split == "train" else parsed("train").num_classes
        if split != "test":
            check_labels_cover(image_list, num_classes)
        else:
            check_labels_in_range(image_list, num_classes)
    except (ListFormatError, OSError, UnicodeDecodeError) as error:
        raise WorkflowError(f"config key datasets.{dataset}.data.{split}_list: {error}") from None


def cifar_archive(wildcards):
    """Input function: the local CIFAR python archive of a `cifar` dataset."""
    return existing_path(wildcards.dataset, "data.cifar.archive",
                         hint=" (cifar-100-python.tar.gz / cifar-10-python.tar.gz from "
                              "https://www.cs.toronto.edu/~kriz/cifar.html)")


def pretrained_weights(wildcards):
    """Input function: the pretrained-weights file of the base model's backbone, if any."""
    if not dataset_config(wildcards)["backbone"].get("pretrained"):
        return []
    return existing_path(wildcards.dataset, "backbone.pretrained.path",
                         hint=" (nothing is downloaded at run time; the README, Places-LT, says where to get it)")


def datasets_of_kind(kind):
    """Wildcard regex of the configured datasets of one data kind (never matches if none)."""
    names = [name for name, cfg in config["datasets"].items() if cfg["data"]["kind"] == kind]
    return "|".join(names) if names else "(?!)"


def preloaded_datasets():
    """Wildcard regex of the datasets with ``input.preload`` (never matches if none)."""
    names = [name for name, cfg in config["datasets"].items() if cfg["input"].get("preload")]
    return "|".join(names) if names else "(?!)"


def image_cache(split):
    """Input function: the decoded-once cache of a split, for preloaded datasets only.

    Jobs of other datasets read the image files themselves (nothing to declare), so a
    dataset with ``preload: false`` never gets a cache job upstream of its training.
    """

    def _image_cache(wildcards):
        if not dataset_config(wildcards)["input"].get("preload"):
            return []
        return f"results/{wildcards.dataset}/cache/{split}.npy"

    return _image_cache


def section(*keys):
    """Params function: one slice of the job's dataset config (and nothing else)."""

    def _section(wildcards):
        value = dataset_config(wildcards)
        for key in keys:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        return value

    return _section
