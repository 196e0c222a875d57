"""The job's log: one timestamped line per message, to the log file and stderr, and every
attempt of the job kept in the file."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import sys
from pathlib import Path

from .faults import describe_os_error
from .files import writing


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
    ``--retries``) and the process id.
    """
    logger = logging.getLogger(f"balanced_experts.{name}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    problem = None
    if log_path:
        try:
            handlers += [_JobLogFile(path, mode="a") for path in _job_log_files(Path(log_path))]
        except OSError as error:  # a full disk or a read-only folder: the job still runs, on stderr
            problem = f"warning: the job's log is not kept: {describe_os_error(error)}"
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
