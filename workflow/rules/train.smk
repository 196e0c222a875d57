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
        weights="results/{setting}/seed{seed}/models/base/weights.pt",
        metrics="results/{setting}/seed{seed}/models/base/metrics.csv",
    params:
        **stage_params("train_base"),
        root=image_root,
        config_key=lambda wildcards: setting_key(wildcards.setting),  # names the setting in errors
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{setting}/seed{seed}/logs/train_base.log",
    benchmark:
        "results/{setting}/seed{seed}/benchmarks/train_base.tsv"
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
        classes=classes_table,
        base=model_file("base", "weights.pt"),
        code=code("train", *TRAIN_MODULES),
    output:
        weights="results/{setting}/seed{seed}/models/{expert}/weights.pt",
        metrics="results/{setting}/seed{seed}/models/{expert}/metrics.csv",
    params:
        **stage_params("train_expert"),
        root=image_root,
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{setting}/seed{seed}/logs/train_{expert}.log",
    benchmark:
        "results/{setting}/seed{seed}/benchmarks/train_{expert}.tsv"
    threads: EXECUTION.get("expert_threads", 1)
    resources:
        gpu=gpus_per_job(),
        attempt=job_attempt,
    # The many-shot expert trains on the most images (most of a long-tailed train set):
    # started first, it is not the last job to end while the other cores sit idle.
    priority: lambda wildcards: EXPERT_PRIORITY[wildcards.expert]
    script:
        "../scripts/train.py"


rule train_decoupled:
    """A decoupled classifier on the frozen base model (Kang et al. 2020): cRT re-trains it,
    LWS re-scales it per class; class-aware sampling, best val epoch kept."""
    input:
        train=list_file("train"),
        val=list_file("val"),
        train_cache=image_cache("train"),
        val_cache=image_cache("val"),
        base=model_file("base", "weights.pt"),
        code=code("train_decoupled", "decoupled", "logits", *TRAIN_MODULES),
    output:
        weights="results/{setting}/seed{seed}/models/{method}/weights.pt",
        metrics="results/{setting}/seed{seed}/models/{method}/metrics.csv",
    params:
        **stage_params("train_decoupled"),
        root=image_root,
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{setting}/seed{seed}/logs/train_{method}.log",
    benchmark:
        "results/{setting}/seed{seed}/benchmarks/train_{method}.tsv"
    threads: EXECUTION.get("expert_threads", 1)
    resources:
        gpu=gpus_per_job(),
        attempt=job_attempt,
    script:
        "../scripts/train_decoupled.py"
