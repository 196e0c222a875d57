"""The job's device, threads, seeds and mixed precision (balanced_experts.device). The CUDA
checks with a stand-in GPU are in tests/test_gpu_path.py."""

import contextlib
import random

import numpy as np
import pytest
import torch

from balanced_experts.device import autocast, resolve_device, setup_torch


def test_auto_is_cuda_where_torch_sees_it_and_the_cpu_otherwise():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_setup_torch_seeds_every_generator_and_sets_the_threads():
    threads = torch.get_num_threads()
    try:
        draws = []
        for _ in range(2):
            setup_torch(1, 7, torch.device("cpu"))
            draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
            assert torch.get_num_threads() == 1
        assert draws[0] == draws[1]
        setup_torch(1, 8, torch.device("cpu"))
        assert (random.random(), np.random.rand(), torch.rand(1).item()) != draws[0]
    finally:
        torch.set_num_threads(threads)


def test_autocast_is_bf16_on_cuda_only():
    assert isinstance(autocast(torch.device("cpu")), contextlib.nullcontext)  # CPU runs stay float32
    assert isinstance(autocast(torch.device("cuda"), amp=False), contextlib.nullcontext)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        context = autocast(torch.device("cuda"))
    assert isinstance(context, torch.autocast) and (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)
