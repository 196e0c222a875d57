"""One line for every fault a user fixes rather than debugs.

A stage ends on such a fault with one line, on stderr and in the job's log
(:func:`exit_briefly_on`): a file of ours that cannot be read names the file, what is wrong
and the command that rebuilds it (:class:`ArtifactError`); an OS error names the path and
the errno's meaning (:func:`describe_os_error`); Ctrl-C ends it quietly.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys
from pathlib import Path


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
