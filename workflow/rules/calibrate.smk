rule calibrate:
    """Joint calibration of the three experts, fit on the validation logits only."""
    input:
        val=lambda wildcards: [logits_file(expert, "val")(wildcards) for expert in EXPERTS],
        code=program_and_library("calibrate"),
    output:
        calibration=paths.CALIBRATION,
        summary=paths.CALIBRATION_SUMMARY,
    log:
        paths.log(paths.REPLICATE, "calibrate"),
    benchmark:
        paths.benchmark(paths.REPLICATE, "calibrate")
    conda:
        "../envs/pytorch.yaml"
    resources:
        attempt=job_attempt,
    params:
        **stage_params("calibrate"),
    script:
        "../scripts/calibrate.py"
