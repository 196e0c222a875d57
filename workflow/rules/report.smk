rule report:
    """One replicate's test accuracy (Many / Medium / Few / All), ECE and NLL of every method."""
    input:
        classes=classes_table,
        base_val=logits_file("base", "val"),
        base_test=logits_file("base", "test"),
        base_weights=model_file("base", paths.WEIGHTS),
        decoupled=lambda wildcards: [logits_file(method, "test")(wildcards) for method in DECOUPLED_METHODS],
        experts=lambda wildcards: [logits_file(expert, "test")(wildcards) for expert in EXPERTS],
        peers=peer_logits("test"),
        sade_test_time=sade_test_time_table,
        calibration=calibration_file,
        metrics=metrics_of_every_model,
        code=program_and_library("report"),
    output:
        report=paths.REPLICATE_REPORT,
        per_class=paths.REPLICATE_PER_CLASS,
        predictions=paths.REPLICATE_PREDICTIONS,
        info=paths.REPLICATE_REPORT_INFO,
        test_shift=paths.REPLICATE_TEST_SHIFT,
        per_class_plot=paths.REPLICATE_PER_CLASS_PLOT,
        reliability_plot=paths.REPLICATE_RELIABILITY_PLOT,
        training_plot=paths.REPLICATE_TRAINING_PLOT,
    log:
        paths.log(paths.REPLICATE, "report"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    script:
        "../scripts/report.py"


rule aggregate:
    """A setting's report over its seeds: mean and std per method and fold, as CSV and as a
    paper's table (Markdown, LaTeX), and plots of the spread; its merged config beside it."""
    input:
        unpack(metrics_of_every_model_and_replicate),
        reports=replicate_files(paths.REPLICATE_REPORT),
        per_class=replicate_files(paths.REPLICATE_PER_CLASS),
        predictions=replicate_files(paths.REPLICATE_PREDICTIONS),
        test_shift=replicate_files(paths.REPLICATE_TEST_SHIFT),
        classes=classes_table,
        config=paths.RESOLVED_CONFIG,
        code=program_and_library("aggregate"),
    output:
        report=report(
            paths.REPORT,
            caption="../report/report.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "four-fold accuracy, mean over seeds"},
        ),
        seeds=report(
            paths.REPORT_SEEDS,
            caption="../report/report_seeds.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "four-fold accuracy of every seed"},
        ),
        report_md=paths.REPORT_MD,
        report_tex=paths.REPORT_TEX,
        per_class=report(
            paths.PER_CLASS,
            caption="../report/per_class.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "per-class accuracy"},
        ),
        split_counts=report(
            paths.SPLIT_COUNTS,
            caption="../report/split_counts.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "class splits"},
        ),
        test_shift=report(
            paths.TEST_SHIFT,
            caption="../report/test_shift.rst",
            category="Results",
            labels={"setting": "{setting}", "table": "shifted test distributions, mean over seeds"},
        ),
        four_fold_plot=report(
            paths.FOUR_FOLD_PLOT,
            caption="../report/four_fold.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "four-fold accuracy"},
        ),
        per_class_plot=report(
            paths.PER_CLASS_PLOT,
            caption="../report/per_class_plot.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "per-class accuracy"},
        ),
        reliability_plot=report(
            paths.RELIABILITY_PLOT,
            caption="../report/reliability.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "reliability"},
        ),
        training_plot=report(
            paths.TRAINING_PLOT,
            caption="../report/training_curves.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "training curves"},
        ),
        long_tail_plot=report(
            paths.LONG_TAIL_PLOT,
            caption="../report/long_tail.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "long-tail profile"},
        ),
        test_shift_plot=report(
            paths.TEST_SHIFT_PLOT,
            caption="../report/test_shift_plot.rst",
            category="Plots",
            labels={"setting": "{setting}", "plot": "shifted test distributions"},
        ),
    log:
        paths.log(paths.SETTING, "aggregate"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        seeds=lambda wildcards: EXPERIMENTS.seeds(wildcards.setting),
    script:
        "../scripts/aggregate.py"


rule summary:
    """The main settings of several datasets side by side, as a paper's table (Markdown and
    LaTeX): config `summary.datasets` (default: `default_datasets`), `summary.columns` of each."""
    input:
        reports=summary_reports,
        code=program_and_library("summary"),
    output:
        markdown=paths.SUMMARY_MD,
        latex=paths.SUMMARY_TEX,
    log:
        paths.log(paths.RESULTS, "summary"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        datasets=SUMMARY_DATASETS,
        columns=config.get("summary", {}).get("columns"),
    script:
        "../scripts/summary.py"


rule compare:
    """A dataset's main settings and every variant side by side: mean and std per method and fold."""
    input:
        reports=lambda wildcards: [
            paths.REPORT.format(setting=setting)
            for setting in [wildcards.dataset, *EXPERIMENTS.variants(wildcards.dataset)]
        ],
        code=program_and_library("compare"),
    output:
        comparison=report(
            paths.COMPARISON,
            caption="../report/comparison.rst",
            category="Comparison",
            labels={"dataset": "{dataset}", "table": "main settings and variants"},
        ),
        plot=report(
            paths.COMPARISON_PLOT,
            caption="../report/comparison_plot.rst",
            category="Comparison",
            labels={"dataset": "{dataset}", "plot": "main settings and variants"},
        ),
    log:
        paths.log(paths.DATASET, "compare"),
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        settings=lambda wildcards: ["main", *(parse_setting(s)[1] for s in EXPERIMENTS.variants(wildcards.dataset))],
    script:
        "../scripts/compare.py"
