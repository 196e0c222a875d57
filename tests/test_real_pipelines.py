"""Real-format datasets through real Snakemake: an ImageNet-LT-style root of JPEG files and
list files, a CIFAR python archive, the shared Places-LT lists, and the errors a user
gets for a wrong config before any job starts."""

import copy
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torchvision.models.resnet import BasicBlock, ResNet

from balanced_experts.configuration import resolve_dataset
from balanced_experts.logits import read_logits
from conftest import C100_TARGETS, REPO, SHARED_DATA, TINY_DATASET, copy_workflow, planned_jobs, snakemake, tiny_config
from balanced_experts import holdout
from realdata import caffe_style, make_imagenet_lt_root, make_inaturalist_lists, resnet10_state_dict

pytestmark = pytest.mark.slow

PLACES = SHARED_DATA / "places_lt"


def mini_imagenet_dataset(data_paths: dict, pretrained: str | None = None) -> dict:
    """TINY_DATASET's training settings on an ImageNet-LT-style root: file loader with the
    ImageNet augmentation, ResNet-10, optionally a pretrained trunk in the Caffe format."""
    dataset = copy.deepcopy(TINY_DATASET)
    dataset["data"] = {"kind": "lists", **data_paths}
    dataset["class_splits"] = {"many_threshold": 12, "few_threshold": 5}  # 2 / 2 / 2 classes
    dataset["input"] = {"size": 16, "resize": 18, "augment": "imagenet", "preload": False, "workers": 0}
    dataset["backbone"] = {"name": "resnet10", "embed_dim": 16}
    if pretrained:
        dataset["backbone"]["pretrained"] = {"path": pretrained, "format": "caffe"}
    return dataset


def config_with(**datasets) -> dict:
    config = tiny_config()
    config["datasets"].update(datasets)
    return config


def repo_dataset(name: str) -> dict:
    """A preset of the repository's config.yaml, with what it inherits from its `defaults`."""
    return resolve_dataset(yaml.safe_load((REPO / "config.yaml").read_text()), name)


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    return make_imagenet_lt_root(tmp_path_factory.mktemp("imagenet_lt"))


def test_user_lists_dataset_from_an_extra_configfile_runs_the_whole_dag(user_data_run):
    """A user's `lists` dataset in its own file, given with --configfile: its data section,
    its image size and a backbone name. The rest comes from `defaults` (here the tiny
    training settings with a file loader, so that the test is quick): conftest's user_data_run."""
    workdir, mini_root = user_data_run
    results = workdir / "results/mini"
    classes = pd.read_csv(results / "classes.csv")
    assert classes["split"].value_counts().to_dict() == {"many": 2, "medium": 2, "few": 2}
    report = pd.read_csv(results / "report.csv")
    # The default run's peers (conftest: RIDE and SADE off in `defaults`, as the synthetic preset has them).
    assert {"base", "experts_calibrated", "oracle", "balanced_softmax", "ldam_drw"} <= set(report["method"])
    assert not {"ride", "sade"} & set(report["method"])
    test_lines = open(mini_root["test_list"]).read().splitlines()
    table = read_logits(results / "seed0/logits/few/test.parquet")
    assert list(table.paths) == [line.rsplit(" ", 1)[0] for line in test_lines]
    assert not (results / "data").exists() and not (results / "cache").exists()  # read in place
    resolved = yaml.safe_load((results / "resolved_config.yaml").read_text())
    assert resolved["input"] == {"augment": "imagenet", "preload": False, "workers": 0, "size": 16}
    assert resolved["backbone"] == {"embed_dim": 16, "name": "resnet10"} and resolved["base"]["epochs"] == 2
    assert planned_jobs(workdir, "results/mini/report.csv", "--configfile", "mini.yaml") == set()


