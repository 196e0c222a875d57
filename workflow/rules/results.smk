# Input functions that name the workflow's own results: each file's template comes from
# balanced_experts.paths, formatted with the setting that owns the file (a variant reads the
# outputs of every stage it shares from its dataset's main settings).


def owned_file(wildcards, template, stage, key=None, **fields):
    """The file ``template`` of ``stage``'s job (``key``: its expert or model) for the job's
    setting and replicate, in the folder of the setting that owns it."""
    return EXPERIMENTS.stage_file(template, stage, wildcards.setting, int(wildcards.get("seed", 0)), key, **fields)


def classes_table(wildcards):
    """Input function: the classes table of the job's setting."""
    return owned_file(wildcards, paths.CLASSES, "classes")


def image_cache(split):
    """Input function: the decoded-once cache of a split, for preloaded settings only.

    Jobs of other settings read the image files themselves (nothing to declare), so a
    setting with ``preload: false`` never gets a cache job upstream of its training.
    """

    def _image_cache(wildcards):
        if not setting_config(wildcards)["input"].get("preload"):
            return []
        return owned_file(wildcards, paths.IMAGE_CACHE, "image_cache", split=split)

    return _image_cache


def calibration_file(wildcards):
    """Input function: the joint calibration of the job's replicate."""
    return owned_file(wildcards, paths.CALIBRATION, "calibrate")


def model_path(setting, seed, model, template):
    """A trained model's file ``template`` (paths.WEIGHTS, paths.METRICS) for replicate
    ``seed`` of ``setting``, in the folder of the setting that trains it."""
    stage, key = training_stage(model)
    return EXPERIMENTS.stage_file(template, stage, setting, int(seed), key, model=model)


def model_file(model, template):
    """Input function: a trained model's file ``template`` for the job's replicate;
    ``model=None``: the job's `model` wildcard."""
    return lambda wildcards: model_path(wildcards.setting, wildcards.seed, model or wildcards.model, template)


def metrics_of_every_model(wildcards):
    """Input function: the training curve (metrics.csv) of every model the job's setting
    trains (experiments.Experiments.models: the peers it switches on), for the job's replicate."""
    return [
        model_path(wildcards.setting, wildcards.seed, model, paths.METRICS)
        for model in EXPERIMENTS.models(wildcards.setting)
    ]


def metrics_of_every_model_and_replicate(wildcards):
    """Input function (unpack it): ``metrics_<model>``, that model's metrics.csv of every
    replicate in the order of ``seeds``, for every model the job's setting trains."""
    seeds = EXPERIMENTS.seeds(wildcards.setting)
    return {
        f"metrics_{model}": [model_path(wildcards.setting, k, model, paths.METRICS) for k in seeds]
        for model in EXPERIMENTS.models(wildcards.setting)
    }


def peer_logits(split):
    """Input function: the logits on one split of every peer the job's setting switches on."""
    return lambda wildcards: [
        logits_path(wildcards.setting, wildcards.seed, peer, split) for peer in EXPERIMENTS.peers(wildcards.setting)
    ]


def sade_test_time_table(wildcards):
    """Input function: SADE's test-time aggregation table of the job's replicate, where the
    job's setting runs SADE."""
    if "sade" not in EXPERIMENTS.peers(wildcards.setting):
        return []
    return owned_file(wildcards, paths.SADE_TEST_TIME, "sade_test_time")


def logits_path(setting, seed, model, split):
    """One model's logits on one split for replicate ``seed`` of ``setting``, in the folder
    of the setting that scores it."""
    return EXPERIMENTS.stage_file(paths.LOGITS, "logits", setting, int(seed), model, model=model, split=split)


def logits_file(model, split):
    """Input function: one model's logits on one split for the job's replicate."""
    return lambda wildcards: logits_path(wildcards.setting, wildcards.seed, model, split)


def replicate_files(template):
    """Input function: the file ``template`` (a per-replicate one, never shared) of every
    replicate of the job's setting, in the order of its ``seeds``."""
    return lambda wildcards: [
        template.format(setting=wildcards.setting, seed=k) for k in EXPERIMENTS.seeds(wildcards.setting)
    ]


def default_targets():
    """Of each default dataset: the report of its main settings and of each variant (with
    their plots and resolved configs), the logits of every model they run on every split
    for every seed, and, when the dataset has variants, the comparison; the summary table
    of the summary's datasets."""
    targets = []
    for dataset in DEFAULT_DATASETS:
        settings = [dataset, *EXPERIMENTS.variants(dataset)]
        for setting in settings:
            targets.append(paths.REPORT.format(setting=setting))
            targets += [
                logits_path(setting, seed, model, split)
                for seed in EXPERIMENTS.seeds(setting)
                for model in EXPERIMENTS.models(setting)
                for split in DATA_SPLITS
            ]
        if len(settings) > 1:
            targets.append(paths.COMPARISON.format(dataset=dataset))
    targets.append(paths.SUMMARY_MD)
    return list(dict.fromkeys(targets))


def summary_reports(wildcards):
    """Input function: the per-seed report rows of the main settings of each dataset of the
    summary table (config ``summary.datasets``; default: ``default_datasets``)."""
    return [paths.REPORT_SEEDS.format(setting=dataset) for dataset in SUMMARY_DATASETS]
