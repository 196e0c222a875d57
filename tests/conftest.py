"""Shared test helpers: a tiny workflow copy and a real Snakemake runner."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The shared real list files (Places-LT, ImageNet-LT) live in shared/ beside the clone; a
# checkout elsewhere (e.g. a git worktree) names them with BALANCED_EXPERTS_SHARED_DATA.
SHARED_DATA = REPO.parent / "shared" / "data"
if not SHARED_DATA.exists() and os.environ.get("BALANCED_EXPERTS_SHARED_DATA"):
    SHARED_DATA = Path(os.environ["BALANCED_EXPERTS_SHARED_DATA"])

# The tiny config (tests/tiny.yaml): every stage takes seconds on one CPU core. .ci/run and
# bench/ use the same file.
TINY_CONFIG = Path(__file__).with_name("tiny.yaml")


def tiny_config() -> dict:
    """A fresh copy of the tiny config, to edit."""
    return yaml.safe_load(TINY_CONFIG.read_text())


TINY_DATASET = tiny_config()["datasets"]["tiny"]


def jpeg_dataset(root: Path) -> dict:
    """The tiny dataset as JPEG files behind a ``lists`` dataset (``preload: false``): the file
    path, where ``execution.decode_on_device`` decodes with nvJPEG on a GPU. Returns the
    dataset's config section; its images and list files are written under ``root``.

    The first training image is a CMYK JPEG, as ImageNet has some: nvJPEG refuses it, so
    its batch falls back to the CPU decoder.
    """
    import copy

    from PIL import Image

    from balanced_experts.lists import read_list, write_list
    from balanced_experts.synthetic import SyntheticSpec, generate

    root = Path(root).resolve()
    # 32-px images, cropped to 24 px: the ImageNet recipe (random resized crop, flip, jitter).
    generate(SyntheticSpec(**dict(TINY_DATASET["data"]["synthetic"], image_size=32)), root, log=lambda _: None)
    for split in ("train", "val", "test"):
        image_list = read_list(root / f"{split}.txt")
        jpegs = []
        for i, png in enumerate(image_list.paths):
            with Image.open(root / png) as image:
                image = image.convert("CMYK" if split == "train" and i == 0 else "RGB")
            jpegs.append(png.removesuffix(".png") + ".jpg")
            image.save(root / jpegs[-1], quality=90)
            (root / png).unlink()
        write_list(root / f"{split}.txt", jpegs, image_list.labels)
    dataset = copy.deepcopy(TINY_DATASET)
    dataset["data"] = {"kind": "lists", "root": str(root),
                       **{f"{split}_list": str(root / f"{split}.txt") for split in ("train", "val", "test")}}
    dataset["input"] = {"size": 24, "resize": 28, "augment": "imagenet", "preload": False,
                        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return dataset


def cifar_dataset(archive: Path) -> dict:
    """The tiny dataset's training settings on a CIFAR-100 python archive (realdata's mini
    one: 6 classes, long-tailed to 36 ... 3 training images)."""
    import copy

    dataset = copy.deepcopy(TINY_DATASET)
    dataset["data"] = {"kind": "cifar", "cifar": {"archive": str(archive), "variant": "cifar100",
                                                  "imbalance": 10, "val_per_class": 4}}
    dataset["class_splits"] = {"many_threshold": 20, "few_threshold": 6}  # 36 22 | 14 9 | 5 3
    dataset["input"].update(size=32, pad=4)
    return dataset


def copy_workflow(dest: Path, config: dict | None = None, repo: Path = REPO) -> Path:
    """Copy ``repo``'s workflow (Snakefile, workflow/, src/, profiles/) into ``dest`` with its
    own config.yaml (the tiny one by default)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "Snakefile", dest / "Snakefile")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("workflow", "src", "profiles"):
        shutil.copytree(repo / folder, dest / folder, ignore=ignore)
    write_config(dest, config if config is not None else tiny_config())
    return dest


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