def test_mini_cifar_archive_to_a_trained_models_test_logits(user_data_run):
    """The c100 dataset (conftest.cifar_dataset) up to its classes and its base model's test
    logits (conftest.C100_TARGETS): the archive's images and lists, their classes, a model
    trained and scored on them."""
    workdir, _ = user_data_run
    results = workdir / "results/c100"
    classes = pd.read_csv(results / "classes.csv")
    assert classes["train_count"].tolist() == [36, 22, 14, 9, 5, 3]
    assert classes["split"].tolist() == ["many", "many", "medium", "medium", "few", "few"]
    test_lines = (results / "data/test.txt").read_text().splitlines()
    assert len(test_lines) == 30
    table = read_logits(workdir / C100_TARGETS[1])
    assert list(table.paths) == [line.rsplit(" ", 1)[0] for line in test_lines]
    assert table.logits.shape == (30, 6) and np.isfinite(table.logits).all()
    assert planned_jobs(workdir, *C100_TARGETS) == set()


def test_default_target_ignores_real_datasets_absent_here(tmp_path):
    """The repository's own config (places, imagenet, cifar roots absent): the default run plans."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    workdir = copy_workflow(tmp_path / "wf", config)
    rules = {rule for rule, _ in planned_jobs(workdir)}
    assert rules == {"synthetic_data", "image_cache", "classes", "train_base", "train_expert", "train_decoupled",
                     "train_peer", "logits", "calibrate", "report", "aggregate", "summary", "resolved_config"}


def failure(workdir, target) -> str:
    started = time.perf_counter()
    result = snakemake(workdir, "-n", "--cores", "1", target, check=False)
    assert result.returncode != 0
    assert time.perf_counter() - started < 60
    return result.stdout + result.stderr


def test_missing_data_paths_fail_at_dag_build_naming_the_key(tmp_path):
    places = repo_dataset("places")
    workdir = copy_workflow(tmp_path / "wf", config_with(places=places, cifar100_lt=repo_dataset("cifar100_lt")))
    out = failure(workdir, "results/places/classes.csv")
    assert "config key datasets.places.data.train_list: data/places_lt/Places_LT_train.txt does not exist" in out
    out = failure(workdir, "results/places/seed0/models/base/weights.pt")
    assert "config key datasets.places.data.root: data/places365 is not an existing folder" in out
    assert "config key datasets.cifar100_lt.data.cifar.archive: data/cifar/cifar-100-python.tar.gz " \
           "does not exist" in failure(workdir, "results/cifar100_lt/report.csv")

    (tmp_path / "images").mkdir()
    (tmp_path / "images/a.jpg").write_bytes(b"")  # listed images must exist; none is read here
    places["data"]["root"] = str(tmp_path / "images")
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.txt").write_text("a.jpg 0\n")
        places["data"][f"{split}_list"] = str(tmp_path / f"{split}.txt")
    del places["data"]["val_list"]
    workdir = copy_workflow(tmp_path / "wf2", config_with(places=places))
    # A lists dataset without one of its four paths is a config error at parse time.
    assert "datasets.places.data: kind 'lists' needs val_list" in \
        failure(workdir, "results/places/seed0/models/base/weights.pt")
    places["data"]["val_list"] = str(tmp_path / "val.txt")
    workdir = copy_workflow(tmp_path / "wf3", config_with(places=places))
    assert "config key datasets.places.backbone.pretrained.path: data/pretrained/caffe_resnet152.pth " \
           "does not exist" in failure(workdir, "results/places/report.csv")


def test_list_errors_name_file_line_and_missing_classes(tmp_path, mini_root):
    lines = open(mini_root["train_list"]).read().splitlines()
    broken = tmp_path / "broken.txt"
    broken.write_text("\n".join(lines[:2] + ["train/n00000000/no_label.JPEG"] + lines[2:]) + "\n")
    gap = tmp_path / "gap.txt"  # class 2 relabelled to 6: ids 0, 1, 3, 4, 5, 6
    gap.write_text("\n".join(line[:-2] + " 6" if line.endswith(" 2") else line for line in lines) + "\n")
    val_gap = tmp_path / "val_gap.txt"  # no class 5 in val
    val_gap.write_text("".join(line + "\n" for line in open(mini_root["val_list"]).read().splitlines()
                               if not line.endswith(" 5")))
    workdir = copy_workflow(tmp_path / "wf", config_with(
        broken=mini_imagenet_dataset({**mini_root, "train_list": str(broken)}),
        gap=mini_imagenet_dataset({**mini_root, "train_list": str(gap)}),
        val_gap=mini_imagenet_dataset({**mini_root, "val_list": str(val_gap)})))
    # Found while Snakemake builds the DAG (a dry run), before any job starts.
    out = failure(workdir, "results/broken/classes.csv")
    assert "config key datasets.broken.data.train_list: " in out
    assert "broken.txt:3: expected 'relative/path label'" in out
    out = failure(workdir, "results/gap/classes.csv")
    assert "gap.txt: no entries for class ids 2; labels must cover 0..6" in out
    out = failure(workdir, "results/val_gap/seed0/models/base/weights.pt")
    assert "config key datasets.val_gap.data.val_list: " in out
    assert "val_gap.txt: no entries for class ids 5; labels must cover 0..5" in out
    # The classes job reads the train list alone and is not held up by the val list.
    assert ("classes", "setting=val_gap") in planned_jobs(workdir, "results/val_gap/classes.csv")


def test_pretrained_trunk_loads_and_a_mismatching_file_names_the_config_key(tmp_path, mini_root):
    good = tmp_path / "caffe_resnet10.pth"
    torch.save(caffe_style(resnet10_state_dict()), good)
    wrong = tmp_path / "resnet18.pth"
    torch.save(ResNet(BasicBlock, [2, 2, 2, 2]).state_dict(), wrong)
    workdir = copy_workflow(tmp_path / "wf", config_with(mini=mini_imagenet_dataset(mini_root, str(good)),
                                                         wrong=mini_imagenet_dataset(mini_root, str(wrong))))
    snakemake(workdir, "--cores", "1", "results/mini/seed0/models/base/weights.pt")
    assert "trunk initialised from" in (workdir / "results/mini/seed0/logs/train_base.log").read_text()
    result = snakemake(workdir, "--cores", "1", "results/wrong/seed0/models/base/weights.pt", check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "datasets.wrong.backbone.pretrained.path:" in out and "does not match the backbone" in out


def empty_files_for(data: dict, root: Path) -> Path:
    """An empty file under ``root`` for every image the three lists of ``data`` name."""
    folders = set()
    for split in ("train", "val", "test"):
        for line in Path(data[f"{split}_list"]).read_text().splitlines():
            path = os.path.join(root, line.rsplit(" ", 1)[0])
            folder = os.path.dirname(path)
            if folder not in folders:  # iNaturalist's shape: 461,939 files in 8,142 folders
                os.makedirs(folder, exist_ok=True)
                folders.add(folder)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    return root


@pytest.mark.skipif(not PLACES.exists(), reason="shared Places-LT lists not present")
def test_places_lt_classes_and_full_plan_from_the_real_lists(tmp_path):
    places = repo_dataset("places")
    places["data"].update({f"{s}_list": str(PLACES / f"Places_LT_{s}.txt") for s in ("train", "val", "test")})
    places["data"]["root"] = str(tmp_path / "no-images-here")
    workdir = copy_workflow(tmp_path / "wf", config_with(places=places))
    # classes.csv needs the train list alone: no image root, no images.
    snakemake(workdir, "--cores", "1", "results/places/classes.csv")
    classes = pd.read_csv(workdir / "results/places/classes.csv")
    assert len(classes) == 365 and classes["train_count"].sum() == 62500
    assert classes["split"].value_counts().to_dict() == {"many": 131, "medium": 163, "few": 71}

    places["class_splits"]["many_inclusive"] = True  # the original experts code: many >= 100
    # A root of empty files: the plan checks that every listed image exists, and reads none.
    places["data"]["root"] = str(empty_files_for(places["data"], tmp_path / "places365"))
    weights = tmp_path / "caffe_resnet152.pth"
    weights.write_bytes(b"")  # the plan needs the file to exist, not to be read
    places["backbone"]["pretrained"]["path"] = str(weights)
    workdir_config = config_with(places=places)
    (workdir / "config.yaml").write_text(yaml.safe_dump(workdir_config, sort_keys=False))
    started = time.perf_counter()
    jobs = planned_jobs(workdir, "results/places/report.csv")
    seconds = time.perf_counter() - started
    print(f"places dry run: {len(jobs)} jobs in {seconds:.1f} s")
    rules = [rule for rule, _ in jobs]
    assert sorted(set(rules)) == ["aggregate", "calibrate", "classes", "logits", "report", "resolved_config",
                                  "sade_test_time", "train_base", "train_decoupled", "train_expert", "train_peer"]
    # classes, base, cRT, LWS, 3 experts, 4 peers, logits (base val+test, cRT and LWS test, 3
    # experts val+test, the peers' test), SADE's test-time aggregation, calibrate, the seed's
    # report, the report over seeds and the resolved config
    assert len(jobs) == 30 and rules.count("logits") == 14 and rules.count("train_peer") == 4
    snakemake(workdir, "--cores", "1", "results/places/classes.csv")
    classes = pd.read_csv(workdir / "results/places/classes.csv")
    assert classes["split"].value_counts().to_dict() == {"many": 132, "medium": 162, "few": 71}


def test_inaturalist_preset_plans_from_lists_of_its_shape(tmp_path):
    """The inaturalist preset on generated lists of iNaturalist 2018's shape (8,142 classes,
    437,513 train and 24,426 val entries) and a root of empty files: the missing list's one
    line, the held-out validation list, the field's class splits and the whole plan."""
    official = make_inaturalist_lists(tmp_path / "lists")
    inat = repo_dataset("inaturalist")
    kept, heldout = tmp_path / "lists/kept.txt", tmp_path / "lists/heldout.txt"
    inat["data"].update(train_list=str(kept), val_list=str(heldout), test_list=str(official["val"]),
                        root=str(tmp_path / "no-images-here"))
    workdir = copy_workflow(tmp_path / "wf", config_with(inaturalist=inat))
    assert f"config key datasets.inaturalist.data.train_list: {kept} does not exist" in \
        failure(workdir, "results/inaturalist/classes.csv")

    holdout.main([str(official["train"]), "--train-out", str(kept), "--val-out", str(heldout)])
    snakemake(workdir, "--cores", "1", "results/inaturalist/classes.csv")
    classes = pd.read_csv(workdir / "results/inaturalist/classes.csv")
    assert len(classes) == 8142 and classes["train_count"].sum() == 437_513 - len(heldout.read_text().splitlines())
    # The standard rule's splits on the official counts (realdata), from the kept list's thresholds.
    assert classes["split"].value_counts().to_dict() == {"medium": 4076, "few": 3224, "many": 842}

    inat["data"]["root"] = str(empty_files_for(inat["data"], tmp_path / "inaturalist2018"))
    (workdir / "config.yaml").write_text(yaml.safe_dump(config_with(inaturalist=inat), sort_keys=False))
    started = time.perf_counter()
    jobs = planned_jobs(workdir, "results/inaturalist/report.csv")
    print(f"inaturalist dry run: {len(jobs)} jobs in {time.perf_counter() - started:.1f} s")
    rules = [rule for rule, _ in jobs]  # places' 30 jobs but classes, made above
    assert len(jobs) == 29 and rules.count("logits") == 14 and rules.count("train_peer") == 4
