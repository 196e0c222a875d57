rule synthetic_data:
    """Generate the embedded long-tailed dataset: PNG images plus train/val/test lists."""
    input:
        code=program_and_library("synthetic_data"),
    output:
        train=pattern(paths.DATA_LIST, split="train"),
        val=pattern(paths.DATA_LIST, split="val"),
        test=pattern(paths.DATA_LIST, split="test"),
        # Declared, so that Snakemake removes the images of a failed or unfinished run; the
        # job itself writes them into a temporary folder that replaces this one whole.
        images=directory(paths.DATA_IMAGES),
    log:
        paths.log(paths.DATASET, "synthetic_data"),
    wildcard_constraints:
        dataset=datasets_of_kind("synthetic"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        synthetic=setting_slice("data", "synthetic"),
    script:
        "../scripts/synthetic_data.py"


rule cifar_data:
    """CIFAR-10/100-LT from the local python archive: PNG images plus train/val/test lists."""
    input:
        archive=cifar_archive,
        code=program_and_library("cifar_data"),
    output:
        train=pattern(paths.DATA_LIST, split="train"),
        val=pattern(paths.DATA_LIST, split="val"),
        test=pattern(paths.DATA_LIST, split="test"),
        images=directory(paths.DATA_IMAGES),  # as in synthetic_data
    log:
        paths.log(paths.DATASET, "cifar_data"),
    wildcard_constraints:
        dataset=datasets_of_kind("cifar"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        cifar=setting_slice("data", "cifar"),
    script:
        "../scripts/cifar_data.py"


rule classes:
    """Per-class training counts and the many/medium/few split, from the train list alone."""
    input:
        train=list_file("train", images=False),
        code=program_and_library("classes"),
    output:
        classes=paths.CLASSES,
    log:
        paths.log(paths.SETTING, "classes"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        **stage_params("classes"),
    script:
        "../scripts/classes.py"


rule image_cache:
    """Decode one split of a preloaded (small-image) dataset once, for every job to memory-map."""
    input:
        images=lambda wildcards: list_file(wildcards.split)(wildcards),
        code=program_and_library("image_cache"),
    output:
        cache=paths.IMAGE_CACHE,
    log:
        paths.log(paths.SETTING, "image_cache_{split}"),
    benchmark:
        paths.benchmark(paths.SETTING, "image_cache_{split}")
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        **stage_params("image_cache"),
        root=image_root,
    script:
        "../scripts/image_cache.py"


# It writes one small file: on a cluster, not worth a job of its own.
localrules:
    resolved_config,


rule resolved_config:
    """A setting's merged config (defaults, dataset, variant), written beside its results."""
    input:
        code=program_and_library("resolved_config"),
    output:
        config=paths.RESOLVED_CONFIG,
    log:
        paths.log(paths.SETTING, "resolved_config"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        settings=setting_config,
    script:
        "../scripts/resolved_config.py"
