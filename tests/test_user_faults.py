"""What a user can get wrong, through real Snakemake runs on copies of the finished tiny run:
each stops with one line that names the file, folder or config key, and leaves the results
alone. A broken list behind finished results, a listed image that does not exist, the
Slurm profile without its plugin, a read-only results folder, a YAML 1.1 number, an
expert's reject sample too small to teach it."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import (REPO, copy_run, copy_workflow, digests, planned_jobs, replace_line, snakemake, tiny_config,
                      write_config)

pytestmark = pytest.mark.slow

BASE_WEIGHTS = "results/tiny/seed0/models/base/weights.pt"


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """What Snakemake printed after it began to build the DAG (its header before is no error)."""
    lines = result.stderr.splitlines()
    start = max((i + 1 for i, line in enumerate(lines) if line == "Building DAG of jobs..."), default=0)
    return lines[start:]


# -- a finished run of a `lists` dataset whose images are files -------------------------------

def lists_config() -> dict:
    """The tiny dataset as a user's files under data/tiny/ (paths relative to the checkout,
    so a copy of the folder is the same run), read image by image (no cache)."""
    config = tiny_config()
    config["datasets"]["tiny"]["data"] = {"kind": "lists", "root": "data/tiny",
                                          **{f"{s}_list": f"data/tiny/{s}.txt" for s in ("train", "val", "test")}}
    config["datasets"]["tiny"]["input"]["preload"] = False
    return config


@pytest.fixture(scope="module")
def finished_lists_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the finished tiny run, its generated images and lists made a user's `lists`
    dataset read from the files, every output marked up to date (`--touch`: the models are
    the tiny run's, trained on the same images)."""
    workdir = copy_run(tiny_run, tmp_path_factory.mktemp("lists_run") / "run")
    (workdir / "data").mkdir()
    shutil.move(workdir / "results/tiny/data", workdir / "data/tiny")
    write_config(workdir, lists_config())
    snakemake(workdir, "--cores", "1", "--touch")
    assert planned_jobs(workdir) == set()
    return workdir


@pytest.fixture
def lists_copy(finished_lists_run, tmp_path) -> Path:
    return copy_run(finished_lists_run, tmp_path / "run")


@pytest.mark.parametrize("fault", ["label out of range", "label missing"])
def test_a_bad_test_list_stops_a_finished_run_with_its_line(lists_copy, fault):
    """Before: `Nothing to be done`, the error of the test list dropped while the DAG was built."""
    test_list = lists_copy / "data/tiny/test.txt"
    path = test_list.read_text().splitlines()[6].rsplit(" ", 1)[0]
    if fault == "label out of range":
        replace_line(test_list, 7, f"{path} 8")
        problem = "label 8 is out of range 0..7"
    else:
        replace_line(test_list, 7, path)
        problem = f"expected 'relative/path label', got {path!r}"
    before = digests(lists_copy)
    result = snakemake(lists_copy, "--cores", "1", "results/tiny/report.csv", check=False)
    assert result.returncode == 1
    assert error_lines(result) == [f"config key datasets.tiny.data.test_list: data/tiny/test.txt:7: {problem}"]
    assert "Nothing to be done" not in result.stdout + result.stderr
    assert digests(lists_copy) == before


def test_a_listed_image_that_does_not_exist_stops_before_the_base_model_is_removed(lists_copy):
    """Before: Snakemake removed the finished base model (it deletes a job's outputs before
    rerunning it, and the edited list reruns the training), then the job found the file
    missing."""
    train_list = lists_copy / "data/tiny/train.txt"
    replace_line(train_list, 3, "images/train/000/missing.png 0")
    before = digests(lists_copy)
    result = snakemake(lists_copy, "--cores", "1", check=False)
    assert result.returncode == 1
    assert error_lines(result) == ["config key datasets.tiny.data.train_list: data/tiny/train.txt:3: "
                                   "image data/tiny/images/train/000/missing.png does not exist"]
    assert digests(lists_copy) == before and BASE_WEIGHTS in {f"results/{p}" for p in before}


