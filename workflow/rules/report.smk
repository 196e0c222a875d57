rule report:
    """One replicate's test accuracy (Many / Medium / Few / All), ECE and NLL of every method."""
    input:
        classes=classes_table,
        base_val=logits_file("base", "val"),
        base_test=logits_file("base", "test"),
        base_weights=model_file("base", "weights.pt"),
        decoupled=lambda wildcards: [logits_file(method, "test")(wildcards) for method in DECOUPLED_METHODS],
        experts=lambda wildcards: [logits_file(expert, "test")(wildcards) for expert in EXPERTS],
        calibration=lambda wildcards: f"{folder(wildcards, 'calibrate')}/calibration/calibration.pt",
        metrics=lambda wildcards: [model_file(model, "metrics.csv")(wildcards) for model in MODELS],
        code=code("report"),
    output:
        report="results/{setting}/seed{seed}/report.csv",
        per_class="results/{setting}/seed{seed}/per_class.csv",
        predictions="results/{setting}/seed{seed}/predictions/test.parquet",
        info="results/{setting}/seed{seed}/report_info.json",
        test_shift="results/{setting}/seed{seed}/test_shift.csv",
        per_class_plot="results/{setting}/seed{seed}/plots/per_class_accuracy.png",
        reliability_plot="results/{setting}/seed{seed}/plots/reliability.png",
        training_plot="results/{setting}/seed{seed}/plots/training_curves.png",
    log:
        "results/{setting}/seed{seed}/logs/report.log",
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    script:
        "../scripts/report.py"


rule aggregate:
    """A setting's report over its seeds: mean and std per method and fold, and plots of the
    spread; its merged config beside it."""
    input:
        # metrics_<model>: that model's metrics.csv of every replicate, in the order of `seeds`.
        **{f"metrics_{model}": model_file_of_every_replicate(model, "metrics.csv") for model in MODELS},
        reports=replicate_files("report.csv"),
        per_class=replicate_files("per_class.csv"),
        predictions=replicate_files("predictions/test.parquet"),
        test_shift=replicate_files("test_shift.csv"),
        classes=classes_table,
        config="results/{setting}/resolved_config.yaml",
        code=code("aggregate"),
    output:
        report=report(
            "results/{setting}/report.csv",
            caption="../report/report.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "four-fold accuracy, mean over seeds"},
        ),
        seeds=report(
            "results/{setting}/report_seeds.csv",
            caption="../report/report_seeds.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "four-fold accuracy of every seed"},
        ),
        per_class=report(
            "results/{setting}/per_class.csv",
            caption="../report/per_class.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "per-class accuracy"},
        ),
        split_counts=report(
            "results/{setting}/split_counts.csv",
            caption="../report/split_counts.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "class splits"},
        ),
        test_shift=report(
            "results/{setting}/test_shift.csv",
            caption="../report/test_shift.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "shifted test distributions, mean over seeds"},
        ),
        four_fold_plot=report(
            "results/{setting}/plots/four_fold.png",
            caption="../report/four_fold.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "four-fold accuracy"},
        ),
        per_class_plot=report(
            "results/{setting}/plots/per_class_accuracy.png",
            caption="../report/per_class_plot.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "per-class accuracy"},
        ),
        reliability_plot=report(
            "results/{setting}/plots/reliability.png",
            caption="../report/reliability.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "reliability"},
        ),
        training_plot=report(
            "results/{setting}/plots/training_curves.png",
            caption="../report/training_curves.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "training curves"},
        ),
        long_tail_plot=report(
            "results/{setting}/plots/long_tail.png",
            caption="../report/long_tail.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "long-tail profile"},
        ),
        test_shift_plot=report(
            "results/{setting}/plots/test_shift.png",
            caption="../report/test_shift_plot.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "shifted test distributions"},
        ),
    log:
        "results/{setting}/logs/aggregate.log",
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        seeds=lambda wildcards: EXPERIMENTS.seeds(wildcards.setting),
    script:
        "../scripts/aggregate.py"


rule compare:
    """A dataset's main settings and every variant side by side: mean and std per method and fold."""
    input:
        reports=lambda wildcards: [
            f"results/{setting}/report.csv"
            for setting in [wildcards.dataset, *EXPERIMENTS.variants(wildcards.dataset)]
        ],
        code=code("compare"),
    output:
        comparison=report(
            "results/{dataset}/comparison.csv",
            caption="../report/comparison.rst",
            category="Comparison",
            labels={"dataset": "{dataset}", "table": "main settings and variants"},
        ),
        plot=report(
            "results/{dataset}/plots/comparison.png",
            caption="../report/comparison_plot.rst",
            category="Comparison",
            labels={"dataset": "{dataset}", "plot": "main settings and variants"},
        ),
    log:
        "results/{dataset}/logs/compare.log",
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        settings=lambda wildcards: ["main", *(parse_setting(s)[1] for s in EXPERIMENTS.variants(wildcards.dataset))],
    script:
        "../scripts/compare.py"
