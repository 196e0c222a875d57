"""Every fault ends in one line and loses no finished work: damaged files of ours, OS errors,
Ctrl-C, signals to Snakemake, retries, a full disk. Real files, real programs, real Snakemake."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from balanced_experts.calibration import JointCalibration, read_calibration, save_calibration
from balanced_experts.faults import ArtifactError, rebuild_command
from balanced_experts.files import replacing_folder
from balanced_experts.images.cache import read_image_cache
from balanced_experts.joblog import get_logger
from balanced_experts.lists import read_list
from balanced_experts.logits import LogitsTable, read_logits, write_logits
from balanced_experts.models import build_model, load_model, save_checkpoint
from conftest import REPO, copy_workflow, jpeg_dataset, last_attempt, snakemake, tiny_config

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


class Unsafe:
    """Pickled by reference: a file holding it loads only with an unsafe torch.load."""


# -- damaged files of ours: one error naming the file, what is wrong and the rebuild ----------

def _weights(path):
    save_checkpoint(path, build_model({"name": "resnet_cifar8", "width": 2, "embed_dim": 4}, 3), {
        "model": "few", "backbone": {"name": "resnet_cifar8", "width": 2, "embed_dim": 4},
        "num_classes": 3, "output_class_ids": [0, 1, 2]})


def _logits(path):
    write_logits(path, LogitsTable(logits=np.zeros((4, 3), np.float32), labels=np.arange(4) % 3,
                                   sample_ids=np.arange(4), paths=[f"{i}.png" for i in range(4)],
                                   output_class_ids=np.arange(3), meta={"model": "base", "split": "val",
                                                                        "num_classes": 3}))


def _calibration(path):
    save_calibration(path, JointCalibration([2, 1], 3), ["many", "few"])


def _cache(path):
    np.save(path, np.zeros((4, 3, 8, 8), np.uint8))


ARTIFACTS = {  # name: (write one, read it back, what kind of file it is)
    "weights.pt": (_weights, load_model, "torch file"),
    "val.parquet": (_logits, read_logits, "Parquet file"),
    "calibration.pt": (_calibration, read_calibration, "torch file"),
    "val.npy": (_cache, lambda path: read_image_cache(path, None, 8), ".npy array"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {  # how: (damage the file, what the error says is wrong)
    "empty": (lambda path: path.write_bytes(b""), lambda kind, path: "the file is empty"),
    "truncated": (_truncate, lambda kind, path: f"a damaged {kind} ({path.stat().st_size:,} bytes): "
                                                "cut short or corrupted"),
    "random bytes": (lambda path: path.write_bytes(np.random.default_rng(0).bytes(3000)),
                     lambda kind, path: f"not a {kind}: overwritten, or not written by this workflow"),
}


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_damaged_artifact_is_named_with_its_rebuild_command(tmp_path, name, how):
    write, read, kind = ARTIFACTS[name]
    damage, problem = DAMAGE[how]
    path = tmp_path / "results" / name
    path.parent.mkdir()
    write(path)
    read(path)  # intact, it reads
    damage(path)
    with pytest.raises(ArtifactError) as caught:
        read(path)
    assert str(caught.value) == (f"{path}: {problem(kind, path)}; rebuild it with: "
                                 f"snakemake --cores all {path} --forcerun {path}")


@pytest.mark.parametrize("name", ["weights.pt", "calibration.pt"])
def test_a_file_that_needs_an_unsafe_load_is_refused_without_advice_to_load_it(tmp_path, name):
    path = tmp_path / name
    torch.save({"state_dict": {}, "meta": Unsafe(), "scales": Unsafe()}, path)
    with pytest.raises(ArtifactError, match="holds pickled Python objects besides tensors") as caught:
        ARTIFACTS[name][1](path)
    assert "weights_only" not in str(caught.value) and "trust" not in str(caught.value)


def test_files_of_the_right_format_but_not_ours_are_named(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(ArtifactError, match="not model weights of this workflow"):
        load_model(tmp_path / "weights.pt")
    torch.save({"a": torch.zeros(2)}, tmp_path / "calibration.pt")
    with pytest.raises(ArtifactError, match="not a calibration of this workflow"):
        read_calibration(tmp_path / "calibration.pt")
    _logits(tmp_path / "val.parquet")
    import pyarrow.parquet as pq
    pq.write_table(pq.read_table(tmp_path / "val.parquet").replace_schema_metadata(None), tmp_path / "val.parquet")
    with pytest.raises(ArtifactError, match="a Parquet file, but not logits of this workflow"):
        read_logits(tmp_path / "val.parquet")
    np.save(tmp_path / "val.npy", np.zeros((4, 3, 8, 8)))
    with pytest.raises(ArtifactError, match=r"holds float64 \(4, 3, 8, 8\), not the uint8 \(N, 3, 8, 8\) images"):
        read_image_cache(tmp_path / "val.npy", None, 8)


def test_rebuild_command_quotes_the_path():
    assert rebuild_command("results/my data/x.pt") == \
        "snakemake --cores all 'results/my data/x.pt' --forcerun 'results/my data/x.pt'"


# -- a stage program's faults: one line on stderr and in the log, or none for Ctrl-C ----------

# A stage in miniature: the job's logger and exit_briefly_on, then one fault.
STAGE = """
import os, sys, torch
from balanced_experts.faults import ArtifactError, exit_briefly_on
from balanced_experts.files import replacing, save_torch_file
from balanced_experts.joblog import get_logger
fault, log_path, target = sys.argv[1:]
log = get_logger("stage", log_path, attempt=1)
exit_briefly_on(log)
if fault == "damaged file":
    raise ArtifactError(target, "the file is empty")