def test_the_classes_table_needs_no_image(lists_copy):
    """The classes job reads the train list alone: a missing image does not hold it up."""
    replace_line(lists_copy / "data/tiny/train.txt", 3, "images/train/000/missing.png 0")
    assert ("classes", "setting=tiny") in planned_jobs(lists_copy, "results/tiny/classes.csv")


# -- the Slurm profile without its plugin ------------------------------------------------------

# Snakemake with the Slurm executor plugin hidden from it, as in a venv made without the
# `slurm` extra: its plugin registry lists packages by name (pkgutil), the profile imports it.
WITHOUT_SLURM = textwrap.dedent("""
    import pkgutil, sys
    hidden = "snakemake_executor_plugin_slurm"
    iter_modules = pkgutil.iter_modules
    pkgutil.iter_modules = lambda *a, **k: (m for m in iter_modules(*a, **k) if not m.name.startswith(hidden))
    sys.modules[hidden] = sys.modules[hidden + "_jobstep"] = None
    from snakemake.cli import main
    sys.argv[0] = "snakemake"
    main()
""")


def test_the_slurm_profile_without_its_plugin_says_what_to_install(tmp_path):
    """Before: 100 lines of usage and `invalid choice: 'slurm'`."""
    workdir = copy_workflow(tmp_path / "wf")
    result = subprocess.run([sys.executable, "-c", WITHOUT_SLURM, "--workflow-profile", "profiles/slurm", "-n"],
                            cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Using workflow specific profile profiles/slurm for setting default command line arguments.",
        "profiles/slurm needs the Slurm executor plugin (snakemake-executor-plugin-slurm), not installed in "
        f'{sys.prefix}: .venv/bin/pip install -e ".[slurm]"']
    assert result.stdout == ""


def test_the_slurm_profile_reads_as_its_plain_yaml():
    """yte, which runs the check above, changes nothing else in the profile."""
    yte = pytest.importorskip("yte")
    text = (REPO / "profiles/slurm/config.yaml").read_text()
    plain = yaml.safe_load(text)
    assert plain.pop("__use_yte__") is True and plain.pop("__definitions__")
    pytest.importorskip("snakemake_executor_plugin_slurm")  # else the check ends the process
    assert yte.process_yaml(text, require_use_yte=True) == plain


# -- a read-only results folder ----------------------------------------------------------------

@pytest.fixture
def read_only(tmp_path):
    """Mounts ``folder`` read-only onto itself (root only; skipped where it cannot)."""
    mounted = []

    def mount(folder: Path) -> None:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("a read-only bind mount needs root and mount(8)")
        for args in (["--bind", folder, folder], ["-o", "remount,bind,ro", folder]):
            done = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
            if done.returncode != 0:
                if mounted:
                    subprocess.run(["umount", str(folder)], check=False)
                pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
            mounted.append(folder)

    yield mount
    if mounted:
        subprocess.run(["umount", str(mounted[0])], check=False)


def test_a_read_only_results_folder_is_named_before_any_job_starts(tiny_run, tmp_path, read_only):
    """Before: Snakemake started the variant's first job, then failed to create its output
    folder (`WorkflowError: Failed to create output directory ...`, the OS error)."""
    workdir = copy_run(tiny_run, tmp_path / "run")
    config = tiny_config()
    config["datasets"]["tiny"]["variants"] = {"few_lr": {"experts": {"few": {"lr": 0.02}}}}
    write_config(workdir, config)
    before = digests(workdir)
    read_only(workdir / "results/tiny")
    result = snakemake(workdir, "--cores", "1", "results/tiny/variants/few_lr/report.csv", check=False)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if "results/tiny" in line and "nothing was run" in line]
    assert line.startswith("results/tiny is on a read-only file system; job ")
    job, path = line.removeprefix("results/tiny is on a read-only file system; job ").split(" writes ")
    assert path.startswith("results/tiny/variants/few_lr/") and path.endswith(" (nothing was run)")
    assert result.stderr.rstrip().endswith(line) and "WorkflowError" not in result.stderr
    assert "localrule" not in result.stdout + result.stderr  # no job started
    assert digests(workdir) == before
    assert not (workdir / ".snakemake/locks").exists() or not any((workdir / ".snakemake/locks").iterdir())


