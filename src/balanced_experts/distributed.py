"""Data-parallel training inside one job: one process per GPU, or CPU processes with gloo.

A training stage that is given more than one process starts itself again under
``torch.distributed.run`` (torchrun) on this node; each copy then joins the process
group, trains on its shard of every epoch, and only rank 0 writes outputs. The training
loop (:func:`balanced_experts.training.fit`) wraps the model in DistributedDataParallel
when a process group is initialised, and is unchanged otherwise.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist

from .device import resolve_device, setup_torch
from .faults import exit_briefly_on
from .joblog import get_logger


def under_torchrun() -> bool:
    """This process is one of the workers torchrun started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch_under_torchrun(processes: int) -> int:
    """Run this very program again as ``processes`` torchrun workers on this node.

    The workers get the same program file and arguments (for a Snakemake ``script:``
    stage, the script file Snakemake wrote, job object included). Returns torchrun's exit
    status, which is non-zero when any worker failed.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", sys.argv[0], *sys.argv[1:]]
    return subprocess.call(command)


def start_processes(device: torch.device, nproc: int = 0, gpus: int = 0) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)`` of this process of a training job given ``nproc``
    processes (0: one per GPU of the job, ``gpus``, on CUDA; one on the CPU). A job given
    several starts itself again under torchrun here and exits with its status; each worker
    joins the process group."""
    processes = int(nproc) or (int(gpus) if device.type == "cuda" else 1)
    if processes > 1 and not under_torchrun():
        raise SystemExit(relaunch_under_torchrun(processes))
    if under_torchrun():
        return join_process_group(device)
    return 0, 1, device


def start_training_job(name: str, device_setting: str, nproc: int, gpus: int, job_threads: int, seed: int,
                       log_path: str | None, attempt: int | None,
                       *error_types: type[BaseException]) -> tuple[int, int, torch.device, int, logging.Logger]:
    """The start of a training stage: its processes (:func:`start_processes`), the job's log
    (rank 0 writes it; the other ranks say only warnings), one-line exits on ``error_types``,
    and the threads (the job's CPUs shared by its processes) and seeds. Returns ``(rank,
    world_size, device, threads, log)``."""
    rank, world_size, device = start_processes(resolve_device(device_setting), nproc, gpus)
    log = get_logger(f"train_{name}", log_path if rank == 0 else None, attempt)
    if rank != 0:
        log.setLevel(logging.WARNING)
    exit_briefly_on(log, *error_types)
    threads = max(1, job_threads // world_size)
    setup_torch(threads, seed, device)
    return rank, world_size, device, threads, log


def join_process_group(device: torch.device) -> tuple[int, int, torch.device]:
    """Join torchrun's process group; returns ``(rank, world_size, device)``.

    NCCL on CUDA, each worker on the GPU of its local rank; gloo on the CPU.
    """
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def leave_process_group() -> None:
    """Leave the process group, if this process joined one (after training, before exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_shard(num_items: int, generator: torch.Generator, rank: int, world_size: int
                ) -> tuple[torch.Tensor, torch.Generator]:
    """This rank's item positions for one epoch, and a generator for its augmentation.

    Every rank draws the same permutation from ``generator`` (same seed, same draws, so
    the shared generator stays in step across ranks and in the epoch checkpoint), pads it
    with its first items to a multiple of ``world_size`` and takes every
    ``world_size``-th item from ``rank`` on: the ranks' shards are disjoint and equally
    long, as with torch's DistributedSampler. The augmentation generator is seeded from
    the shared one plus the rank, so ranks crop and flip independently.
    """
    order = torch.randperm(num_items, generator=generator)
    padded_length = -(-num_items // world_size) * world_size
    order = torch.cat([order, order[: padded_length - num_items]])
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return order[rank::world_size], torch.Generator().manual_seed(seed + rank)


def epoch_batches(source, targets, batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1):
    """``(train_batches(generator), steps per epoch)``: one epoch of shuffled, augmented
    batches of ``source`` (an :class:`balanced_experts.images.source.ImageSource`) with ``targets``.

    Under DDP the configured batch size stays the global one (same lr, same steps per
    epoch): each rank takes its share of it from its shard of the epoch (:func:`epoch_shard`).
    """
    if world_size == 1:
        def train_batches(generator):
            return source.batches(np.arange(len(source)), targets, batch_size, True, device, generator)

        return train_batches, -(-len(source) // batch_size)
    rank_batch_size = -(-batch_size // world_size)

    def train_batches(generator):
        positions, rank_generator = epoch_shard(len(source), generator, rank, world_size)
        return source.batches(positions, np.asarray(targets)[positions.numpy()], rank_batch_size, True, device,
                              rank_generator)

    shard_length = -(-len(source) // world_size)
    return train_batches, -(-shard_length // rank_batch_size)


def sync_batchnorm_layers(model: torch.nn.Module, device: torch.device, enabled: bool = True) -> int:
    """Make every BatchNorm layer of ``model`` a SyncBatchNorm, in place, when ``enabled`` and
    ``device`` is CUDA; returns how many were converted (0: left as they are).

    For a process group's training: each rank's BatchNorm would otherwise normalise with
    the statistics of its own share of the batch (16 images of Places-LT's 64 on 4 GPUs),
    and the running statistics would be those of rank 0's shares alone. Synchronised, they
    are those of the global batch, as on one GPU. The parameters and buffers stay the same
    objects (the optimizer's parameters, the state-dict names and the weights files do not
    change), and so does each layer's train or eval mode: a frozen layer kept in eval mode
    (:func:`balanced_experts.models.train_mode`) normalises with its running statistics and
    synchronises nothing; one kept in train mode synchronises its batch statistics.

    CUDA only: torch's SyncBatchNorm refuses CPU tensors in training, so CPU processes
    (gloo) keep per-process BatchNorm.
    """
    if not enabled or device.type != "cuda":
        return 0
    count = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the layers inside model
    return count