if fault == "ctrl-c":
    raise KeyboardInterrupt
if fault == "bug":
    1 / 0
if fault == "permission denied" and os.geteuid() == 0:
    os.setuid(65534)  # root writes anywhere: as nobody, a closed folder is closed
if fault == "no space left":
    save_torch_file({"x": torch.zeros(1 << 20)}, target)
with replacing(target) as tmp:
    tmp.write_text("x")
"""


def _run_stage(fault, folder: Path, target: Path):
    log = folder / "logs" / "stage.log"
    result = subprocess.run([sys.executable, "-c", STAGE, fault, str(log), str(target)], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "src")), timeout=120)
    # The lines after the attempt's header, without their time stamps.
    said = [line.split(" ", 1)[1] for line in result.stderr.splitlines()[1:]]
    logged = [line.split(" ", 1)[1] for line in last_attempt(log.read_text()).splitlines()[1:]]
    return result, said, logged


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str):
    """A small tmpfs at ``folder`` (root only); the test is skipped, with the reason, where
    none can be mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def open_folder():
    """A folder every user may enter (pytest's own is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="faults-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_damaged_file_ends_the_stage_with_its_line(open_folder):
    result, said, logged = _run_stage("damaged file", open_folder, open_folder / "w.pt")
    line = f"error: {open_folder / 'w.pt'}: the file is empty; rebuild it with: {rebuild_command(open_folder / 'w.pt')}"
    assert result.returncode == 1 and said == logged == [line]


def test_ctrl_c_ends_the_stage_quietly(open_folder):
    result, said, logged = _run_stage("ctrl-c", open_folder, open_folder / "x")
    assert result.returncode != 0 and said == logged == ["interrupted"]
    assert "Traceback" not in result.stderr


def test_a_bug_keeps_its_traceback(open_folder):
    result, said, _ = _run_stage("bug", open_folder, open_folder / "x")
    assert result.returncode == 1 and "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr


def test_permission_denied_names_the_path(open_folder):
    closed = open_folder / "closed"
    closed.mkdir(mode=0o555)
    closed.chmod(0o555)
    (open_folder / "logs").mkdir(mode=0o777)
    result, said, logged = _run_stage("permission denied", open_folder, closed / "out.txt")
    assert result.returncode == 1
    assert said == logged == [f"error: {closed / 'out.txt'}: Permission denied (EACCES)"]
    assert list(closed.iterdir()) == []


def test_read_only_file_system_names_the_path(open_folder):
    with mounted_tmpfs(open_folder / "ro", "ro,size=64k") as read_only:
        result, said, logged = _run_stage("read-only", open_folder, read_only / "out.txt")
    assert result.returncode == 1
    assert said == logged == [f"error: {read_only / 'out.txt'}: Read-only file system (EROFS)"]


def test_full_disk_names_the_file_and_leaves_no_partial_one(open_folder):
    with mounted_tmpfs(open_folder / "small", "size=256k") as small:
        result, said, logged = _run_stage("no space left", open_folder, small / "weights.pt")
        left = sorted(p.name for p in small.iterdir())
    assert result.returncode == 1
    assert said == logged == [f"error: {small / 'weights.pt'}: No space left on device (ENOSPC)"]
    assert left == []


# -- a job's log keeps every attempt; a folder is replaced whole -------------------------------

def test_the_log_keeps_every_attempt_though_snakemake_deletes_it(tmp_path):
    path = tmp_path / "logs" / "job.log"
    get_logger("job", path, attempt=1).info("epoch 1")
    path.unlink()  # what Snakemake does before every attempt
    get_logger("job", path, attempt=2).info("resuming")
    lines = [line.split(" ", 1)[1] for line in path.read_text().splitlines()]
    assert lines[0].startswith("===== ") and lines[0].endswith(f"job: attempt 1, pid {os.getpid()} =====")
    assert lines[1] == "epoch 1"
    assert lines[2].endswith(f"job: attempt 2, pid {os.getpid()} =====") and lines[3] == "resuming"
    assert last_attempt(path.read_text()).splitlines()[1].endswith("resuming")


# A stage that dies in native code after its first epoch (attempt 1), or runs (attempt 2).
NATIVE_CRASH = """
import faulthandler, os, sys
from balanced_experts.joblog import get_logger
crash, log_path, attempt = sys.argv[1:]
def train_one_epoch():  # the frame the stack must name
    {"segfault": faulthandler._sigsegv, "abort": os.abort, "none": lambda: None}[crash]()
