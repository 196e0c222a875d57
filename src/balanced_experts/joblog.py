"""The job's log: one timestamped line per message, to the log file and stderr, every
attempt of the job kept in the file, each numbered from its header line, and the Python
stack of a native crash."""

from __future__ import annotations

import atexit
import datetime
import faulthandler
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .faults import describe_os_error
from .files import writing

HEADER = re.compile(r"^\S+ ===== \d{4}-\d\d-\d\d ", re.M)
"""The line that starts each attempt in a job's log, after its time stamp (:func:`attempt_header`)."""


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
    before appending to it. Each attempt starts with a header line (:func:`attempt_header`),
    numbered by the attempts the log already holds; ``attempt`` is Snakemake's count under
    ``--retries``, which starts at 1 again in every invocation of Snakemake. A native crash
    appends the Python stack to both files and stderr (:func:`report_native_crashes`).
    """
    logger = logging.getLogger(f"balanced_experts.{name}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    problem, earlier, log_files = None, None, []
    if log_path:
        try:
            log_files = _job_log_files(Path(log_path))
            handlers += [_JobLogFile(path, mode="a") for path in log_files]
            earlier = attempts_in(Path(log_path))
        except OSError as error:  # a full disk or a read-only folder: the job still runs, on stderr
            problem, log_files = f"warning: the job's log is not kept: {describe_os_error(error)}", []
    report_native_crashes(log_files)
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    if problem:
        logger.warning(problem)
    if log_path:
        number = earlier + 1 if earlier is not None else attempt
        logger.info(attempt_header(name, number, attempt))
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


def attempts_in(path: Path) -> int:
    """How many attempts the job's log at ``path`` holds: its header lines."""
    return len(HEADER.findall(path.read_text(errors="replace"))) if path.exists() else 0


def attempt_header(name: str, number: int | None, snakemake_attempt: int | None) -> str:
    """``===== <date> <job>: attempt <n>, pid <pid> =====``, the line that starts attempt
    ``number`` of job ``name`` (the date: the time starts every line). Snakemake's own count
    follows in brackets where it differs (``attempt 3 (Snakemake's attempt 1)``: the third
    run of the job, the first of this invocation)."""
    of = f"attempt {number}, " if number is not None else ""
    if snakemake_attempt is not None and snakemake_attempt != number:
        of = f"attempt {number} (Snakemake's attempt {snakemake_attempt}), "
    return f"===== {datetime.date.today().isoformat()} {name}: {of}pid {os.getpid()} ====="


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