_NICED: set = set()  # the background runs' Snakemake (its .pid), ended with the session


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900,
              nice: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``snakemake`` command line of this interpreter's environment in
    ``workdir``, in a process of its own (forked by tests/snakemake_server.py, which has
    imported Snakemake once for every run, and its Python jobs by tests/job_server.py);
    ``nice``: at a lower CPU priority, in its own process group (a background run)."""
    _refuse("runs Snakemake")
    exe = Path(sys.executable).with_name("snakemake")
    program = str(exe) if exe.exists() else "snakemake"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    returncode, stdout, stderr = _server().run(program, list(args), workdir, env, nice=10 if nice else 0,
                                               session=nice, timeout=timeout)
    result = subprocess.CompletedProcess([program, *args], returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


class _Run:
    """A run the server forked: its pid, once known, and its return code, once it ended."""

    def __init__(self):
        self.started: concurrent.futures.Future = concurrent.futures.Future()
        self.ended: concurrent.futures.Future = concurrent.futures.Future()
        self.pid = None


class _SnakemakeServer:
    """This session's tests/snakemake_server.py, started by the first run."""

    def __init__(self):
        self._process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("snakemake_server.py"))],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._folder = Path(tempfile.mkdtemp(prefix="snakemake-runs-"))
        self._lock = threading.Lock()
        self._runs: dict[int, _Run] = {}
        self._count = 0
        threading.Thread(target=self._read, name="snakemake server", daemon=True).start()

    def _read(self) -> None:
        for line in self._process.stdout:
            reply = json.loads(line)
            run = self._runs[reply["id"]]
            if "pid" in reply:
                run.pid = reply["pid"]
                run.started.set_result(run.pid)
            else:
                del self._runs[reply["id"]]
                run.ended.set_result(reply["returncode"])
        for run in list(self._runs.values()):  # the server has ended
            for future in (run.started, run.ended):
                if not future.done():
                    future.set_exception(RuntimeError("tests/snakemake_server.py ended"))

    def run(self, program: str, args: list[str], cwd: Path, env: dict, nice: int, session: bool,
            timeout: float) -> tuple[int, str, str]:
        with self._lock:
            self._count += 1
            number, run = self._count, _Run()
            self._runs[number] = run
            out, err = self._folder / f"{number}.out", self._folder / f"{number}.err"
            request = {"id": number, "program": program, "args": args, "cwd": str(cwd), "env": env, "nice": nice,
                       "session": session, "out": str(out), "err": str(err)}
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        run.started.result()
        if nice:
            _NICED.add(run)
        try:
            returncode = run.ended.result(timeout=timeout)
        except BaseException:  # a timeout, Ctrl-C: Snakemake (and a background run's jobs) end too
            with contextlib.suppress(ProcessLookupError):
                (os.killpg if session else os.kill)(run.pid, signal.SIGKILL)
            raise
        finally:
            _NICED.discard(run)
        try:
            return returncode, out.read_text(errors="replace"), err.read_text(errors="replace")
        finally:
            out.unlink()
            err.unlink()

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=60)
        shutil.rmtree(self._folder, ignore_errors=True)


_SERVER: _SnakemakeServer | None = None  # the session's, once started
_SERVER_LOCK = threading.Lock()  # the shared runs' thread and the tests may start it


def _server() -> _SnakemakeServer:
    global _SERVER
    with _SERVER_LOCK:
        if _SERVER is None:
            _SERVER = _SnakemakeServer()
        return _SERVER


def last_attempt(log: str) -> str:
    """The part of a job's log written by its last attempt: from its last header line on
    (a job's log keeps every attempt, each starting with a ``===== <date> <job>: ...`` line)."""
    headers = [m.start() for m in re.finditer(r"(?m)^\S+ ===== \d{4}-\d\d-\d\d ", log)]
    return log[headers[-1]:] if headers else log


_JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):\s*$")


def planned_jobs(workdir: Path, *targets: str) -> set[tuple[str, str]]:
    """``(rule, wildcards)`` of every job a dry run would execute (``all`` left out)."""
    result = snakemake(workdir, "-n", "--cores", "2", *targets)
    jobs: list[list[str]] = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        header = _JOB_HEADER.match(line.strip())
        if header:
            jobs.append([header.group(1), ""])
        elif jobs and line.startswith("    wildcards:"):
            jobs[-1][1] = line.strip().removeprefix("wildcards:").strip()
    return {(rule, wildcards) for rule, wildcards in jobs if rule != "all"}


def copy_run(workdir: Path, dest: Path) -> Path:
    """A copy of a finished run (symlinks kept), to edit or damage: far cheaper than a rerun."""
    shutil.copytree(workdir, dest, symlinks=True)
    return dest


