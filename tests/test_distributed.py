"""Data-parallel training: the base model with 2 CPU processes (gloo, launched by torchrun
from the training stage) against 1, through real Snakemake on the tiny dataset; and the
epoch checkpoint under 2 gloo processes started by the test."""

import pandas as pd
import pytest
import torch

from conftest import copy_run, copy_workflow, snakemake, tiny_config

pytestmark = pytest.mark.slow

# Two processes see the same epochs in other batches and augmentations, so the runs are
# not bit-identical; on this tiny set (32 validation images, 3.1 points each) the final
# accuracies agree within this many points.
TOLERANCE_POINTS = 10.0


BASE = "results/tiny/seed0/models/base"


def _base_results(workdir):
    metrics = pd.read_csv(workdir / BASE / "metrics.csv")
    meta = torch.load(workdir / BASE / "weights.pt", weights_only=True)["meta"]
    return metrics, meta, (workdir / "results/tiny/seed0/logs/train_base.log").read_text()


def test_two_processes_reach_the_accuracy_of_one(tmp_path):
    config = tiny_config()
    config["datasets"]["tiny"]["base"]["epochs"] = 8
    one = copy_workflow(tmp_path / "one", config)
    snakemake(one, "--cores", "2", f"{BASE}/weights.pt")
    single, single_meta, single_log = _base_results(one)
    # The same data and image caches: the base model alone trained again, with 2 processes.
    two = copy_run(one, tmp_path / "two")
    snakemake(two, "--cores", "2", f"{BASE}/weights.pt", "--set-resources", "train_base:nproc=2",
              "--forcerun", "train_base")
    ddp, ddp_meta, ddp_log = _base_results(two)
    assert "2 processes (DistributedDataParallel), 16 images per process and step" in ddp_log
    assert "processes" not in single_log
    assert ddp["epoch"].tolist() == single["epoch"].tolist() == list(range(1, 9))
    # Both learn: at least twice chance (12.5 %) at the end, and within the tolerance of each other.
    print(f"final val_acc: 1 process {single['val_acc'].iloc[-1]:.2f} %, 2 processes {ddp['val_acc'].iloc[-1]:.2f} %; "
          f"best: {single_meta['best_val_acc']:.2f} % vs {ddp_meta['best_val_acc']:.2f} %")
    assert single["val_acc"].iloc[-1] > 25 and ddp["val_acc"].iloc[-1] > 25
    assert abs(ddp["val_acc"].iloc[-1] - single["val_acc"].iloc[-1]) <= TOLERANCE_POINTS
    assert abs(ddp_meta["best_val_acc"] - single_meta["best_val_acc"]) <= TOLERANCE_POINTS
    # The training loss of an epoch is summed over both ranks: it covers the whole set.
    assert ddp["train_loss"].iloc[-1] < ddp["train_loss"].iloc[0]


# -- the epoch checkpoint under DDP: rank 0 judges it, the others wait ---------------------

def _fit(workdir, epochs, rank=0, world_size=1, killed_after=None):
    """Train a tiny model on this rank's shard with the epoch checkpoint ``workdir/resume.pt``;
    save what the test checks to ``workdir/rank<rank>.pt``. ``killed_after``: the run is
    interrupted when epoch ``killed_after + 1`` starts, as a killed job would be."""
    from balanced_experts.models import build_model, set_learnable
    from balanced_experts.training import TrainSettings, fit

    torch.manual_seed(0)
    model = build_model({"name": "resnet_cifar8", "width": 2, "embed_dim": 8}, 4)
    generator = torch.Generator().manual_seed(123)
    x, y = torch.randn(32, 3, 8, 8, generator=generator), torch.arange(32) % 4
    first_draws = []  # the first number the shuffling generator draws, each epoch

    def train_batches(shuffle):
        if killed_after is not None and len(first_draws) == killed_after:
            raise KeyboardInterrupt
        order = torch.randperm(len(x), generator=shuffle)
        first_draws.append(int(order[0]))
        shard = order[rank::world_size]
        for start in range(0, len(shard), 8 // world_size):
            yield x[shard[start:start + 8 // world_size]], y[shard[start:start + 8 // world_size]]

    lines = []
    settings = TrainSettings(epochs=epochs, batch_size=8, lr=0.05, scheduler="constant", seed=0)
    fit(model, set_learnable(model, -1), train_batches, lambda: [(x, y)], steps_per_epoch=4,
        settings=settings, name="toy", metrics_path=workdir / "metrics.csv", log=lines.append,
        resume_path=workdir / "resume.pt", fingerprint="this run")
    torch.save({"lines": lines, "first_draws": first_draws, "model": model.state_dict()},
               workdir / f"rank{rank}.pt")


def _fit_rank(rank, workdir, epochs, slow_load):
    """One of two gloo processes. ``slow_load``: every torch.load takes a second, so that
    both ranks, which start fit together (a barrier), would be inside it at once if both
    read the checkpoint (the race)."""
    import datetime
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    if slow_load:
        real_load = torch.load

        def slow(*args, **kwargs):
            time.sleep(1.0)
            return real_load(*args, **kwargs)

        torch.load = slow
    dist.barrier()
    _fit(workdir, epochs, rank, 2)
    dist.destroy_process_group()


def _fit_two_ranks(workdir, epochs, slow_load=False):
    torch.multiprocessing.spawn(_fit_rank, args=(workdir, epochs, slow_load), nprocs=2)
    (workdir / "rendezvous").unlink(missing_ok=True)
    return [torch.load(workdir / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def _assert_same_weights(rank0, rank1):
    """The ranks' parameters agree (DDP); BatchNorm's running statistics are each rank's own."""
    for key, value in rank0["model"].items():
        if "running_" not in key and "num_batches" not in key:
            assert torch.equal(value, rank1["model"][key]), key


@pytest.mark.parametrize("stale", ["other settings", "unreadable"])
def test_a_stale_checkpoint_is_judged_and_removed_by_rank_0_alone(tmp_path, stale):
    """Both ranks would be inside torch.load at once (slow_load): had each judged and
    deleted the stale file, one would fail on the file the other had just deleted."""
    if stale == "unreadable":
        (tmp_path / "resume.pt").write_bytes(b"truncated")
    else:
        torch.save({"fingerprint": "another run", "epoch": 5}, tmp_path / "resume.pt")
    rank0, rank1 = _fit_two_ranks(tmp_path, epochs=2, slow_load=True)
    ignored = [line for line in rank0["lines"] if "ignoring" in line]
    assert len(ignored) == 1 and not any("resuming" in line for line in rank0["lines"])
    assert rank1["lines"] == []  # rank 0 speaks for the job
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["fingerprint"] == "this run"
    _assert_same_weights(rank0, rank1)


def test_every_rank_resumes_the_checkpoint_rank_0_accepted(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, epochs=4, killed_after=2)  # leaves its epoch-2 checkpoint of this run
    rank0, rank1 = _fit_two_ranks(tmp_path, epochs=4)
    assert any("resuming from epoch 2 of 4" in line for line in rank0["lines"])
    # Both ranks ran epochs 3 and 4 only, from the same restored shuffling generator.
    assert len(rank0["first_draws"]) == len(rank1["first_draws"]) == 2
    assert rank0["first_draws"] == rank1["first_draws"]
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2, 3, 4]
    _assert_same_weights(rank0, rank1)
