import os
import sys
from pathlib import Path

# Stage programs import the library from src/ of this checkout, installed or not.
_SRC = str(Path(workflow.basedir) / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)
sys.path.insert(0, _SRC)

from balanced_experts.configuration import ConfigError, check_config

# Before any job runs. snakemake.utils.validate would print the whole jsonschema dump;
# check_config names the key path and the allowed values in one line, and also checks
# what the schema cannot express (few_threshold <= many_threshold).
try:
    check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as error:
    sys.exit(str(error))

DATASETS = list(config["datasets"])
EXPERTS = ["many", "medium", "few"]
# Every model whose logits are written: the base model, the experts, and the cRT baseline.
MODELS = ["base"] + EXPERTS + ["crt"]
DATA_SPLITS = ["train", "val", "test"]
EXECUTION = config.get("execution", {})


wildcard_constraints:
    dataset="|".join(DATASETS),
    expert="|".join(EXPERTS),
    model="|".join(MODELS),
    split="|".join(DATA_SPLITS),


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


def image_root(wildcards):
    """Folder the list files' relative paths start from."""
    data = dataset_config(wildcards)["data"]
    if data["kind"] == "synthetic":
        return f"results/{wildcards.dataset}/data"
    return data["root"]


def list_file(split):
    """Input function: the list file of one data split of the job's dataset."""

    def _list_file(wildcards):
        data = dataset_config(wildcards)["data"]
        if data["kind"] == "synthetic":
            return f"results/{wildcards.dataset}/data/{split}.txt"
        return data[f"{split}_list"]

    return _list_file


def section(*keys):
    """Params function: one slice of the job's dataset config (and nothing else)."""

    def _section(wildcards):
        value = dataset_config(wildcards)
        for key in keys:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        return value

    return _section


def model_section(wildcards):
    """The training settings of the model a job trains: `base` or `experts.<expert>`."""
    cfg = dataset_config(wildcards)
    return cfg["base"] if wildcards.model == "base" else cfg["experts"][wildcards.model]
