rule synthetic_data:
    """Generate the embedded long-tailed dataset: PNG images plus train/val/test lists."""
    input:
        code=code("synthetic_data", "synthetic", "lists", "runtime"),
    output:
        train="results/{dataset}/data/train.txt",
        val="results/{dataset}/data/val.txt",
        test="results/{dataset}/data/test.txt",
        # Declared, so that Snakemake removes the images of a failed or unfinished run; the
        # job itself writes them into a temporary folder that replaces this one whole.
        images=directory("results/{dataset}/data/images"),
    params:
        synthetic=section("data", "synthetic"),
    wildcard_constraints:
        dataset=datasets_of_kind("synthetic"),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/synthetic_data.log",
    resources:
        attempt=job_attempt,
    script:
        "../scripts/synthetic_data.py"


rule cifar_data:
    """CIFAR-10/100-LT from the local python archive: PNG images plus train/val/test lists."""
    input:
        archive=cifar_archive,
        code=code("cifar_data", "cifar", "lists", "runtime", "synthetic"),
    output:
        train="results/{dataset}/data/train.txt",
        val="results/{dataset}/data/val.txt",
        test="results/{dataset}/data/test.txt",
        images=directory("results/{dataset}/data/images"),  # as in synthetic_data
    params:
        cifar=section("data", "cifar"),
    wildcard_constraints:
        dataset=datasets_of_kind("cifar"),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/cifar_data.log",
    resources:
        attempt=job_attempt,
    script:
        "../scripts/cifar_data.py"


rule classes:
    """Per-class training counts and the many/medium/few split, from the train list alone."""
    input:
        train=list_file("train", images=False),
        code=code("classes", "lists", "runtime", "splits"),
    output:
        classes="results/{setting}/classes.csv",
    params:
        **stage_params("classes"),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{setting}/logs/classes.log",
    resources:
        attempt=job_attempt,
    script:
        "../scripts/classes.py"


rule image_cache:
    """Decode one split of a preloaded (small-image) dataset once, for every job to memory-map."""
    input:
        images=lambda wildcards: list_file(wildcards.split)(wildcards),
        code=code("image_cache", "data", "lists", "runtime"),
    output:
        cache="results/{setting}/cache/{split}.npy",
    params:
        **stage_params("image_cache"),
        root=image_root,
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{setting}/logs/image_cache_{split}.log",
    benchmark:
        "results/{setting}/benchmarks/image_cache_{split}.tsv"
    resources:
        attempt=job_attempt,
    script:
        "../scripts/image_cache.py"


# It writes one small file: on a cluster, not worth a job of its own.
localrules:
    resolved_config,


rule resolved_config:
    """A setting's merged config (defaults, dataset, variant), written beside its results."""
    input:
        code=code("resolved_config", "runtime"),
    output:
        config="results/{setting}/resolved_config.yaml",
    params:
        settings=setting_config,
    log:
        "results/{setting}/logs/resolved_config.log",
    resources:
        attempt=job_attempt,
    script:
        "../scripts/resolved_config.py"