def digests(workdir: Path) -> dict[str, str]:
    """SHA-256 of every file under results/ but the logs, to prove a failed or stopped run
    left them alone."""
    import hashlib

    results = workdir / "results"
    return {str(p.relative_to(results)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(results.rglob("*")) if p.is_file() and "logs" not in p.parts}


def replace_line(path: Path, number: int, text: str) -> None:
    """Line ``number`` (1-based) of ``path`` replaced by ``text``."""
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def edited_copy(workdir: Path, dest: Path, edit, *targets: str) -> tuple[Path, set[tuple[str, str]]]:
    """A copy of a finished tiny run with ``edit`` applied to its tiny dataset's config; its
    dry-run plan (of ``targets``; the default target without)."""
    copy_run(workdir, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    edit(config["datasets"]["tiny"])
    write_config(dest, config)
    return dest, planned_jobs(dest, *targets)


# -- whole-DAG runs, each done once per session and shared by every module ------------------
# A test that edits or damages one works on a copy (copy_run). The runs a session's tests
# need start with its first test, one after the other in the order the tests need them, in
# a background thread and niced: they use the CPU that the tests in front leave idle (most
# of them run one process at a time); once a test waits for one, it runs at normal priority.
# A test that needs a run not yet begun runs it itself.
# Each run is a function of the folder it may fill; SHARED_RUNS names them by fixture.


def _tiny_run(top: Path, runs: SharedRuns, nice: bool) -> Path:
    workdir = copy_workflow(top)
    snakemake(workdir, "--cores", "2", nice=nice)
    return workdir


# The models rerun_models trains again, each of another kind: an expert (its reject sample and
# early stopping), LWS (class-balanced batches on the base features), RIDE (its diversity loss)
# and SADE (its three losses and its test-time aggregation).
RERUN_MODELS = ("many", "lws", "ride", "sade")


def _rerun_models(top: Path, runs: SharedRuns, nice: bool) -> Path:
    workdir = copy_run(runs.result("tiny_run"), top / "run")
    models = "results/tiny/seed0/models"
    for name in RERUN_MODELS:
        shutil.rmtree(workdir / models / name)  # a resume checkpoint too: trained from scratch
    # -R: those models and every job after them (their logits, the calibration, the report).
    snakemake(workdir, "--cores", "2", "-R", *(f"{models}/{name}/weights.pt" for name in RERUN_MODELS), nice=nice)
    return workdir


SEEDS_TARGET = "results/tiny/report.csv"


def _two_seeds(top: Path, runs: SharedRuns, nice: bool) -> tuple[Path, set[tuple[str, str]]]:
    workdir, planned = edited_copy(runs.result("tiny_run"), top / "run", lambda tiny: tiny.update(seeds=[0, 1]))
    # The report over both seeds, not the default target: seed 1's logits that no report
    # reads (train-split ones, most models' val) are left out, 17 of its 46 jobs.
    snakemake(workdir, "--cores", "2", SEEDS_TARGET, nice=nice)
    return workdir, planned


def _variant_run(top: Path, runs: SharedRuns, nice: bool) -> tuple[Path, set[tuple[str, str]]]:
    workdir, planned = edited_copy(runs.result("tiny_run"), top / "run", lambda tiny: tiny.update(
        variants={"fewlr": {"experts": {"few": {"lr": 0.03}}}}))
    snakemake(workdir, "--cores", "2", nice=nice)
    return workdir, planned


C100_TARGETS = ("results/c100/classes.csv", "results/c100/seed0/logits/base/test.parquet")


def _user_data_run(top: Path, runs: SharedRuns, nice: bool) -> tuple[Path, dict]:
    """Two kinds of a user's data in one invocation (two independent DAGs keep both cores
    busy): ``mini``, a `lists` dataset (an ImageNet-LT-style root of JPEG files) in its own
    file, given with --configfile, its whole DAG: its data section, its image size and a
    backbone name; the rest comes from `defaults` (the tiny training settings with a file
    loader, and the default run's peers: Balanced Softmax and LDAM-DRW, RIDE and SADE off as
    the synthetic preset has them). ``c100``, a mini CIFAR-100-LT archive (cifar_dataset),
    up to its classes and its base model's test logits (C100_TARGETS): the stages after
    those are the synthetic dataset's, on the same kind of images (PNG files, preloaded
    from their cache)."""
    import copy

    from realdata import make_cifar_archive, make_imagenet_lt_root

    root = make_imagenet_lt_root(top / "imagenet_lt")
    config = tiny_config()
    defaults = copy.deepcopy(TINY_DATASET)
    del defaults["data"]
    defaults["class_splits"] = {"many_threshold": 12, "few_threshold": 5}  # 2 / 2 / 2 classes
    defaults["input"] = {"augment": "imagenet", "preload": False, "workers": 0}
    defaults["backbone"] = {"embed_dim": 16}
    defaults["peers"].update(ride={"enabled": False}, sade={"enabled": False})
    config["defaults"] = defaults
    config["datasets"]["c100"] = cifar_dataset(make_cifar_archive(top / "cifar-100-python.tar.gz"))
    config["datasets"]["c100"]["peers"] = {name: {"enabled": False} for name in TINY_DATASET["peers"]}
    workdir = copy_workflow(top / "wf", config)
    user = {"datasets": {"mini": {"data": {"kind": "lists", **root}, "input": {"size": 16},
                                  "backbone": {"name": "resnet10"}}}}
    (workdir / "mini.yaml").write_text(yaml.safe_dump(user))
    # The targets go first: --configfile takes every file name that follows it.
    snakemake(workdir, "--cores", "2", "results/mini/report.csv", *C100_TARGETS, "--configfile", "mini.yaml", nice=nice)
    return workdir, root


SHARED_RUNS = {"tiny_run": _tiny_run, "two_seeds": _two_seeds, "variant_run": _variant_run,
               "user_data_run": _user_data_run, "rerun_models": _rerun_models}


class SharedRuns:
    """The session's whole-DAG runs: each done once, by a background thread or by the first
    test that needs it before that thread got to it."""

    def __init__(self, tmp_path_factory):
        # The session's base folder made here, before the thread: pytest's factory makes it
        # on first use without a lock, and two threads' first uses made two (pytest-N and
        # N+1), failing the tests' mktemp with "is not a normalized and relative path".
        tmp_path_factory.getbasetemp()
        self._folders = tmp_path_factory
        self._lock = threading.Lock()
        self._futures: dict[str, concurrent.futures.Future] = {}
        self._stopping = threading.Event()

    def result(self, name: str):
        """The run's result, done now in this thread if no thread has begun it."""
        with self._lock:
            future, mine = self._futures.get(name), name not in self._futures
            if mine:
                future = self._futures[name] = concurrent.futures.Future()
        background = threading.current_thread() is not threading.main_thread()
        if mine:
            try:
                future.set_result(SHARED_RUNS[name](self._folders.mktemp(name), self, background))
            except BaseException as error:
                future.set_exception(error)
        elif not background and not future.done():
            # The tests wait for it: it runs at their priority now (where the user may raise it).
            for process in list(_NICED):
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PGRP, process.pid, 0)
        return future.result()

    def start(self, names: list[str]) -> None:
        def work():
            for name in names:
                if self._stopping.is_set():
                    return
                try:
                    self.result(name)
                except BaseException:  # the tests that need it report it
                    pass

        self._thread = threading.Thread(target=work, name="shared runs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """At the session's end: what still runs (an interrupted session) is ended."""
        self._stopping.set()
        for process in list(_NICED):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)


@pytest.fixture(scope="session", autouse=True)
def shared_runs(request, tmp_path_factory):
    runs = SharedRuns(tmp_path_factory)
    first_need = {}
    for index, item in enumerate(request.session.items):
        for name in item.fixturenames:
            if name in SHARED_RUNS:
                first_need.setdefault(name, index)
    runs.start(sorted(first_need, key=first_need.get))
    yield runs
    runs.stop()
    if _SERVER is not None:
        _SERVER.close()


def _shared(runs: SharedRuns, name: str):
    _refuse(f"uses the whole-DAG run {name}")
    return runs.result(name)


@pytest.fixture(scope="session")
def tiny_run(shared_runs) -> Path:
    """One complete run of the whole DAG on the tiny config (seed 0)."""
    return _shared(shared_runs, "tiny_run")


@pytest.fixture(scope="session")
def rerun_models(shared_runs) -> Path:
    """A copy of tiny_run with RERUN_MODELS trained again from scratch, and every job after
    them run again (the determinism test)."""
    return _shared(shared_runs, "rerun_models")


@pytest.fixture(scope="session")
def two_seeds(shared_runs) -> tuple[Path, set[tuple[str, str]]]:
    """A copy of tiny_run with a second seed added, run to the report (SEEDS_TARGET); the
    default target's plan of that copy before the run."""
    return _shared(shared_runs, "two_seeds")


@pytest.fixture(scope="session")
def variant_run(shared_runs) -> tuple[Path, set[tuple[str, str]]]:
    """A copy of tiny_run with a variant ``fewlr`` that changes only the few-shot expert's lr,
    and run; the plan of that run."""
    return _shared(shared_runs, "variant_run")


@pytest.fixture(scope="session")
def user_data_run(shared_runs) -> tuple[Path, dict]:
    """The whole DAGs of a user's `lists` dataset ``mini`` from its own config file and of a
    CIFAR-100 archive ``c100`` (_user_data_run); the data paths of mini's ImageNet-LT-style root."""
    return _shared(shared_runs, "user_data_run")


# -- the slow marker: every test that runs Snakemake or trains a model carries it -----------
# `pytest -m "not slow"` is the fast tier (docs/development.md). A test without the marker
# that starts Snakemake or takes an optimizer step fails, naming itself, so the tier stays
# fast; the Slurm tests run the pipeline, so they are slow too.

_current_test = {"id": None, "slow": False}


def _runs_snakemake(args) -> bool:
    """Whether a command runs Snakemake: its program, ``-m snakemake``, or ``-c`` code that
    imports it (a shell command line: its first word)."""
    argv = args.split()[:1] if isinstance(args, str) else [str(a) for a in args]
    if not argv:
        return False
    if Path(argv[0]).name == "snakemake" or any(a == "-m" and b.startswith("snakemake")
                                               for a, b in zip(argv, argv[1:])):
        return True
    return any(a == "-c" and re.search(r"^\s*(from|import) snakemake\b", b, re.M) for a, b in zip(argv, argv[1:]))


def _refuse(what: str) -> None:
    # (The shared runs' background thread works for the session, not for the current test.)
    if threading.current_thread() is not threading.main_thread():
        return
    if _current_test["id"] is not None and not _current_test["slow"]:
        pytest.fail(f"{_current_test['id']} {what}, but is not marked slow: add @pytest.mark.slow "
                    "(the fast tier, pytest -m 'not slow', leaves it out)", pytrace=False)


def pytest_configure(config):
    # One CPU thread for the tests' own torch and the processes they spawn (Snakemake jobs set
    # theirs from `execution`), before torch loads: the tests' tensors are tiny, and two
    # threads on a loaded CPU wait on each other (the in-process fits: 10x the CPU time).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A test that runs two threads (the multi-threaded training) shares the CPU with the shared
    # runs' jobs: threads that sleep while they wait, not spin, take half the time there.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    popen_init = subprocess.Popen.__init__

    def guarded_init(self, args, *more, **kwargs):
        if _runs_snakemake(args):
            _refuse("runs Snakemake")
        popen_init(self, args, *more, **kwargs)

    subprocess.Popen.__init__ = guarded_init

    def guarded_step(optimizer, args, kwargs):
        # The calibration's LBFGS fits a few scalars on logits in milliseconds: not training.
        if not isinstance(optimizer, torch.optim.LBFGS):
            _refuse(f"trains a model ({type(optimizer).__name__} step)")

    register_optimizer_step_pre_hook(guarded_step)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slow)
    # The tests that need no shared run go first, while the background thread does the runs:
    # modules that use none, then those that use some (their other tests first), then those
    # whose every test uses one. A module's tests stay together (its fixtures are set up once).
    uses = {id(item): bool(SHARED_RUNS.keys() & set(item.fixturenames)) for item in items}
    modules: dict[str, list[bool]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(uses[id(item)])
    first = {}
    for index, item in enumerate(items):
        first.setdefault(item.nodeid.split("::")[0], index)

    def key(indexed):
        index, item = indexed
        module = item.nodeid.split("::")[0]
        return (any(modules[module]) + all(modules[module]), first[module], uses[id(item)], index)

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Before the item's fixtures: a session fixture it sets up runs on its behalf.
    _current_test.update(id=item.nodeid, slow=item.get_closest_marker("slow") is not None)
