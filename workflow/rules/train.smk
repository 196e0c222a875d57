rule train_base:
    """The generalist: plain cross-entropy over all classes on the whole long-tailed set."""
    input:
        train=list_file("train"),
        val=list_file("val"),
        train_cache=image_cache("train"),
        val_cache=image_cache("val"),
        pretrained=pretrained_weights,
        code=program_and_library("train"),
    output:
        weights=pattern(paths.WEIGHTS, model="base"),
        metrics=pattern(paths.METRICS, model="base"),
    log:
        paths.log(paths.REPLICATE, "train_base"),
    benchmark:
        paths.benchmark(paths.REPLICATE, "train_base")
    conda:
        "../envs/pytorch.yaml"
    threads: EXECUTION.train_threads
    resources:
        gpu=GPUS_PER_JOB,
        attempt=job_attempt,
    params:
        **stage_params("train_base"),
        root=image_root,
        config_key=lambda wildcards: setting_key(wildcards.setting),  # names the setting in errors
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
        base=model_file("base", paths.WEIGHTS),
        code=program_and_library("train"),
    output:
        weights=pattern(paths.WEIGHTS, model="{expert}"),
        metrics=pattern(paths.METRICS, model="{expert}"),
    log:
        paths.log(paths.REPLICATE, "train_{expert}"),
    benchmark:
        paths.benchmark(paths.REPLICATE, "train_{expert}")
    # In the order of EXPERTS: the many-shot expert trains on the most images (most of a
    # long-tailed train set): started first, it is not the last job to end while the other
    # cores sit idle.
    priority: lambda wildcards: len(EXPERTS) - 1 - EXPERTS.index(wildcards.expert)
    conda:
        "../envs/pytorch.yaml"
    threads: EXECUTION.expert_threads
    resources:
        gpu=GPUS_PER_JOB,
        attempt=job_attempt,
    params:
        **stage_params("train_expert"),
        root=image_root,
        config_key=lambda wildcards: setting_key(wildcards.setting),  # names the setting in warnings
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
        base=model_file("base", paths.WEIGHTS),
        code=program_and_library("train_decoupled"),
    output:
        weights=pattern(paths.WEIGHTS, model="{method}"),
        metrics=pattern(paths.METRICS, model="{method}"),
    log:
        paths.log(paths.REPLICATE, "train_{method}"),
    benchmark:
        paths.benchmark(paths.REPLICATE, "train_{method}")
    conda:
        "../envs/pytorch.yaml"
    threads: EXECUTION.expert_threads
    resources:
        gpu=GPUS_PER_JOB,
        attempt=job_attempt,
    params:
        **stage_params("train_decoupled"),
        root=image_root,
    script:
        "../scripts/train_decoupled.py"


rule train_peer:
    """A peer method (balanced_experts.peers: Balanced Softmax, LDAM-DRW) trained like the base
    model (its recipe, seed, backbone and pretrained trunk) with the method's loss and head."""
    input:
        train=list_file("train"),
        val=list_file("val"),
        train_cache=image_cache("train"),
        val_cache=image_cache("val"),
        pretrained=pretrained_weights,
        code=program_and_library("train_peer"),
    output:
        weights=pattern(paths.WEIGHTS, model="{peer}"),
        metrics=pattern(paths.METRICS, model="{peer}"),
    log:
        paths.log(paths.REPLICATE, "train_{peer}"),
    benchmark:
        paths.benchmark(paths.REPLICATE, "train_{peer}")
    # Every expert and baseline waits for the base model, only the report for a peer: the
    # base model starts first (else two peers took both cores of the default run first).
    priority: -1
    conda:
        "../envs/pytorch.yaml"
    # It needs no base model: on a CPU it trains side by side with the experts, as they do.
    threads: EXECUTION.expert_threads
    resources:
        gpu=GPUS_PER_JOB,
        attempt=job_attempt,
    params:
        **stage_params("train_peer"),
        root=image_root,
        config_key=lambda wildcards: setting_key(wildcards.setting),  # names the setting in errors
    script:
        "../scripts/train_peer.py"
