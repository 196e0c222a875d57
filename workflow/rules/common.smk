import ast
import functools
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

from balanced_experts import DATA_SPLITS, DECOUPLED_METHODS  # noqa: E402
from balanced_experts.configuration import ConfigError, check_config, parse_setting, setting_key  # noqa: E402
from balanced_experts.execution import ExecutionSettings  # noqa: E402
from balanced_experts.experiments import (  # noqa: E402
    EXPERTS,
    MODELS,
    STAGES,
    Experiments,
    config_slice,
    training_stage,
)
from balanced_experts.lists import (  # noqa: E402
    ListFormatError,
    check_labels_cover,
    check_labels_in_range,
    read_list,
)

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
# Device, threads, precision: read at run time by the jobs; here, the rules' threads and GPUs.
EXECUTION = ExecutionSettings.from_config(config.get("execution"))
# The `gpu` resource of the training and logits jobs when no profile sets it: 1 when a job
# may use CUDA, 0 when it runs on the CPU. The default profile caps the `gpu` resource at 1,
# so that two jobs never share this machine's GPU; jobs that ask for 0 are not held back by
# that cap, so a CPU-only run still trains the experts side by side. A cluster profile sets
# the resource per rule instead.
GPUS_PER_JOB = int(EXECUTION.may_use_cuda())


def default_targets():
    """Of each default dataset: the report of its main settings and of each variant (with
    their plots and resolved configs), the logits of every model on every split for every
    seed, and, when the dataset has variants, the comparison."""
    targets = []
    for dataset in config.get("default_datasets", ["synthetic"]):
        settings = [dataset, *EXPERIMENTS.variants(dataset)]
        for setting in settings:
            targets.append(f"results/{setting}/report.csv")
            targets += [
                logits_path(setting, seed, model, split)
                for seed in EXPERIMENTS.seeds(setting)
                for model in MODELS
                for split in DATA_SPLITS
            ]
        if len(settings) > 1:
            targets.append(f"results/{dataset}/comparison.csv")
    return list(dict.fromkeys(targets))


def alternatives(names):
    """A wildcard regex matching exactly one of ``names`` (never matches if there is none)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"


# `dataset`: data stages, one per dataset. `setting`: every other stage, with `seed` (the
# replicate k, folder seed<k>) for the per-replicate ones: results/<setting>/seed<k>/...
wildcard_constraints:
    dataset=alternatives(DATASETS),
    setting=alternatives(EXPERIMENTS.settings),
    seed=r"\d+",
    expert=alternatives(EXPERTS),
    model=alternatives(MODELS),
    method=alternatives(DECOUPLED_METHODS),
    split=alternatives(DATA_SPLITS),


def job_attempt(wildcards, attempt):
    """Resource `attempt` of every rule: 1, then 2, ... when `--retries` runs a failed job
    again. The stage writes it in the header line that starts each attempt in its log."""
    return attempt


def code(script):
    """A stage's program and the library modules it runs, declared as inputs: the files of
    every `balanced_experts` module the program imports, of those they import, and so on.

    Snakemake reruns a `script:` rule whenever the script's mtime changes; the default
    profile turns that `code` trigger off and these inputs take its place: an edit
    changes their checksum and reruns the stage, a mere touch does not, and editing a
    library module reruns exactly the stages that run it. Read from the imports, the list
    cannot drift from them.
    """
    program = f"workflow/scripts/{script}.py"
    return [program, *library_closure(program)]


@functools.cache
def library_closure(path):
    """The library files (relative paths, sorted) that the Python file ``path`` runs through
    its imports, transitively: each imported module's file and the `__init__.py` of every
    package above it, which importing the module runs too."""
    found, todo = set(), [path]
    while todo:
        for name in _library_imports(todo.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                file = _module_file(tuple(parts[:depth]))
                if file and file not in found:
                    found.add(file)
                    todo.append(file)
    return sorted(found)


@functools.cache
def _module_file(parts):
    """The file under src/ of the module named ``parts`` (relative), or None: the name is
    not a module (but a name imported from one)."""
    stem = Path("src", *parts)
    for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
        if (Path(workflow.basedir) / candidate).is_file():
            return candidate.as_posix()
    return None


@functools.cache
def _library_imports(path):
    """Dotted names that the file ``path`` imports from the library, anywhere in it (at its
    top or inside a function); of `from x import y`, both x and x.y (y may be a module)."""
    tree = ast.parse((Path(workflow.basedir) / path).read_bytes(), path)
    package = Path(path).parent.relative_to("src").parts if path.startswith("src/") else ()
    names = []
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) + 1 - node.level] if node.level else ()
            source = ".".join([*base, *([node.module] if node.module else [])])
            names += [source, *(f"{source}.{alias.name}" for alias in node.names)]
    return [name for name in names if name.split(".")[0] == "balanced_experts"]


def _statements(body):
    """Every statement of ``body`` and, inside them, of their blocks (imports are statements:
    no expression needs a visit)."""
    for node in body:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, block, ()))


def dataset_of(wildcards):
    """The dataset of a job: its `dataset` wildcard, or its setting's dataset."""
    if "dataset" in wildcards.keys():
        return wildcards.dataset
    return parse_setting(wildcards.setting)[0]


