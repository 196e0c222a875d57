"""What a training job trains (balanced_experts.tasks), called directly: the base model's
task, an expert's from a real classes table and a real base checkpoint, the weights file
each ends as, and the batches of an epoch, in one process and in each of several."""

import numpy as np
import pytest
import torch

from balanced_experts.distributed import epoch_batches
from balanced_experts.experts import REJECT, ExpertSettings
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import read_list, write_list
from balanced_experts.models import load_model
from balanced_experts.pretrained import PretrainedWeightsError
from balanced_experts.splits import SplitRule, class_table
from balanced_experts.synthetic import SyntheticSpec, generate
from balanced_experts.tasks import base_task, expert_task, save_weights

BACKBONE = {"name": "resnet_cifar8", "width": 4, "embed_dim": 16}
# 6 classes, 40 -> 3 training images; many > 20, few < 8: classes 0-1 many, 2-3 medium, 4-5 few.
TRAIN_COUNTS = [40, 30, 15, 10, 5, 3]


@pytest.fixture
def lists(tmp_path):
    """Real train and val list files (the tasks read labels, never images)."""
    train_labels = np.repeat(np.arange(len(TRAIN_COUNTS)), TRAIN_COUNTS)
    val_labels = np.repeat(np.arange(len(TRAIN_COUNTS)), 4)
    for split, labels in (("train", train_labels), ("val", val_labels)):
        write_list(tmp_path / f"{split}.txt", [f"{split}/{i}.png" for i in range(len(labels))], labels)
    return read_list(tmp_path / "train.txt"), read_list(tmp_path / "val.txt")


@pytest.fixture
def base_checkpoint(tmp_path, lists):
    """The classes table as the classes stage writes it, and a base model's weights file as
    the base model's job writes it: its best epoch's weights, not its last."""
    train, val = lists
    torch.manual_seed(0)
    task = base_task(train, val, BACKBONE)
    best = {k: v + 1 if v.is_floating_point() else v for k, v in task.model.state_dict().items()}
    save_weights(tmp_path / "base.pt", task, {"state_dict": best, "best_epoch": 3, "best_val_acc": 41.5}, "base")
    classes = tmp_path / "classes.csv"
    class_table(train.labels, train.num_classes, SplitRule(many_threshold=20, few_threshold=8)).to_csv(
        classes, index=False)
    return classes, tmp_path / "base.pt", best


def test_the_base_task_learns_every_class_from_every_image(lists):
    train, val = lists
    task = base_task(train, val, BACKBONE)
    assert task.num_classes == 6 and task.outputs == list(range(6))
    assert task.model.classifier.out_features == 6 and task.model.feature_dim == 16
    np.testing.assert_array_equal(task.train_rows, np.arange(len(train)))
    np.testing.assert_array_equal(task.train_targets, train.labels)
    np.testing.assert_array_equal(task.val_targets, val.labels)
    assert len(task.parameters) == len(list(task.model.parameters())) and task.meta == {}


def test_a_missing_pretrained_file_is_an_error_naming_it(lists, tmp_path):
    backbone = {**BACKBONE, "pretrained": {"path": str(tmp_path / "absent.pth")}}
    with pytest.raises(PretrainedWeightsError, match="absent.pth does not exist"):
        base_task(*lists, backbone)


def test_saved_weights_hold_the_best_epoch_and_the_metadata_later_stages_read(base_checkpoint):
    _, path, best = base_checkpoint
    model, meta = load_model(path)
    assert meta == {"model": "base", "backbone": BACKBONE, "num_classes": 6, "output_class_ids": list(range(6)),
                    "best_epoch": 3, "best_val_acc": 41.5}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, best[key], msg=key)


