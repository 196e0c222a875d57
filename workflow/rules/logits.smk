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


rule sade_test_time:
    """SADE's test-time aggregation (Zhang et al. 2022): on each shifted test set drawn from the
    test images, its experts' weights learned from two augmented views' prediction stability,
    without labels or the test prior; the aggregated accuracy, a row of test_shift.csv."""
    input:
        weights=model_file("sade", paths.WEIGHTS),
        images=list_file("test"),
        cache=image_cache("test"),
        train=list_file("train", images=False),  # its class counts
        code=program_and_library("sade_test_time"),
    output:
        table=paths.SADE_TEST_TIME,
    log:
        paths.log(paths.REPLICATE, "sade_test_time"),
    benchmark:
        paths.benchmark(paths.REPLICATE, "sade_test_time")
    conda:
        "../envs/pytorch.yaml"
    threads: EXECUTION.logits_threads
    resources:
        gpu=GPUS_PER_JOB,
        attempt=job_attempt,
    params:
        **stage_params("sade_test_time"),
        root=image_root,
    script:
        "../scripts/sade_test_time.py"
