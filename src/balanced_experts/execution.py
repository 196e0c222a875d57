"""How the jobs run: the ``execution`` section of the config (device, threads, precision).

One :class:`ExecutionSettings` is read once per job (and once by the Snakefile, for the
rules' threads and ``gpu`` resource); its fields' defaults are the only defaults of the
section (config.yaml shows the same values, which a test keeps equal). It is never part
of a rule's params, so changing it reruns nothing. No torch here: the Snakefile imports
this module while it builds the DAG.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass

NVIDIA_DEVICE_FILES = "/dev/nvidia[0-9]*"
"""The device files of NVIDIA GPUs: a file check, where importing torch would slow every parse."""


@dataclass(frozen=True)
class ExecutionSettings:
    """The ``execution`` section; keys it leaves out take these defaults."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N  (auto: CUDA when torch sees a GPU)
    eval_batch_size: int = 512  # validation, logits and cached-feature passes
    train_threads: int = 2  # the base model's training job
    expert_threads: int = 1  # each expert's (and decoupled classifier's) job: they train side by side
    logits_threads: int = 1
    amp: bool = True  # bf16 autocast on CUDA; the CPU always computes in float32
    compile: bool = False  # torch.compile the model in training and logits jobs
    decode_on_device: bool = False  # file-based datasets: JPEGs decoded on the job's device
    sync_batchnorm: bool = True  # several GPUs per training job: BatchNorm over the global batch

    @classmethod
    def from_config(cls, section: dict | None) -> "ExecutionSettings":
        """The config's ``execution`` section (schema-checked: no unknown keys)."""
        return cls(**(section or {}))

    def may_use_cuda(self) -> bool:
        """A job may run on CUDA: ``device`` is ``cuda[:N]``, or ``auto`` on a machine with
        an NVIDIA GPU."""
        if self.device.startswith("cuda"):
            return True
        return self.device == "auto" and bool(glob.glob(NVIDIA_DEVICE_FILES))
