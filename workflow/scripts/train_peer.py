"""Stage: train a peer method (balanced_experts.peers): the base model's task (every image,
the dataset's backbone, from the pretrained trunk where the base model has one) with the
peer's classifier head, or the multi-expert model of RIDE and SADE, trained on the base
model's recipe and seed with the peer's loss.

Steps (main), as train.py's: start the processes; build the peer's model; train it on every
training image with the peer's epoch loss (tasks.fit_task); save the weights with the class
prior their probabilities carry (the report's prior adaptation reads it).
"""


import numpy as np

from balanced_experts.distributed import leave_process_group, start_training_job
from balanced_experts.execution import ExecutionSettings
from balanced_experts.images.decoding import ImageFileError
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import ListFormatError, check_labels_cover, read_list
from balanced_experts.peers import peer_settings
from balanced_experts.pretrained import PretrainedWeightsError
from balanced_experts.tasks import fit_task, save_weights
from balanced_experts.training import NonFiniteLoss, TrainSettings, job_checkpoint


def main(snakemake) -> None:
    # The job, as plain values: nothing below reads `snakemake`.
    name = snakemake.wildcards.peer
    params, input_files = dict(snakemake.params.items()), list(snakemake.input)
    train_path, val_path = snakemake.input.train, snakemake.input.val
    train_cache, val_cache = snakemake.input.train_cache, snakemake.input.val_cache
    weights, metrics = snakemake.output.weights, snakemake.output.metrics
    log_path, attempt, job_threads = snakemake.log[0], snakemake.resources.get("attempt"), snakemake.threads
    nproc, gpus = snakemake.resources.get("nproc", 0), snakemake.resources.get("gpu", 0)
    execution = ExecutionSettings.from_config(snakemake.config.get("execution"))

    settings, peer = TrainSettings.from_config(params["train"]), peer_settings(name, params["peer"])

    # The processes (several: under torchrun, rank 0 speaks for the job), the log, threads and seeds.
    rank, world_size, device, threads, log = start_training_job(
        name, execution.device, nproc, gpus, job_threads, settings.seed, log_path, attempt,
        ListFormatError, ImageFileError, NonFiniteLoss)

    # The model: the base model's, with the peer's head (a multi-expert peer's: its experts).
    train_list, val_list = read_list(train_path), read_list(val_path)
    try:
        task = peer.task(train_list, val_list, params["backbone"], log.info)
    except PretrainedWeightsError as error:
        # Name the config key: the user fixes the config, not this program.
        message = f"{params['config_key']}.backbone.pretrained.path: {error}"
        log.error(message)
        raise SystemExit(message)
    check_labels_cover(val_list, task.num_classes)
    train_counts = np.bincount(train_list.labels, minlength=task.num_classes)
    log.info(f"{name}: {peer}")

    # Train it with its loss (epoch checkpoint: as train.py's).
    spec = InputSpec.from_config(params["input"], default_workers=threads)
    checkpoint = job_checkpoint(weights, name, params, input_files)
    result = fit_task(task, name, settings, params["root"], (train_list, val_list), (train_cache, val_cache), spec,
                      execution, device, rank, world_size, metrics, checkpoint, log.info,
                      loss=peer.loss(train_counts, settings.epochs, device))
    leave_process_group()

    # Save the best epoch's weights, with the prior they carry (it may depend on that epoch).
    if rank == 0:
        task.meta["prior"] = peer.prior(train_counts, result["best_epoch"], settings.epochs).tolist()
        save_weights(weights, task, result, name)
        log.info(f"wrote {weights}")


if __name__ == "__main__":
    main(snakemake)
