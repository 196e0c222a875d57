"""The compute device of a job, its threads and seeds, and its mixed precision."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


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
