rule calibrate:
    """Joint calibration of the three experts, fit on the validation logits only."""
    input:
        val=lambda wildcards: [logits_file(expert, "val")(wildcards) for expert in EXPERTS],
        code=code("calibrate", "calibration", "logits", "runtime"),
    output:
        calibration="results/{setting}/seed{seed}/calibration/calibration.pt",
        summary="results/{setting}/seed{seed}/calibration/summary.json",
    params:
        **stage_params("calibrate"),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{setting}/seed{seed}/logs/calibrate.log",
    benchmark:
        "results/{setting}/seed{seed}/benchmarks/calibrate.tsv"
    resources:
        attempt=job_attempt,
    script:
        "../scripts/calibrate.py"
