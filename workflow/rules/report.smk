rule report:
    """Four-fold test accuracy (Many / Medium / Few / All) of every method."""
    input:
        classes="results/{dataset}/classes.csv",
        base="results/{dataset}/logits/base/test.parquet",
        experts=expand("results/{{dataset}}/logits/{expert}/test.parquet", expert=EXPERTS),
        calibration="results/{dataset}/calibration/calibration.pt",
        code=code("report", "report", "calibration", "logits", "metrics", "splits"),
    output:
        report="results/{dataset}/report.csv",
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/report.log",
    script:
        "../scripts/report.py"
