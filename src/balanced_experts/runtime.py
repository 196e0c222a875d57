"""What every stage program needs: the job's log, one-line errors, a stack on a native
crash, safe reading and writing of the workflow's files, the device, threads.

A stage ends on a fault the user fixes with one line, on stderr and in the job's log
(:func:`exit_briefly_on`): a file of ours that cannot be read names the file, what is wrong
and the command that rebuilds it (:class:`ArtifactError`); an OS error names the path and
the errno's meaning; Ctrl-C ends it quietly. Files are written atomically
(:func:`replacing`, :func:`replacing_folder`), so a failed or killed job leaves no
half-written file behind.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import faulthandler
import logging
import os
import pickle
import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


# -- the job's log ---------------------------------------------------------------------

class _JobLogFile(logging.FileHandler):
    """A log file that never turns a failed write (a full disk) into a traceback on stderr:
    the same line still reaches stderr through the other handler."""

    def handleError(self, record):
        pass


def get_logger(name: str, log_path: str | Path | None, attempt: int | None = None) -> logging.Logger:
    """Log to the job's log file and to stderr, one timestamped line per message.

    The log keeps every attempt of the job: Snakemake deletes a job's log before each
    attempt (a retry, or the rerun after a failure or a kill), so every line also goes to
    a hidden copy, ``.<log name>.history``, from which the next attempt restores the log
    before appending to it. Each attempt starts with a header line: the date (the time
    starts every line), the attempt number (``attempt``, Snakemake's count under
    ``--retries``) and the process id. A native crash appends the Python stack to both
    files and stderr (:func:`report_native_crashes`).
    """
    logger = logging.getLogger(f"balanced_experts.{name}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    problem, log_files = None, []
    if log_path:
        try:
            log_files = _job_log_files(Path(log_path))
            handlers += [_JobLogFile(path, mode="a") for path in log_files]
        except OSError as error:  # a full disk or a read-only folder: the job still runs, on stderr
            problem, log_files = f"warning: the job's log is not kept: {describe_os_error(error)}", []
    report_native_crashes(log_files)
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    if problem:
        logger.warning(problem)
    if log_path:
        of = f"attempt {attempt}, " if attempt is not None else ""
        logger.info(f"===== {datetime.date.today().isoformat()} {name}: {of}pid {os.getpid()} =====")
    return logger


def _job_log_files(path: Path) -> list[Path]:
    """The job's log, restored from its history, and the history: the files a line goes to."""
    history = path.with_name(f".{path.name}.history")
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        if history.exists():
            shutil.copyfile(history, path)  # every line went to both: the history is the whole log
        elif path.exists():
            shutil.copyfile(path, history)  # a log from before the history was kept
    return [path, history]


# -- a native crash: the Python stack, in the job's log -----------------------------------------

_crash_copier: subprocess.Popen | None = None  # the ``tee`` of report_native_crashes


def report_native_crashes(log_files: list[Path]) -> None:
    """On a native crash (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL: in torch, numpy, a
    DataLoader worker) write the Python stack of every thread to ``log_files`` and stderr,
    with :mod:`faulthandler`; without it such a job dies without a word of where.

    faulthandler writes to one file descriptor, from its signal handler, and the dying
    process can copy nothing afterwards: with log files, that descriptor is a pipe into
    ``tee -a``, which appends the stack to each file (the job's log and its history, so
    the log of the next attempt keeps it) and to stderr. Without ``tee`` it goes to the
    first file alone; without log files, to stderr. A second call replaces the first.
    """
    global _crash_copier
    _stop_copying_crashes()
    if not log_files:
        faulthandler.enable(sys.__stderr__ or sys.stderr, all_threads=True)
        return
    try:
        # Not a new session: Ctrl-C and a kill of the job's process group end it too.
        _crash_copier = subprocess.Popen(["tee", "-a", *map(str, log_files)], stdin=subprocess.PIPE,
                                         stdout=sys.__stderr__ or subprocess.DEVNULL)
        faulthandler.enable(_crash_copier.stdin, all_threads=True)
    except (OSError, ValueError):  # no tee (or no stderr to hand it): the log file alone
        faulthandler.enable(open(log_files[0], "a"), all_threads=True)


@atexit.register
def _stop_copying_crashes() -> None:
    """End the ``tee`` of :func:`report_native_crashes` (it ends when its pipe closes)."""
    global _crash_copier
    if _crash_copier is not None:
        faulthandler.disable()
        _crash_copier.stdin.close()
        _crash_copier.wait()
        _crash_copier = None


# -- one line per fault --------------------------------------------------------------------

def exit_briefly_on(log: logging.Logger, *error_types: type[BaseException]) -> None:
    """End the stage on an uncaught error with one line, instead of a traceback, for the
    faults a user fixes rather than debugs:

    - ``error_types`` (a bad list line, a missing image, a diverged run) and
      :class:`ArtifactError`: the message, which names the culprit and the fix;
    - :class:`OSError` (no space left, permission denied, read-only file system): the
      path and the meaning of the errno, e.g. ``results/x.pt: No space left on device (ENOSPC)``;
    - KeyboardInterrupt (Ctrl-C): the line ``interrupted``.

    The line goes to the job's log as well, so Snakemake's failed-log display shows it.
    Other errors (bugs) keep their traceback. The exit status stays non-zero.
    """
    brief = (ArtifactError, *error_types)
    previous = sys.excepthook

    def hook(kind, error, traceback):
        if issubclass(kind, KeyboardInterrupt):
            log.warning("interrupted")
        elif issubclass(kind, brief):
            log.error(f"error: {error}")
        elif issubclass(kind, OSError):
            log.error(f"error: {describe_os_error(error)}")
        else:
            previous(kind, error, traceback)

    sys.excepthook = hook


