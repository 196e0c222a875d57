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
        return paths.DATA.format(dataset=dataset)
    return existing_path(dataset, "data.root", kind="dir")


def list_file(split, images=True):
    """Input function: the list file of one data split of the job's dataset.

    ``images``: the job also reads the images, so the image root must exist too; the
    classes job reads the train list alone and runs without any image.
    """

    def _list_file(wildcards):
        dataset = dataset_of(wildcards)
        if EXPERIMENTS.settings[dataset]["data"]["kind"] in PREPARED_DATA_KINDS:
            return paths.DATA_LIST.format(dataset=dataset, split=split)
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
