rule logits:
    """Scores of one model on every image of one data split, in list order, as Parquet."""
    input:
        weights=model_file(None, "weights.pt"),
        images=lambda wildcards: list_file(wildcards.split)(wildcards),
        cache=lambda wildcards: image_cache(wildcards.split)(wildcards),
        code=code("logits", "data", "lists", "logits", "models", "runtime"),
    output:
        logits="results/{setting}/seed{seed}/logits/{model}/{split}.parquet",
    params:
        **stage_params("logits"),
        root=image_root,
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{setting}/seed{seed}/logs/logits_{model}_{split}.log",
    benchmark:
        "results/{setting}/seed{seed}/benchmarks/logits_{model}_{split}.tsv"
    threads: EXECUTION.get("logits_threads", 1)
    resources:
        gpu=gpus_per_job(),
        attempt=job_attempt,
    # Train-split logits feed no later stage (they are outputs for the user): val and test
    # logits, on the way to the calibration and the report, go first.
    priority: lambda wildcards: -1 if wildcards.split == "train" else 0
    script:
        "../scripts/logits.py"
