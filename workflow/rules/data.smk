rule synthetic_data:
    """Generate the embedded long-tailed dataset: PNG images plus train/val/test lists."""
    input:
        code=code("synthetic_data"),
    output:
        train="results/{dataset}/data/train.txt",
        val="results/{dataset}/data/val.txt",
        test="results/{dataset}/data/test.txt",
        # Declared, so that Snakemake removes the images of a failed or unfinished run; the
        # job itself writes them into a temporary folder that replaces this one whole.
        images=directory("results/{dataset}/data/images"),
    log:
        "results/{dataset}/logs/synthetic_data.log",
    wildcard_constraints:
        dataset=datasets_of_kind("synthetic"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        synthetic=section("data", "synthetic"),
    script:
        "../scripts/synthetic_data.py"


rule cifar_data:
    """CIFAR-10/100-LT from the local python archive: PNG images plus train/val/test lists."""
    input:
        archive=cifar_archive,
        code=code("cifar_data"),
    output:
        train="results/{dataset}/data/train.txt",
        val="results/{dataset}/data/val.txt",
        test="results/{dataset}/data/test.txt",
        images=directory("results/{dataset}/data/images"),  # as in synthetic_data
    log:
        "results/{dataset}/logs/cifar_data.log",
    wildcard_constraints:
        dataset=datasets_of_kind("cifar"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        cifar=section("data", "cifar"),
    script:
        "../scripts/cifar_data.py"


rule classes:
    """Per-class training counts and the many/medium/few split, from the train list alone."""
    input:
        train=list_file("train", images=False),
        code=code("classes"),
    output:
        classes="results/{setting}/classes.csv",
    log:
        "results/{setting}/logs/classes.log",
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
        code=code("image_cache"),
    output:
        cache="results/{setting}/cache/{split}.npy",
    log:
        "results/{setting}/logs/image_cache_{split}.log",
    benchmark:
        "results/{setting}/benchmarks/image_cache_{split}.tsv"
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
        code=code("resolved_config"),
    output:
        config="results/{setting}/resolved_config.yaml",
    log:
        "results/{setting}/logs/resolved_config.log",
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        settings=setting_config,
    script:
        "../scripts/resolved_config.py"
