# Library modules a training job runs (see `code` in common.smk).
TRAIN_MODULES = ("data", "experts", "lists", "models", "pretrained", "runtime", "splits", "training")


rule train_base:
    """The generalist: plain cross-entropy over all classes on the whole long-tailed set."""
    input:
        train=list_file("train"),
        val=list_file("val"),
        train_cache=image_cache("train"),
        val_cache=image_cache("val"),
        pretrained=pretrained_weights,
        code=code("train", *TRAIN_MODULES),
    output:
        weights="results/{dataset}/models/base/weights.pt",
        metrics="results/{dataset}/models/base/metrics.csv",
    params:
        train=section("base"),
        backbone=section("backbone"),
        input=section("input"),
        root=image_root,
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/train_base.log",
    benchmark:
        "results/{dataset}/benchmarks/train_base.tsv"
    threads: EXECUTION.get("train_threads", 2)
    resources:
        gpu=gpus_per_job(),
        attempt=job_attempt,
    script:
        "../scripts/train.py"


rule train_expert:
    """A (k+1)-way expert for one class split, fine-tuned from the base model."""
    input:
        train=list_file("train"),
        val=list_file("val"),
        train_cache=image_cache("train"),
        val_cache=image_cache("val"),
        classes="results/{dataset}/classes.csv",
        base="results/{dataset}/models/base/weights.pt",
        code=code("train", *TRAIN_MODULES),
    output:
        weights="results/{dataset}/models/{expert}/weights.pt",
        metrics="results/{dataset}/models/{expert}/metrics.csv",
    params:
        train=lambda wildcards: dataset_config(wildcards)["experts"][wildcards.expert],
        input=section("input"),
        root=image_root,
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/train_{expert}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_{expert}.tsv"
    threads: EXECUTION.get("expert_threads", 1)
    resources:
        gpu=gpus_per_job(),
        attempt=job_attempt,
    # The many-shot expert trains on the most images (most of a long-tailed train set):
    # started first, it is not the last job to end while the other cores sit idle.
    priority: lambda wildcards: EXPERT_PRIORITY[wildcards.expert]
    script:
        "../scripts/train.py"
