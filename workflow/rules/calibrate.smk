rule calibrate:
    """Joint calibration of the three experts, fit on the validation logits only."""
    input:
        val=expand("results/{{dataset}}/logits/{expert}/val.parquet", expert=EXPERTS),
        code=code("calibrate", "calibration", "logits", "runtime"),
    output:
        calibration="results/{dataset}/calibration/calibration.pt",
        summary="results/{dataset}/calibration/summary.json",
    params:
        calibration=section("calibration"),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/calibrate.log",
    benchmark:
        "results/{dataset}/benchmarks/calibrate.tsv"
    resources:
        attempt=job_attempt,
    script:
        "../scripts/calibrate.py"
