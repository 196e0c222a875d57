rule logits:
    """Scores of one model on every image of one data split, in list order, as Parquet."""
    input:
        weights="results/{dataset}/models/{model}/weights.pt",
        images=lambda wildcards: list_file(wildcards.split)(wildcards),
        cache=lambda wildcards: image_cache(wildcards.split)(wildcards),
        code=code("logits", "data", "lists", "logits", "models", "runtime"),
    output:
        logits="results/{dataset}/logits/{model}/{split}.parquet",
    params:
        input=section("input"),
        root=image_root,
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/logits_{model}_{split}.log",
    benchmark:
        "results/{dataset}/benchmarks/logits_{model}_{split}.tsv"
    threads: EXECUTION.get("logits_threads", 1)
    resources:
        gpu=gpus_per_job(),
    script:
        "../scripts/logits.py"