@pytest.mark.parametrize("split, classes, num_learnable, learnable", [
    ("many", [0, 1], 1, ["classifier."]),
    ("medium", [2, 3], 2, ["classifier.", "fc."]),
    ("few", [4, 5], 3, ["classifier.", "fc.", "trunk.layer3."]),
    ("few", [4, 5], -1, [""]),
])
def test_an_expert_starts_from_the_base_trunk_with_a_fresh_head(lists, base_checkpoint, split, classes,
                                                                 num_learnable, learnable):
    train, val = lists
    classes_csv, base_path, best = base_checkpoint
    lines = []
    settings = ExpertSettings(open_ratio=2, num_learnable=num_learnable)
    task = expert_task(split, train, val, classes_csv, base_path, settings, seed=7, log=lines.append)
    # Outputs: the split's classes in id order, then reject; the dataset's class count kept.
    assert task.outputs == [*classes, REJECT] and task.num_classes == 6
    assert task.model.classifier.out_features == 3 and task.backbone == BACKBONE
    # The base model's trunk and fc (its best epoch's), a new classifier.
    state = task.model.state_dict()
    for key, value in state.items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(value, best[key], msg=key)
    assert state["classifier.weight"].shape == (3, 16)
    # It learns exactly the modules num_learnable names.
    learned = {name for name, p in task.model.named_parameters() if p.requires_grad}
    assert learned == {name for name, _ in task.model.named_parameters() if name.startswith(tuple(learnable))}
    assert {id(p) for p in task.parameters} == {id(p) for p in task.model.parameters() if p.requires_grad}
    # Its images: every one of its split's, plus round(N / open_ratio) others (as many as
    # there are) as reject.
    inside = np.isin(train.labels, classes)
    in_split = task.train_targets < len(classes)
    np.testing.assert_array_equal(np.sort(task.train_rows[in_split]), np.flatnonzero(inside))
    assert (~in_split).sum() == min(round(inside.sum() / 2), (~inside).sum())
    assert not inside[task.train_rows[~in_split]].any()
    np.testing.assert_array_equal(np.asarray(classes)[task.train_targets[in_split]],
                                  train.labels[task.train_rows[in_split]])
    # Validation: its split's images and as many others, scored as reject.
    val_inside = task.val_targets < len(classes)
    assert val_inside.sum() == (~val_inside).sum() == 8
    assert task.meta == {"open_ratio": 2.0, "num_learnable": num_learnable}
    assert lines == [f"{split} expert: 2 classes, {len(task.train_rows)} training images ({(~in_split).sum()} "
                     f"reject, open_ratio 2), 16 validation images (8 reject), num_learnable {num_learnable}"]


def test_an_experts_weights_carry_its_outputs_and_settings(lists, base_checkpoint, tmp_path):
    train, val = lists
    classes_csv, base_path, _ = base_checkpoint
    task = expert_task("few", train, val, classes_csv, base_path, ExpertSettings(open_ratio=4, num_learnable=3), 0)
    state = task.model.state_dict()
    save_weights(tmp_path / "few.pt", task, {"state_dict": state, "best_epoch": 2, "best_val_acc": 62.5}, "few")
    model, meta = load_model(tmp_path / "few.pt")
    assert meta == {"model": "few", "backbone": BACKBONE, "num_classes": 6, "output_class_ids": [4, 5, REJECT],
                    "best_epoch": 2, "best_val_acc": 62.5, "open_ratio": 4.0, "num_learnable": 3}
    assert model.classifier.out_features == 3
    torch.testing.assert_close(model.state_dict()["classifier.weight"], state["classifier.weight"])


def test_the_reject_sample_follows_the_seed(lists, base_checkpoint):
    train, val = lists
    classes_csv, base_path, _ = base_checkpoint
    settings = ExpertSettings(open_ratio=1, num_learnable=1)
    rows = [expert_task("few", train, val, classes_csv, base_path, settings, seed).train_rows for seed in (0, 0, 1)]
    np.testing.assert_array_equal(rows[0], rows[1])
    assert not np.array_equal(rows[0], rows[2])


def test_an_epoch_covers_the_images_once_in_one_process_or_sharded_over_several(tmp_path):
    """One process: shuffled batches of the configured size. Several: each rank takes its
    share of every global batch from its own shard; the shards together cover every image
    (padded to equal length) and the steps per epoch stay those of the global batch."""
    generate(SyntheticSpec(num_classes=3, max_count=10, imbalance=2, val_per_class=1, test_per_class=1,
                           image_size=8, seed=0), tmp_path, log=lambda _: None)
    image_list = read_list(tmp_path / "train.txt")  # 10 + 7 + 5 images
    source = ImageSource.open(tmp_path, image_list, InputSpec(size=8, augment="none", preload=True, workers=0))
    positions = np.arange(len(image_list))  # each image's target: its position
    cpu = torch.device("cpu")
    train_batches, steps = epoch_batches(source, positions, 8, cpu)
    batches = [y for _, y in train_batches(torch.Generator().manual_seed(0))]
    assert steps == len(batches) == 3 and [len(y) for y in batches] == [8, 8, 6]
    assert sorted(torch.cat(batches).tolist()) == positions.tolist()
    shards = []
    for rank in range(2):
        train_batches, steps = epoch_batches(source, positions, 8, cpu, rank, 2)
        shard = [y for _, y in train_batches(torch.Generator().manual_seed(0))]
        assert steps == len(shard) == 3 and [len(y) for y in shard] == [4, 4, 3]
        shards.append(torch.cat(shard).tolist())
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == positions.tolist()
