"""What every stage program needs: a logger that writes to the job's log, the device, threads."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch


def get_logger(name: str, log_path: str | Path | None) -> logging.Logger:
    """Log to the job's log file and to stderr, one timestamped line per message."""
    logger = logging.getLogger(f"balanced_experts.{name}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def exit_briefly_on(log: logging.Logger, *error_types: type[BaseException]) -> None:
    """End the stage on an uncaught error of ``error_types`` with its message alone.

    These are errors the user fixes (a bad list line, a missing image, a diverged run): the
    message names the culprit, and a traceback would only bury it. The message goes to the
    job's log as well, so Snakemake's failed-log display shows it. Other errors keep
    their traceback. Python still exits with status 1.
    """
    previous = sys.excepthook

    def hook(kind, error, traceback):
        if issubclass(kind, error_types):
            log.error(f"error: {error}")
        else:
            previous(kind, error, traceback)

    sys.excepthook = hook


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
