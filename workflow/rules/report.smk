rule report:
    """Test accuracy (Many / Medium / Few / All), ECE and NLL of every method; tables and plots."""
    input:
        classes="results/{dataset}/classes.csv",
        base_val="results/{dataset}/logits/base/val.parquet",
        base_test="results/{dataset}/logits/base/test.parquet",
        base_weights="results/{dataset}/models/base/weights.pt",
        decoupled=expand("results/{{dataset}}/logits/{method}/test.parquet", method=DECOUPLED),
        experts=expand("results/{{dataset}}/logits/{expert}/test.parquet", expert=EXPERTS),
        calibration="results/{dataset}/calibration/calibration.pt",
        metrics=expand("results/{{dataset}}/models/{model}/metrics.csv", model=MODELS),
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
    script:
        "../scripts/report.py"
