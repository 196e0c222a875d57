"""Stage: train the base model, or one expert initialised from it (one loop for both).

Steps (main): start the processes; build the model and choose the images it learns from
and is validated on (balanced_experts.tasks: the base model every image, an expert its
split's images plus reject images); train it on those images (tasks.fit_task); save the
weights. (A peer trains in its own program, train_peer.py: editing a peer's loss retrains
the peers alone.)

With more than one process (resource `nproc`, by default the job's `gpu` count on CUDA),
the stage starts itself again under torchrun and trains with DistributedDataParallel;
rank 0 writes the log, metrics, epoch checkpoint and weights.
"""

import logging

from balanced_experts.distributed import leave_process_group, start_training_job
from balanced_experts.execution import ExecutionSettings
from balanced_experts.experts import ExpertSettings
from balanced_experts.images.decoding import ImageFileError
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import ImageList, ListFormatError, check_labels_cover, read_list
from balanced_experts.pretrained import PretrainedWeightsError
from balanced_experts.tasks import Task, base_task, expert_task, fit_task, save_weights
from balanced_experts.training import NonFiniteLoss, TrainSettings, job_checkpoint


def make_task(name: str, train_list: ImageList, val_list: ImageList, params: dict, classes: str | None,
              base: str | None, seed: int, log: logging.Logger, rank: int) -> Task:
    """The base model's task, or expert ``name``'s (from the classes table and the base weights)."""
    if name != "base":
        expert = ExpertSettings.from_config(params["train"])
        # A warning once per job, from rank 0 (every rank's logger writes warnings to stderr).
        warn = log.warning if rank == 0 else lambda _: None
        return expert_task(name, train_list, val_list, classes, base, expert, seed, log.info, warn,
                           config_key=f"{params['config_key']}.experts")
    try:
        return base_task(train_list, val_list, params["backbone"], log.info)
    except PretrainedWeightsError as error:
        # Name the config key: the user fixes the config, not this program.
        message = f"{params['config_key']}.backbone.pretrained.path: {error}"
        log.error(message)
        raise SystemExit(message)


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    name = snakemake.wildcards.get("expert", "base")
    params, input_files = dict(snakemake.params.items()), list(snakemake.input)
    train_path, val_path = snakemake.input.train, snakemake.input.val
    train_cache, val_cache = snakemake.input.train_cache, snakemake.input.val_cache
    classes, base = snakemake.input.get("classes"), snakemake.input.get("base")  # an expert's
    weights, metrics = snakemake.output.weights, snakemake.output.metrics
    log_path, attempt, job_threads = snakemake.log[0], snakemake.resources.get("attempt"), snakemake.threads
    nproc, gpus = snakemake.resources.get("nproc", 0), snakemake.resources.get("gpu", 0)
    execution = ExecutionSettings.from_config(snakemake.config.get("execution"))

    settings = TrainSettings.from_config(params["train"])

    # The processes (several: under torchrun, rank 0 speaks for the job), the log, threads and seeds.
    rank, world_size, device, threads, log = start_training_job(
        name, execution.device, nproc, gpus, job_threads, settings.seed, log_path, attempt,
        ListFormatError, ImageFileError, NonFiniteLoss)

    # The model, and which images it learns from and is validated on.
    train_list, val_list = read_list(train_path), read_list(val_path)
    task = make_task(name, train_list, val_list, params, classes, base, settings.seed, log, rank)
    check_labels_cover(val_list, task.num_classes)

    # Train it on its images. The epoch checkpoint, resumed only by a run of the same model,
    # params and input files, stays after the weights are written, until a job that reads
    # them removes it.
    spec = InputSpec.from_config(params["input"], default_workers=threads)
    checkpoint = job_checkpoint(weights, name, params, input_files)
    result = fit_task(task, name, settings, params["root"], (train_list, val_list), (train_cache, val_cache), spec,
                      execution, device, rank, world_size, metrics, checkpoint, log.info)
    leave_process_group()

    # Save the best epoch's weights.
    if rank == 0:
        save_weights(weights, task, result, name)
        log.info(f"wrote {weights}")


if __name__ == "__main__":
    main(snakemake)
