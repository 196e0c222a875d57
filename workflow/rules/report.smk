rule train_crt:
    """cRT baseline: a fresh classifier on frozen base features, class-balanced sampling."""
    input:
        train=list_file("train"),
        val=list_file("val"),
        train_cache=image_cache("train"),
        val_cache=image_cache("val"),
        base="results/{dataset}/models/base/weights.pt",
        code=code("train_crt", "crt", "logits", *TRAIN_MODULES),
    output:
        weights="results/{dataset}/models/crt/weights.pt",
        metrics="results/{dataset}/models/crt/metrics.csv",
    params:
        train=section("crt"),
        input=section("input"),
        root=image_root,
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/train_crt.log",
    benchmark:
        "results/{dataset}/benchmarks/train_crt.tsv"
    threads: EXECUTION.get("expert_threads", 1)
    resources:
        gpu=gpus_per_job(),
        attempt=job_attempt,
    script:
        "../scripts/train_crt.py"


rule report:
    """Test accuracy (Many / Medium / Few / All), ECE and NLL of every method; tables and plots."""
    input:
        classes="results/{dataset}/classes.csv",
        base_val="results/{dataset}/logits/base/val.parquet",
        base_test="results/{dataset}/logits/base/test.parquet",
        base_weights="results/{dataset}/models/base/weights.pt",
        crt_test="results/{dataset}/logits/crt/test.parquet",
        experts=expand("results/{{dataset}}/logits/{expert}/test.parquet", expert=EXPERTS),
        calibration="results/{dataset}/calibration/calibration.pt",
        metrics=expand("results/{{dataset}}/models/{model}/metrics.csv", model=["base"] + EXPERTS + ["crt"]),
        code=code("report", "report", "baselines", "calibration", "logits", "metrics", "models", "plots",
                  "runtime", "splits"),
    output:
        report=report(
            "results/{dataset}/report.csv",
            caption="../report/report.rst",
            category="Results",
            labels={"dataset": "{dataset}", "table": "four-fold accuracy"},
        ),
        per_class=report(
            "results/{dataset}/per_class.csv",
            caption="../report/per_class.rst",
            category="Results",
            labels={"dataset": "{dataset}", "table": "per-class accuracy"},
        ),
        split_counts=report(
            "results/{dataset}/split_counts.csv",
            caption="../report/split_counts.rst",
            category="Results",
            labels={"dataset": "{dataset}", "table": "class splits"},
        ),
        predictions="results/{dataset}/predictions/test.parquet",
        info="results/{dataset}/report_info.json",
        per_class_plot=report(
            "results/{dataset}/plots/per_class_accuracy.png",
            caption="../report/per_class_plot.rst",
            category="Plots",
            labels={"dataset": "{dataset}", "plot": "per-class accuracy"},
        ),
        reliability_plot=report(
            "results/{dataset}/plots/reliability.png",
            caption="../report/reliability.rst",
            category="Plots",
            labels={"dataset": "{dataset}", "plot": "reliability"},
        ),
        training_plot=report(
            "results/{dataset}/plots/training_curves.png",
            caption="../report/training_curves.rst",
            category="Plots",
            labels={"dataset": "{dataset}", "plot": "training curves"},
        ),
        long_tail_plot=report(
            "results/{dataset}/plots/long_tail.png",
            caption="../report/long_tail.rst",
            category="Plots",
            labels={"dataset": "{dataset}", "plot": "long-tail profile"},
        ),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/report.log",
    resources:
        attempt=job_attempt,
    script:
        "../scripts/report.py"
