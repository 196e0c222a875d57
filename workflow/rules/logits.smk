rule logits:
    """Scores of one model on every image of one data split, in list order, as Parquet."""
    input:
        weights=model_file(None, paths.WEIGHTS),
        images=lambda wildcards: list_file(wildcards.split)(wildcards),
        cache=lambda wildcards: image_cache(wildcards.split)(wildcards),
        code=program_and_library("logits"),
    output:
        logits=paths.LOGITS,
    log:
        paths.log(paths.REPLICATE, "logits_{model}_{split}"),
    benchmark:
        paths.benchmark(paths.REPLICATE, "logits_{model}_{split}")
    # Train-split logits feed no later stage (they are outputs for the user): val and test
    # logits, on the way to the calibration and the report, go first.
    priority: lambda wildcards: -1 if wildcards.split == "train" else 0
    conda:
        "../envs/pytorch.yaml"
    threads: EXECUTION.logits_threads
    resources:
        gpu=GPUS_PER_JOB,
        attempt=job_attempt,
    params:
        **stage_params("logits"),
        root=image_root,
    script:
        "../scripts/logits.py"