# -- config: a YAML 1.1 number -------------------------------------------------------------------

def test_a_yaml_1_1_exponent_is_refused_with_how_to_write_it(tiny_run, tmp_path):
    """`1e-3` is a string to YAML 1.1, which Snakemake's config loader speaks."""
    workdir = copy_run(tiny_run, tmp_path / "run")
    (workdir / "mine.yaml").write_text("datasets:\n  tiny:\n    base: {lr: 1e-3}\n")
    result = snakemake(workdir, "--cores", "1", "results/tiny/report.csv", "--configfile", "mine.yaml", check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == ("invalid config: datasets.tiny.base.lr: '1e-3' is a str; expected "
                                              "number (YAML 1.1 reads 1e-3 as a string: write 1.0e-3)")
    (workdir / "mine.yaml").write_text("datasets:\n  tiny:\n    base: {lr: 1.0e-3}\n")
    assert ("train_base", "setting=tiny, seed=0") in planned_jobs(workdir, "results/tiny/report.csv",
                                                                     "--configfile", "mine.yaml")


# -- an expert's reject sample too small to teach it ------------------------------------------

def reject_warning(workdir: Path, setting: str, expert: str, open_ratio: float) -> str:
    """The warning the rule of experts.small_reject_sample gives, from the classes table."""
    classes = pd.read_csv(workdir / "results/tiny/classes.csv")
    counts = classes.loc[classes["split"] == expert, "train_count"]
    members, smallest = int(counts.sum()), int(counts.min())
    reject = round(members / open_ratio)
    assert reject < smallest, "the case does not break the rule"
    largest = max(1.0, int(10 * members / smallest) / 10)
    return (f"warning: datasets.{setting}.experts.{expert}.open_ratio: {reject} reject "
            f"image{'s' if reject != 1 else ''} (open_ratio {open_ratio:g}), fewer than the {smallest} of the "
            f"split's smallest class: too few to teach the reject output; an open_ratio of at most {largest:g} "
            f"draws {smallest} or more")


def test_a_reject_sample_too_small_is_warned_in_the_log_and_on_stderr(tiny_run, tmp_path):
    workdir = copy_run(tiny_run, tmp_path / "run")
    config = tiny_config()
    config["datasets"]["tiny"]["variants"] = {"open16": {"experts": {"few": {"open_ratio": 16}}}}
    write_config(workdir, config)
    result = snakemake(workdir, "--cores", "1", "results/tiny/variants/open16/seed0/models/few/weights.pt")
    expected = reject_warning(workdir, "tiny.variants.open16", "few", 16)
    said = [line.split(" ", 1)[1] for line in result.stderr.splitlines() if " warning: " in line]
    logged = [line.split(" ", 1)[1] for line in
              (workdir / "results/tiny/variants/open16/seed0/logs/train_few.log").read_text().splitlines()
              if " warning: " in line]
    assert said == logged == [expected]
    # The tiny run's own settings: its many-shot expert (open ratio 4 over two classes of 48
    # and 33 images) draws 20; its medium and few experts draw enough.
    logs = workdir / "results/tiny/seed0/logs"
    assert reject_warning(workdir, "tiny", "many", 4) in (logs / "train_many.log").read_text()
    assert " warning: " not in (logs / "train_medium.log").read_text() + (logs / "train_few.log").read_text()