def setting_config(wildcards):
    """The merged config of the job's setting (a data job: its dataset's main settings)."""
    return EXPERIMENTS.settings[wildcards.setting if "setting" in wildcards.keys() else wildcards.dataset]


# Where each data kind's images and list files come from. `synthetic` and `cifar` are
# prepared by a rule under results/<dataset>/data/; `lists` points at the user's files.
PREPARED_DATA_KINDS = ("synthetic", "cifar")


def existing_path(setting, key, kind="file", hint=""):
    """The path at config key ``<key>`` (dotted) of a setting (a dataset's main settings or
    a variant), which must exist.

    Called from input functions, so only for datasets a target actually needs: the
    default (synthetic) run does not care whether the Places-LT root exists here. The
    error is one line naming the key and the path, before any job starts.
    """
    value = config_slice(EXPERIMENTS.settings[setting], key.split("."))
    where = f"config key {setting_key(setting)}.{key}"
    if not value:
        raise WorkflowError(f"{where} is not set")
    if kind == "dir" and not Path(value).is_dir():
        raise WorkflowError(f"{where}: {value} is not an existing folder{hint}")
    if kind == "file" and not Path(value).is_file():
        raise WorkflowError(f"{where}: {value} does not exist{hint}")
    return value


def image_root(wildcards):
    """Folder the list files' relative paths start from (must exist for image-reading jobs)."""
    dataset = dataset_of(wildcards)
    if EXPERIMENTS.settings[dataset]["data"]["kind"] in PREPARED_DATA_KINDS:
        return f"results/{dataset}/data"
    return existing_path(dataset, "data.root", kind="dir")


def list_file(split, images=True):
    """Input function: the list file of one data split of the job's dataset.

    ``images``: the job also reads the images, so the image root must exist too; the
    classes job reads the train list alone and runs without any image.
    """

    def _list_file(wildcards):
        dataset = dataset_of(wildcards)
        if EXPERIMENTS.settings[dataset]["data"]["kind"] in PREPARED_DATA_KINDS:
            return f"results/{dataset}/data/{split}.txt"
        if images:
            image_root(wildcards)
        path = existing_path(dataset, f"data.{split}_list")
        check_list(dataset, split)
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
    return existing_path(
        wildcards.dataset,
        "data.cifar.archive",
        hint=" (cifar-100-python.tar.gz / cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)",
    )


