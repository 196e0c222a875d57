# Input functions that read the user's files and the config: data lists, image roots, the
# CIFAR archive, pretrained weights, each job's config slices (params) and its code.
import functools


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


def path_problem(setting, key, kind="file", hint=""):
    """What is wrong with the path at config key ``<key>`` (dotted) of a setting (a
    dataset's main settings or a variant), which must exist: one line naming the key and
    the path, or None; and the path."""
    value = config_slice(EXPERIMENTS.settings[setting], key.split("."))
    where = f"config key {setting_key(setting)}.{key}"
    if not value:
        return f"{where} is not set", value
    if kind == "dir" and not Path(value).is_dir():
        return f"{where}: {value} is not an existing folder{hint}", value
    if kind == "file" and not Path(value).is_file():
        return f"{where}: {value} does not exist{hint}", value
    return None, value


def existing_path(setting, key, kind="file", hint=""):
    """The path at config key ``<key>`` of a setting, which must exist when a job that reads
    it is to run: Snakemake's rule for a missing input (a WorkflowError, which it drops when
    the job's outputs exist, e.g. pretrained weights deleted after the base model trained).

    Called from input functions, so only for datasets a target actually needs: the
    default (synthetic) run does not care whether the Places-LT root exists here.
    """
    problem, value = path_problem(setting, key, kind, hint)
    if problem:
        raise WorkflowError(problem)
    return value


def stop(message):
    """End Snakemake with ``message`` as its one line, from an input function, whether or not
    the job's outputs exist.

    A WorkflowError (or any Exception) raised in an input function is not that: Snakemake
    wraps it in an InputFunctionException (the wildcards and a traceback), and while it
    builds the DAG it drops the error of a job whose outputs exist (dag.py, ``update_``),
    so a broken list behind a finished run gave "Nothing to be done". SystemExit is no
    Exception: no `except` of the DAG's passes it on, and Python prints the message. It
    leaves no lock (Snakemake locks after the DAG is built).
    """
    raise SystemExit(message)


def dataset_path(dataset, key, kind="file"):
    """The path at config key ``<key>`` of a `lists` dataset's data (its root, its list
    files), which must exist for every target of the dataset: else :func:`stop`."""
    problem, value = path_problem(dataset, key, kind)
    if problem:
        stop(problem)
    return value


def image_root(wildcards):
    """Folder the list files' relative paths start from (must exist for image-reading jobs)."""
    dataset = dataset_of(wildcards)
    if EXPERIMENTS.settings[dataset]["data"]["kind"] in PREPARED_DATA_KINDS:
        return paths.DATA.format(dataset=dataset)
    return dataset_path(dataset, "data.root", kind="dir")


def list_file(split, images=True):
    """Input function: the list file of one data split of the job's dataset, checked
    (:func:`check_list`).

    ``images``: the job also reads the images, so the image root and every listed image
    must exist too; the classes job reads the train list alone and runs without any image.
    """

    def _list_file(wildcards):
        dataset = dataset_of(wildcards)
        if EXPERIMENTS.settings[dataset]["data"]["kind"] in PREPARED_DATA_KINDS:
            return paths.DATA_LIST.format(dataset=dataset, split=split)
        root = image_root(wildcards) if images else None
        path = dataset_path(dataset, f"data.{split}_list")
        check_list(dataset, split, root)
        return path

    return _list_file


@functools.lru_cache(maxsize=None)
def _parsed_list(path, mtime_ns):
    return read_list(path)


@functools.lru_cache(maxsize=None)
def _listed_images_exist(path, mtime_ns, root):
    check_images_exist(_parsed_list(path, mtime_ns), root)


def check_list(dataset, split, root=None):
    """Check a user's list file while the DAG is built, for every job that reads it, so that
    a malformed line (file and line number), a label gap (which ids are missing) or, with
    ``root``, a listed image that does not exist stops Snakemake before any job starts or
    any output is removed (Snakemake deletes a job's outputs before it runs it), not a
    training job hours later. Train and val must cover 0..C-1, with C from the train list;
    test labels must lie in that range. Parsed, and its images looked up, once per file
    and version; the error is one line (:func:`stop`).
    """

    def version(which):
        path = Path(dataset_path(dataset, f"data.{which}_list"))
        return str(path), path.stat().st_mtime_ns

    try:
        image_list = _parsed_list(*version(split))
        num_classes = image_list.num_classes if split == "train" else _parsed_list(*version("train")).num_classes
        if split != "test":
            check_labels_cover(image_list, num_classes)
        else:
            check_labels_in_range(image_list, num_classes)
        if root is not None:
            _listed_images_exist(*version(split), root)
    except (ListFormatError, OSError, UnicodeDecodeError) as error:
        stop(f"config key datasets.{dataset}.data.{split}_list: {error}")


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


def program_and_library(script):
    """A stage's program and the library modules it runs, declared as its `code` input: the
    files of every `balanced_experts` module the program imports, of those they import, and
    so on (balanced_experts.imports).

    Snakemake reruns a `script:` rule whenever the script's mtime changes; the default
    profile turns that `code` trigger off and these inputs take its place: an edit
    changes their checksum and reruns the stage, a mere touch does not, and editing a
    library module reruns exactly the stages that run it.
    """
    program = f"workflow/scripts/{script}.py"
    return [program, *library_files(program, workflow.basedir)]


def stage_params(stage):
    """A rule's params: its stage's config slices (experiments.STAGES) for the job's setting
    and replicate, so that the rule reruns when, and only when, one of them changes."""

    def param(name):
        def _param(wildcards):
            seed = int(wildcards.get("seed", 0))
            return EXPERIMENTS.params(wildcards.setting, stage, seed, job_key(wildcards))[name]

        return _param

    return {name: param(name) for name in STAGES[stage].slices}


def setting_slice(*keys):
    """Params function: one slice of the job's merged config (and nothing else)."""
    return lambda wildcards: config_slice(setting_config(wildcards), keys)