def describe_os_error(error: OSError) -> str:
    """``<path>: <meaning of the errno> (<errno name>)``, e.g.
    ``results/x.pt: No space left on device (ENOSPC)``."""
    if error.errno in errno.errorcode:
        what = f"{os.strerror(error.errno)} ({errno.errorcode[error.errno]})"
    else:
        what = error.strerror or str(error)
    where = error.filename
    if where is not None and error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    return f"{where}: {what}" if where is not None else what


# -- reading the workflow's files -------------------------------------------------------------

class ArtifactError(Exception):
    """A file this workflow wrote (weights, epoch checkpoint, logits, calibration, image
    cache) that cannot be read back: empty, cut short, damaged, or not ours. The message
    names the file, what is wrong with it, and the command that rebuilds it."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}; rebuild it with: {rebuild_command(path)}")


def rebuild_command(path: str | Path) -> str:
    """The command that runs the job of one of the workflow's files again, ``path`` as the
    stage was given it (relative to the workflow's folder, where Snakemake runs)."""
    quoted = shlex.quote(str(path))
    return f"snakemake --cores all {quoted} --forcerun {quoted}"


# How each kind of file starts: one that does not is not of that kind at all.
_SIGNATURES = {"torch file": b"PK\x03\x04", "Parquet file": b"PAR1", ".npy array": b"\x93NUMPY"}


def unreadable(path: str | Path, kind: str, error: BaseException | None = None) -> ArtifactError:
    """The :class:`ArtifactError` of ``path``, a ``kind`` file (a key of ``_SIGNATURES``)
    that failed to load with ``error``. The library's own message is not repeated: it is
    often a traceback's worth, and some advise loading the file unsafely."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if size == 0:
        problem = "the file is empty"
    elif not head.startswith(_SIGNATURES[kind]):
        problem = f"not a {kind}: overwritten, or not written by this workflow"
    elif isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error.__context__):
        problem = ("it holds pickled Python objects besides tensors, which this workflow never "
                   "writes; it is not loaded, since that could run code from the file")
    else:
        problem = f"a damaged {kind} ({size:,} bytes): cut short or corrupted"
    return ArtifactError(path, problem)


@contextlib.contextmanager
def reading(path: str | Path, kind: str):
    """Turn a failure of the block to load ``path`` (a ``kind`` file of this workflow) into
    an :class:`ArtifactError`. An OS error (permission denied, an I/O error) stays one,
    named after ``path``."""
    try:
        yield
    except ArtifactError:
        raise
    except OSError as error:
        # torch reports a file cut short as EINVAL without a file name
        if error.errno not in (None, errno.EINVAL):
            raise OSError(error.errno, os.strerror(error.errno), str(path)) from None
        raise unreadable(path, kind, error) from None
    except Exception as error:
        raise unreadable(path, kind, error) from None


def load_torch_file(path: str | Path):
    """A torch file of this workflow, loaded safely: tensors and plain data only
    (``weights_only=True``), never objects that could run code."""
    with reading(path, "torch file"):
        return torch.load(path, map_location="cpu", weights_only=True)


# -- writing them ------------------------------------------------------------------------

@contextlib.contextmanager
def writing(path: str | Path):
    """Name ``path`` in an OS error of the block that names no file (a failed write or
    flush: no space left on device) or only a temporary sibling of ``path``."""
    try:
        yield
    except OSError as error:
        named = Path(error.filename) if isinstance(error.filename, (str, os.PathLike)) else None
        path = Path(path)
        if named is None or (named.parent == path.parent and named.name.startswith(path.name)):
            code = error.errno
            raise OSError(code, os.strerror(code) if code else str(error), str(path)) from None
        raise


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = ".tmp"):
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block
    succeeds and is removed when it fails, so ``path`` is never half-written (a killed job
    leaves at most the temporary file, which the next attempt overwrites)."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            tmp.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):  # (a read-only file system refuses even this)
                tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def replacing_folder(folder: str | Path):
    """As :func:`replacing`, for a folder: yield an empty temporary sibling to fill, which
    replaces ``folder`` whole when the block succeeds and is removed when it fails. A
    temporary folder left by a killed job is removed when the next one starts."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    with writing(folder):
        try:
            tmp.mkdir(parents=True)
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def save_torch_file(obj, path: str | Path) -> None:
    """``torch.save`` atomically (see :func:`replacing`); a failed write is the OS error
    beneath it (torch reports only "unexpected pos ...")."""
    with replacing(path) as tmp:
        try:
            with open(tmp, "wb") as handle:
                torch.save(obj, handle)
        except RuntimeError as error:
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


# -- device and threads ------------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; ``cuda`` without a GPU, or ``cuda:N``
    beyond the GPUs torch sees, is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} was asked for, but torch sees no CUDA device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RuntimeError(f"device {name!r} was asked for, but torch sees {count} CUDA "
                               f"device(s): cuda:0 to cuda:{count - 1}")
    return device


def setup_torch(threads: int, seed: int, device: torch.device) -> None:
    """Threads for CPU kernels, seeds everywhere, and deterministic kernels on the CPU; on
    CUDA, ``device`` becomes the current device."""
    torch.set_num_threads(max(1, int(threads)))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        if device.index is not None:
            # Whatever names no device (pinned-memory threads, nvJPEG's handles, a bare
            # .cuda()) uses the current one: without this, `cuda:1` also creates a context on GPU 0.
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, amp: bool = True):
    """bf16 autocast on CUDA when ``amp``; on the CPU a no-op (float32 keeps CPU runs exact)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
