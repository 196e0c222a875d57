# Set-up for all the rules files. The library on the path (here and in the jobs), the checked
# config, the settings and execution globals, the wildcards' constraints, the `attempt` resource.
import os
import re
import sys
from pathlib import Path

# Stage programs import the library from src/ of this checkout, installed or not: it goes
# first on their PYTHONPATH, which `envvars` also passes on to jobs on other machines ...
_SRC = Path(workflow.basedir) / "src"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SRC), os.environ.get("PYTHONPATH")) if p)


envvars:
    "PYTHONPATH",


# ... and so does this process, to check the config and a dataset's list files while building the DAG.
sys.path.insert(0, str(_SRC))

from snakemake.exceptions import WorkflowError  # noqa: E402

from balanced_experts import DATA_SPLITS, DECOUPLED_METHODS, paths  # noqa: E402
from balanced_experts.configuration import ConfigError, check_config, parse_setting, setting_key  # noqa: E402
from balanced_experts.execution import ExecutionSettings  # noqa: E402
from balanced_experts.experiments import (  # noqa: E402
    EXPERTS,
    MODELS,
    STAGES,
    Experiments,
    config_slice,
    job_key,
    training_stage,
)
from balanced_experts.imports import library_files  # noqa: E402
from balanced_experts.lists import (  # noqa: E402
    ListFormatError,
    check_images_exist,
    check_labels_cover,
    check_labels_in_range,
    read_list,
)
from balanced_experts.methods import PEER_METHODS  # noqa: E402
from balanced_experts.paths import pattern  # noqa: E402

# Before any job runs. snakemake.utils.validate would print the whole jsonschema dump;
# check_config names the key path and the allowed values in one line, and also checks
# what the schema cannot express (few_threshold <= many_threshold).
try:
    check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as error:
    sys.exit(str(error))

# Every setting (a dataset's main settings, named by the dataset, and each variant,
# `<dataset>/variants/<variant>`) with its merged config; which stages a variant shares.
EXPERIMENTS = Experiments.from_config(config)
DATASETS = list(config["datasets"])
# What a bare `snakemake` builds; the datasets side by side in results/summary.md and .tex.
DEFAULT_DATASETS = config.get("default_datasets", ["synthetic"])
SUMMARY_DATASETS = config.get("summary", {}).get("datasets", DEFAULT_DATASETS)
# Device, threads, precision: read at run time by the jobs; here, the rules' threads and GPUs.
EXECUTION = ExecutionSettings.from_config(config.get("execution"))
# The `gpu` resource of the training and logits jobs when no profile sets it: 1 when a job
# may use CUDA, 0 when it runs on the CPU. The default profile caps the `gpu` resource at 1,
# so that two jobs never share this machine's GPU; jobs that ask for 0 are not held back by
# that cap, so a CPU-only run still trains the experts side by side. A cluster profile sets
# the resource per rule instead.
GPUS_PER_JOB = int(EXECUTION.may_use_cuda())


def alternatives(names):
    """A wildcard regex matching exactly one of ``names`` (never matches if there is none)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"


def datasets_of_kind(kind):
    """Wildcard regex of the configured datasets of one data kind (never matches if none)."""
    return alternatives(name for name in DATASETS if EXPERIMENTS.settings[name]["data"]["kind"] == kind)


# `dataset`: data stages, one per dataset. `setting`: every other stage, with `seed` (the
# replicate k, folder seed<k>) for the per-replicate ones: results/<setting>/seed<k>/...
wildcard_constraints:
    dataset=alternatives(DATASETS),
    setting=alternatives(EXPERIMENTS.settings),
    seed=r"\d+",
    expert=alternatives(EXPERTS),
    model=alternatives(MODELS),
    method=alternatives(DECOUPLED_METHODS),
    peer=alternatives(PEER_METHODS),
    split=alternatives(DATA_SPLITS),


def job_attempt(wildcards, attempt):
    """Resource `attempt` of every rule: 1, then 2, ... when `--retries` runs a failed job
    again. The stage writes it in the header line that starts each attempt in its log."""
    return attempt


def unwritable_folder(path):
    """The folder that writing ``path`` needs, the nearest existing one above it, when this
    process cannot write in it (a read-only mount, or no permission); else None."""
    folder = Path(path).parent
    while not folder.exists():
        folder = folder.parent
    return None if os.access(folder, os.W_OK | os.X_OK) else folder


def check_results_writable():
    """Before the first job: every file a job to run writes (outputs, log, benchmark) must
    be writable, else one line names the folder. Snakemake itself finds out only when it
    creates a job's output folder, after the job has started, with a WorkflowError and the
    OS error (e.g. the first run of a new variant in a read-only results folder)."""
    for job in workflow.dag.needrun_jobs():
        for path in [*job.output, *job.log, *([job.benchmark] if job.benchmark else [])]:
            folder = unwritable_folder(path)
            if folder is not None:
                read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
                why = "on a read-only file system" if read_only else "not writable by this user"
                sys.exit(f"{folder} is {why}; job {job.rule.name} writes {path} (nothing was run)")


# After the DAG is built, before any job starts; not in a dry run.
onstart:
    check_results_writable()
