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
        classes="results/{dataset}/classes.csv",
    params:
        class_splits=section("class_splits"),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/classes.log",
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
        cache="results/{dataset}/cache/{split}.npy",
    params:
        size=section("input", "size"),
        root=image_root,
    wildcard_constraints:
        dataset=preloaded_datasets(),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/image_cache_{split}.log",
    benchmark:
        "results/{dataset}/benchmarks/image_cache_{split}.tsv"
    resources:
        attempt=job_attempt,
    script:
        "../scripts/image_cache.py"
