"""Bad input, killed jobs and reruns through real Snakemake runs: clear errors, intact results."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from balanced_experts.synthetic import SyntheticSpec, generate
from conftest import (RERUN_MODELS, TINY_DATASET, copy_workflow, digests, last_attempt, replace_line, snakemake,
                      tiny_config, write_config)

pytestmark = pytest.mark.slow

BASE_WEIGHTS = "results/tiny/seed0/models/base/weights.pt"
CLASSES = "results/tiny/classes.csv"


def error_lines(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


# -- config errors, at parse time ----------------------------------------------------------

def _set(path: str, value):
    def edit(config):
        *parents, key = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[key] = value
    return edit


CONFIG_ERRORS = {
    "unknown key": (_set("datasets.tiny.base.lrr", 0.1),
                    "datasets.tiny.base: unknown key 'lrr'; allowed: epochs, batch_size, lr,"),
    "wrong type": (_set("datasets.tiny.base.epochs", "3"),
                   "datasets.tiny.base.epochs: '3' is a str; expected integer"),
    "negative lr": (_set("datasets.tiny.experts.few.lr", -0.01),
                    "datasets.tiny.experts.few.lr: -0.01 is out of range; must be > 0"),
    "thresholds in the wrong order": (
        _set("datasets.tiny.class_splits.few_threshold", 30),
        "datasets.tiny.class_splits: few_threshold (30) must not exceed many_threshold (24)"),
    "unknown backbone": (_set("datasets.tiny.backbone.name", "resnet11"),
                         "datasets.tiny.backbone.name: 'resnet11' is not allowed; allowed: resnet_cifar8,"),
    "open_ratio below 1": (_set("datasets.tiny.experts.medium.open_ratio", 0.5),
                           "datasets.tiny.experts.medium.open_ratio: 0.5 is out of range; must be >= 1"),
    "missing expert": (lambda c: c["datasets"]["tiny"]["experts"].pop("few"),
                       "datasets.tiny.experts: missing required key 'few'"),
    "unknown device": (_set("execution.device", "gpu"),
                       "execution.device: 'gpu' is not allowed; allowed: auto, cpu, cuda or cuda:N"),
    # Keys of the merged settings are named in the layer that set them.
    "inherited from defaults": (_set("defaults", {"base": {"momentum": 2}}),
                                "defaults.base.momentum: 2 is out of range; must be <= 1"),
    "in a variant": (_set("datasets.tiny.variants", {"v1": {"experts": {"few": {"lr": -1}}}}),
                     "datasets.tiny.variants.v1.experts.few.lr: -1 is out of range; must be > 0"),
    "variant changing the data": (
        _set("datasets.tiny.variants", {"v1": {"data": {"kind": "lists"}}}),
        "datasets.tiny.variants.v1.data: a variant cannot change 'data'"),
    "unknown frozen_bn": (_set("datasets.tiny.experts.few.frozen_bn", "frozen"),
                          "datasets.tiny.experts.few.frozen_bn: 'frozen' is not allowed; allowed: train, eval"),
    "fc layer of a model without one": (
        lambda c: (_set("datasets.tiny.backbone.embed_dim", None)(c),
                   _set("datasets.tiny.experts.medium.num_learnable", 2)(c)),
        "datasets.tiny.experts.medium.num_learnable: 2 adds the fc layer, and backbone.embed_dim is null"),
    "cached features in train mode": (
        lambda c: c["datasets"]["tiny"]["lws"].update(features="cached", frozen_bn="train"),
        "datasets.tiny.lws.frozen_bn: 'train' needs features: images"),
}


@pytest.fixture(scope="module")
def finished_run(tiny_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("config_errors") / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    return workdir


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_error_is_one_line_naming_the_key(finished_run, case):
    edit, expected = CONFIG_ERRORS[case]
    before = digests(finished_run)
    config = tiny_config()
    edit(config)
    write_config(finished_run, config)
    try:
        result = snakemake(finished_run, "--cores", "1", check=False)
    finally:
        write_config(finished_run, tiny_config())
    assert result.returncode != 0
    assert f"invalid config: {expected}" in result.stderr
    assert "Traceback" not in result.stderr and "jsonschema" not in result.stderr
    assert "rule " not in result.stdout  # stopped before any job was planned
    assert digests(finished_run) == before


# -- bad data, on a `lists` dataset made of real image files -------------------------------

@pytest.fixture(scope="module")
def lists_run(tmp_path_factory) -> Path:
    """A `lists` dataset (the tiny synthetic images) with its classes and base model built."""
    top = tmp_path_factory.mktemp("lists_run")
    data = top / "data"
    generate(SyntheticSpec(**TINY_DATASET["data"]["synthetic"]), data, log=lambda _: None)
    workdir = copy_workflow(top / "run", lists_config(data))
    snakemake(workdir, "--cores", "1", BASE_WEIGHTS, CLASSES)
    return top


def lists_config(data: Path) -> dict:
    config = tiny_config()
    config["datasets"]["tiny"]["data"] = {
        "kind": "lists", "root": str(data), "train_list": str(data / "train.txt"),
        "val_list": str(data / "val.txt"), "test_list": str(data / "test.txt")}
    return config


@pytest.fixture
def lists_copy(lists_run, tmp_path) -> tuple[Path, Path]:
    """``(workdir, data)``: a private copy of the lists run, to break."""
    shutil.copytree(lists_run, tmp_path / "copy", symlinks=True)
    data, workdir = tmp_path / "copy/data", tmp_path / "copy/run"
    write_config(workdir, lists_config(data))  # point at the copied images and lists
    snakemake(workdir, "--cores", "1", "--touch", BASE_WEIGHTS, CLASSES)  # the copy is up to date
    return workdir, data


def _line_of(list_file: Path, rel: str) -> int:
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if line.startswith(rel + " "):
            return number
    raise AssertionError(rel)


def test_missing_test_image_names_file_and_line(lists_copy):
    workdir, data = lists_copy
    rel = "images/test/005/00003.png"
    (data / rel).unlink()
    before = digests(workdir)
    result = snakemake(workdir, "--cores", "1", "results/tiny/seed0/logits/base/test.parquet", check=False)
    assert result.returncode != 0
    line = _line_of(data / "test.txt", rel)
    # Found while the DAG is built, before any job starts (tests/test_user_faults.py).
    assert f"{data / 'test.txt'}:{line}: image {data / rel} does not exist" in error_lines(result)
    assert digests(workdir) == before


def test_corrupt_training_image_names_file_and_line(lists_copy):
    workdir, data = lists_copy
    rel = "images/train/006/00001.png"
    (data / rel).write_bytes(b"not a png")
    # Preloaded datasets read a decoded snapshot of the images (results/<dataset>/cache/);
    # the job that (re)builds it is the one that meets the corrupt file.
    (workdir / "results/tiny/cache/train.npy").unlink()
    result = snakemake(workdir, "--cores", "1", "results/tiny/seed0/models/few/weights.pt", check=False)
    assert result.returncode != 0
    line = _line_of(data / "train.txt", rel)
    message = f"error: cannot read image {data / rel} ({data / 'train.txt'}, line {line}): cannot identify image file"
    assert message in error_lines(result)
    assert message in (workdir / "results/tiny/logs/image_cache_train.log").read_text()
    assert "Traceback" not in result.stderr
    assert not list((workdir / "results/tiny/cache").glob("*.tmp*"))


def test_label_out_of_range_names_the_line(lists_copy):
    workdir, data = lists_copy
    replace_line(data / "test.txt", 7, "images/test/000/00006.png 8")
    before = digests(workdir)
    result = snakemake(workdir, "--cores", "1", "results/tiny/seed0/logits/base/test.parquet", check=False)
    assert result.returncode != 0
    assert f"{data / 'test.txt'}:7: label 8 is out of range 0..7" in error_lines(result)
    assert digests(workdir) == before


def test_class_without_training_images_is_named(lists_copy):
    workdir, data = lists_copy
    train = data / "train.txt"
    train.write_text("".join(line + "\n" for line in train.read_text().splitlines() if not line.endswith(" 3")))
    result = snakemake(workdir, "--cores", "1", CLASSES, check=False)
    assert result.returncode != 0
    assert f"{train}: no entries for class ids 3; labels must cover 0..7" in error_lines(result)
    assert (workdir / BASE_WEIGHTS).exists()


def test_empty_split_stops_before_any_expert(lists_copy):
    workdir, data = lists_copy
    config = lists_config(data)
    config["datasets"]["tiny"]["class_splits"]["few_threshold"] = 4  # counts are 48 .. 4: few < 4 is empty
    write_config(workdir, config)
    weights = (workdir / BASE_WEIGHTS).read_bytes()
    result = snakemake(workdir, "--cores", "1", "results/tiny/report.csv", check=False)
    assert result.returncode != 0
    assert ("class_splits leave the few-shot split empty: training counts range from 4 to 48, "
            "and the rule is many > 24, few < 4") in error_lines(result)
    assert not list(workdir.glob("results/tiny/seed0/models/many/weights.pt"))
    assert (workdir / BASE_WEIGHTS).read_bytes() == weights


def test_diverging_training_names_model_and_epoch(lists_copy):
    workdir, data = lists_copy
    config = lists_config(data)
    config["datasets"]["tiny"]["experts"]["many"]["lr"] = 1.0e12
    write_config(workdir, config)
    before = digests(workdir)
    result = snakemake(workdir, "--cores", "1", "results/tiny/seed0/models/many/weights.pt", check=False)
    assert result.returncode != 0
    assert "error: many: training loss is nan at epoch 1" in error_lines(result) or \
        "error: many: training loss is inf at epoch 1" in error_lines(result)
    assert digests(workdir) == before


# -- a killed training job resumes --------------------------------------------------------

EPOCHS = 60  # long enough to kill it after the first epoch, short enough for the suite


def _long_base(data: Path) -> dict:
    config = lists_config(data)
    config["datasets"]["tiny"]["base"]["epochs"] = EPOCHS
    return config


def test_killed_training_resumes_to_the_same_weights(lists_run, tmp_path):
    reference = tmp_path / "reference"
    killed = tmp_path / "killed"
    for workdir in (reference, killed):
        shutil.copytree(lists_run / "run", workdir, symlinks=True)
        write_config(workdir, _long_base(lists_run / "data"))
    snakemake(reference, "--cores", "1", BASE_WEIGHTS)

    exe = Path(sys.executable).with_name("snakemake")
    resume = killed / "results/tiny/seed0/models/base/resume.pt"
    resume.unlink(missing_ok=True)  # the 2-epoch run's, kept until a job reads its weights
    job = subprocess.Popen([str(exe), "--cores", "1", BASE_WEIGHTS], cwd=killed, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not resume.exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert resume.exists(), "training ended before it could be killed"
    assert not (killed / BASE_WEIGHTS).exists()

    # Snakemake's lock outlives a SIGKILL; --unlock is the documented step before rerunning.
    snakemake(killed, "--unlock")
    snakemake(killed, "--cores", "1", BASE_WEIGHTS)
    log = last_attempt((killed / "results/tiny/seed0/logs/train_base.log").read_text())
    assert "base: resuming from epoch " in log
    resumed_from = int(log.split("base: resuming from epoch ")[1].split()[0])
    assert 1 <= resumed_from < EPOCHS
    assert f"base epoch {resumed_from + 1}/{EPOCHS}" in log and f"base epoch {resumed_from}/{EPOCHS}" not in log

    expected = torch.load(reference / BASE_WEIGHTS, weights_only=True)
    actual = torch.load(killed / BASE_WEIGHTS, weights_only=True)
    assert actual["meta"] == expected["meta"]
    for key, value in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][key], value), key
    metrics = (killed / "results/tiny/seed0/models/base/metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in metrics[1:]] == [str(e) for e in range(1, EPOCHS + 1)]


# -- determinism ---------------------------------------------------------------------------

def test_models_trained_again_from_scratch_reproduce_every_file(tiny_run, rerun_models):
    """Four models of four kinds trained again in new processes (conftest.RERUN_MODELS), and
    every job after them: every file under results/ is the same to the byte (weights, logits,
    calibration, tables, plots), but for the timings: the benchmarks and metrics.csv's
    per-epoch seconds. (The base model's training is reproduced by the kill-and-resume test.)"""
    import pandas as pd

    before, after = digests(tiny_run), digests(rerun_models)
    assert before.keys() == after.keys()
    differ = {path for path in before if before[path] != after[path]}
    timings = {path for path in differ if "benchmarks" in Path(path).parts}
    # The benchmarks of every job that ran again, so that this test sees the reruns happen.
    assert {f"tiny/seed0/benchmarks/train_{name}.tsv" for name in RERUN_MODELS} <= timings
    assert {f"tiny/seed0/benchmarks/logits_{name}_test.tsv" for name in RERUN_MODELS} <= timings
    metrics = {f"tiny/seed0/models/{name}/metrics.csv" for name in RERUN_MODELS}
    assert differ - timings == metrics
    for path in metrics:
        one, two = (pd.read_csv(run / "results" / path) for run in (tiny_run, rerun_models))
        assert one.drop(columns="seconds").equals(two.drop(columns="seconds")), path