def pretrained_weights(wildcards):
    """Input function: the pretrained-weights file of the base model's backbone, if any."""
    pretrained = setting_config(wildcards)["backbone"].get("pretrained")
    if not pretrained:
        return []
    # Named by the variant's key only when the variant sets weights of its own.
    main = dataset_of(wildcards)
    named = main if EXPERIMENTS.settings[main]["backbone"].get("pretrained") == pretrained else wildcards.setting
    return existing_path(
        named,
        "backbone.pretrained.path",
        hint=" (nothing is downloaded at run time; the README, Places-LT, says where to get it)",
    )


def datasets_of_kind(kind):
    """Wildcard regex of the configured datasets of one data kind (never matches if none)."""
    return alternatives(name for name in DATASETS if EXPERIMENTS.settings[name]["data"]["kind"] == kind)


def stage_params(stage):
    """A rule's params: its stage's config slices (experiments.STAGES) for the job's setting
    and replicate, so that the rule reruns when, and only when, one of them changes."""

    def param(name):
        def _param(wildcards):
            seed = int(wildcards.get("seed", 0))
            # The job's expert, model or decoupled method (the other wildcards name no stage key).
            key = next((wildcards.get(k) for k in ("expert", "model", "method") if k in wildcards.keys()), None)
            return EXPERIMENTS.params(wildcards.setting, stage, seed, key)[name]

        return _param

    return {name: param(name) for name in STAGES[stage].slices}


def folder(wildcards, stage, key=None):
    """results/<owner>[/seed<k>]: where the job's setting (and replicate) finds the outputs of
    ``stage``: the main settings' folder when its variant shares that stage, else its own."""
    return EXPERIMENTS.folder(wildcards.setting, stage, int(wildcards.get("seed", 0)), key)


def classes_table(wildcards):
    """Input function: the classes table of the job's setting."""
    return f"{folder(wildcards, 'classes')}/classes.csv"


def image_cache(split):
    """Input function: the decoded-once cache of a split, for preloaded settings only.

    Jobs of other settings read the image files themselves (nothing to declare), so a
    setting with ``preload: false`` never gets a cache job upstream of its training.
    """

    def _image_cache(wildcards):
        if not setting_config(wildcards)["input"].get("preload"):
            return []
        return f"{folder(wildcards, 'image_cache')}/cache/{split}.npy"

    return _image_cache


def model_path(setting, seed, model, name):
    """A trained model's file ``name`` (weights.pt, metrics.csv) for replicate ``seed`` of
    ``setting``, in the folder of the setting that trains it."""
    stage, key = training_stage(model)
    return f"{EXPERIMENTS.folder(setting, stage, int(seed), key)}/models/{model}/{name}"


def model_file(model, name):
    """Input function: a trained model's file ``name`` for the job's replicate;
    ``model=None``: the job's `model` wildcard."""
    return lambda wildcards: model_path(wildcards.setting, wildcards.seed, model or wildcards.model, name)


def replicate_files(path):
    """Input function: ``path`` (under results/<setting>/seed<k>/) of every replicate of the
    job's setting, in the order of its ``seeds``."""
    return lambda wildcards: [
        f"results/{wildcards.setting}/seed{k}/{path}" for k in EXPERIMENTS.seeds(wildcards.setting)
    ]


def model_file_of_every_replicate(model, name):
    """Input function: a trained model's file ``name`` of every replicate of the job's setting."""
    return lambda wildcards: [
        model_path(wildcards.setting, k, model, name) for k in EXPERIMENTS.seeds(wildcards.setting)
    ]


def logits_path(setting, seed, model, split):
    """One model's logits on one split for replicate ``seed`` of ``setting``, in the folder
    of the setting that scores it."""
    return f"{EXPERIMENTS.folder(setting, 'logits', int(seed), model)}/logits/{model}/{split}.parquet"


def logits_file(model, split):
    """Input function: one model's logits on one split for the job's replicate."""
    return lambda wildcards: logits_path(wildcards.setting, wildcards.seed, model, split)


def section(*keys):
    """Params function: one slice of the job's merged config (and nothing else)."""
    return lambda wildcards: config_slice(setting_config(wildcards), keys)