log = get_logger("stage", log_path, attempt=int(attempt))
log.info(f"epoch {attempt}")
train_one_epoch()
log.info("done")
"""


@pytest.mark.parametrize("crash, signum, what", [("segfault", signal.SIGSEGV, "Segmentation fault"),
                                                  ("abort", signal.SIGABRT, "Aborted")])
def test_a_native_crash_leaves_the_python_stack_in_the_log_and_the_next_attempt_keeps_it(
        tmp_path, crash, signum, what):
    log = tmp_path / "logs" / "stage.log"

    def stage(crash, attempt):
        return subprocess.run([sys.executable, "-c", NATIVE_CRASH, crash, str(log), str(attempt)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
                              timeout=120)

    crashed = stage(crash, 1)
    assert crashed.returncode == -signum, crashed.stderr
    stack = [f"Fatal Python error: {what}", 'File "<string>", line 6 in train_one_epoch',
             'File "<string>", line 9 in <module>']
    for text in (log.read_text(), crashed.stderr):
        assert all(line in text for line in stack), text
    assert log.read_text().index("epoch 1") < log.read_text().index(stack[0])

    log.unlink()  # what Snakemake does before the next attempt
    assert stage("none", 2).returncode == 0
    first, second = log.read_text().split("stage: attempt 2, pid ")
    assert all(line in first for line in stack) and second.rstrip().endswith("done")


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    images = tmp_path / "images"
    with replacing_folder(images) as staged:
        (staged / "a.png").write_bytes(b"old")
    with pytest.raises(OSError):
        with replacing_folder(images) as staged:
            (staged / "b.png").write_bytes(b"new")
            raise OSError(28, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
    assert [p.name for p in images.iterdir()] == ["a.png"]
    with replacing_folder(images) as staged:
        (staged / "b.png").write_bytes(b"new")
    assert [p.name for p in images.iterdir()] == ["b.png"]


# -- through Snakemake ----------------------------------------------------------------------

BASE_WEIGHTS = "results/tiny/seed0/models/base/weights.pt"
EPOCHS = 60  # long enough to signal during training, short enough for the suite


@pytest.fixture(scope="module")
def before_training(tmp_path_factory) -> Path:
    """The tiny workflow with a 60-epoch base model, its data and caches built."""
    config = tiny_config()
    config["datasets"]["tiny"]["base"]["epochs"] = EPOCHS
    workdir = copy_workflow(tmp_path_factory.mktemp("faults") / "run", config)
    snakemake(workdir, "--cores", "2", "results/tiny/cache/train.npy", "results/tiny/cache/val.npy")
    return workdir


def _start(workdir: Path, *args: str) -> subprocess.Popen:
    """Snakemake in its own process group, with SIGINT at its default (a shell may have left
    it ignored for background jobs)."""
    return subprocess.Popen([SNAKEMAKE, *args], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, job: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), "training ended before it could be interrupted"


def _seconds_in_all(log: str) -> int:
    """The training time of the fit whose log this is (its "..., Ns in all" line)."""
    line = next(line for line in log.splitlines() if line.endswith(" in all"))
    text = line.rsplit(", ", 1)[1].removesuffix(" in all")
    minutes, _, seconds = text.rpartition("m")
    return int(minutes or 0) * 60 + int(seconds.removesuffix("s"))


@pytest.mark.slow
def test_sigint_to_snakemake_alone_keeps_the_finished_training(before_training, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(before_training, workdir, symlinks=True)
    resume = workdir / "results/tiny/seed0/models/base/resume.pt"
    log = workdir / "results/tiny/seed0/logs/train_base.log"

    job = _start(workdir, "--cores", "1", BASE_WEIGHTS)
    _wait_for(resume, job)  # after the first epoch
    os.kill(job.pid, signal.SIGINT)  # Snakemake alone, as a job manager or `timeout` would
    output, _ = job.communicate(timeout=300)
    assert job.returncode != 0 and "Terminating processes on user request" in output
    trained = last_attempt(log.read_text())
    assert f"base epoch {EPOCHS}/{EPOCHS}" in trained  # the job finished its training...
    written = torch.load(workdir / BASE_WEIGHTS, weights_only=True)
    assert resume.exists()
    rerun = snakemake(workdir, "-n", "--cores", "1", BASE_WEIGHTS).stdout
    assert "rule train_base:" in rerun  # ...but Snakemake did not accept its outputs

    snakemake(workdir, "--cores", "1", BASE_WEIGHTS)
    restored = last_attempt(log.read_text())
    assert f"base: training had finished ({EPOCHS} epochs" in restored
    assert "its weights are restored from results/tiny/seed0/models/base/resume.pt, no epoch runs again" in restored
    assert " epoch 1/" not in restored and f"epoch {EPOCHS}/{EPOCHS}" not in restored
    assert _seconds_in_all(restored) < _seconds_in_all(trained)
    print(f"training {_seconds_in_all(trained)} s, restoring {_seconds_in_all(restored)} s")
    weights = torch.load(workdir / BASE_WEIGHTS, weights_only=True)
    assert weights["meta"] == written["meta"]
    for key, value in written["state_dict"].items():
        assert torch.equal(weights["state_dict"][key], value), key
    metrics = (workdir / "results/tiny/seed0/models/base/metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in metrics[1:]] == [str(e) for e in range(1, EPOCHS + 1)]

    # The first job that reads the accepted weights removes the checkpoint.
    assert resume.exists()
    snakemake(workdir, "--cores", "1", "results/tiny/seed0/logits/base/val.parquet")
    assert not resume.exists()
    assert "removed the epoch checkpoint" in (workdir / "results/tiny/seed0/logs/logits_base_val.log").read_text()


@pytest.mark.slow
def test_a_retried_job_resumes_and_its_log_keeps_both_attempts(before_training, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(before_training, workdir, symlinks=True)
    resume = workdir / "results/tiny/seed0/models/base/resume.pt"
    log = workdir / "results/tiny/seed0/logs/train_base.log"

    job = _start(workdir, "--cores", "1", "--retries", "1", BASE_WEIGHTS)
    _wait_for(resume, job)
    header = log.read_text().splitlines()[0]
    assert "train_base: attempt 1, pid " in header
    os.kill(int(header.split(" pid ")[1].split()[0]), signal.SIGKILL)  # the job dies, Snakemake lives on
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 0, output
    text = log.read_text()
    first, second = text.split("train_base: attempt 2, pid ")
    assert "train_base: attempt 1, pid " in first and "base epoch 1/" in first
    resumed_from = int(second.split("base: resuming from epoch ")[1].split()[0])
    assert f"base epoch {resumed_from + 1}/{EPOCHS}" in second and f"base epoch {resumed_from}/" not in second
    assert f"base epoch {EPOCHS}/{EPOCHS}" in second


@pytest.mark.slow
@pytest.mark.parametrize("target, damaged, damage, rebuild", [
    ("results/tiny/seed0/calibration/calibration.pt", "results/tiny/seed0/logits/many/val.parquet", "truncated", True),
    ("results/tiny/seed0/logits/few/test.parquet", "results/tiny/seed0/models/few/weights.pt", "random bytes", False),
])
def test_a_damaged_artifact_stops_the_job_with_one_line_and_its_fix(tiny_run, tmp_path, target, damaged, damage,
                                                                     rebuild):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    DAMAGE[damage][0](workdir / damaged)
    kind = "Parquet file" if damaged.endswith(".parquet") else "torch file"
    line = (f"error: {damaged}: {DAMAGE[damage][1](kind, workdir / damaged)}; "
            f"rebuild it with: {rebuild_command(damaged)}")

    result = snakemake(workdir, "--cores", "1", target, check=False)
    assert result.returncode != 0
    stage = [row.split(" ", 1)[1] for row in result.stderr.splitlines() if row[:2].isdigit() and row[2] == ":"]
    assert stage[1] == line and stage.count(line) == 2  # the stage's line, then Snakemake's display of the log
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    log = workdir / "results/tiny/seed0/logs" / {"calibration.pt": "calibrate.log",
                                                 "test.parquet": "logits_few_test.log"}[Path(target).name]
    assert [row.split(" ", 1)[1] for row in last_attempt(log.read_text()).splitlines()[1:]] == [line]

    if not rebuild:  # (once is enough: the command is the same for every file)
        return
    # The command in the line rebuilds the file; then the job runs.
    subprocess.run(rebuild_command(damaged).replace("snakemake", SNAKEMAKE, 1), shell=True, cwd=workdir,
                   check=True, capture_output=True)
    snakemake(workdir, "--cores", "1", target)


@pytest.mark.slow
def test_a_full_disk_names_the_path_and_leaves_no_partial_file(tmp_path):
    workdir = copy_workflow(tmp_path / "run")
    with mounted_tmpfs(workdir / "results", "size=300k"):  # the tiny images need about 1 MB
        result = snakemake(workdir, "--cores", "1", "results/tiny/data/train.txt", check=False)
        left = sorted(str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*")
                      if p.is_file() and "logs" not in p.parts)
    assert result.returncode != 0
    assert "error: results/tiny/data/images: No space left on device (ENOSPC)" in result.stderr
    assert "Traceback" not in result.stderr
    assert left == []


@pytest.mark.slow
def test_a_corrupt_jpeg_in_a_dataloader_worker_ends_the_job_with_its_one_line(tmp_path):
    """A JPEG list dataset whose images DataLoader workers open: one cut short ends the job
    with the line the main process would give (file and list line), once in the job's log
    and once on its stderr, without the worker's traceback."""
    config = tiny_config()
    config["datasets"]["tiny"] = jpeg_dataset(tmp_path / "data")
    config["datasets"]["tiny"]["input"]["workers"] = 2
    workdir = copy_workflow(tmp_path / "run", config)
    train_list = Path(config["datasets"]["tiny"]["data"]["train_list"])
    image_list = read_list(train_list)
    corrupt = Path(config["datasets"]["tiny"]["data"]["root"]) / image_list.paths[5]
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    with pytest.raises(OSError) as pil:
        Image.open(corrupt).convert("RGB")
    line = f"error: cannot read image {corrupt} ({train_list}, line {image_list.line_of(5)}): {pil.value}"

    result = snakemake(workdir, "--cores", "1", BASE_WEIGHTS, check=False)
    assert result.returncode != 0
    said = [row.split(" ", 1)[1] for row in result.stderr.splitlines() if row[:2].isdigit() and row[2] == ":"]
    errors = [row for row in said if row.startswith("error:")]
    assert errors == [line, line]  # the stage's line, then Snakemake's display of the log
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr
    log = workdir / "results/tiny/seed0/logs/train_base.log"
    logged = [row.split(" ", 1)[1] for row in log.read_text().splitlines()]
    assert [row for row in logged if row.startswith("error:")] == [line] and logged[-1] == line
