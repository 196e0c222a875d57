rule synthetic_data:
    """Generate the embedded long-tailed dataset: PNG images plus train/val/test lists."""
    input:
        code=code("synthetic_data", "synthetic", "lists", "runtime"),
    output:
        train="results/{dataset}/data/train.txt",
        val="results/{dataset}/data/val.txt",
        test="results/{dataset}/data/test.txt",
    params:
        synthetic=section("data", "synthetic"),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/synthetic_data.log",
    script:
        "../scripts/synthetic_data.py"


rule classes:
    """Per-class training counts and the many/medium/few split, from the train list alone."""
    input:
        train=list_file("train"),
        code=code("classes", "lists", "runtime", "splits"),
    output:
        classes="results/{dataset}/classes.csv",
    params:
        class_splits=section("class_splits"),
    conda:
        "../envs/pytorch.yaml"
    log:
        "results/{dataset}/logs/classes.log",
    script:
        "../scripts/classes.py"
