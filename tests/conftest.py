"""Shared test helpers: a tiny workflow copy and a real Snakemake runner."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The shared real list files (Places-LT, ImageNet-LT) live in shared/ beside the clone; a
# checkout elsewhere (e.g. a git worktree) names them with BALANCED_EXPERTS_SHARED_DATA.
SHARED_DATA = REPO.parent / "shared" / "data"
if not SHARED_DATA.exists() and os.environ.get("BALANCED_EXPERTS_SHARED_DATA"):
    SHARED_DATA = Path(os.environ["BALANCED_EXPERTS_SHARED_DATA"])

# A dataset small enough that every stage takes seconds on one CPU core:
# 8 classes, 48 -> 4 training images, 12x12 pixels, a 4-wide ResNet-8.
TINY_DATASET = {
    "data": {
        "kind": "synthetic",
        "synthetic": {"num_classes": 8, "max_count": 48, "imbalance": 12, "val_per_class": 4,
                      "test_per_class": 6, "image_size": 12, "difficulty": 1.0, "seed": 0},
    },
    "class_splits": {"many_threshold": 24, "few_threshold": 8},
    "input": {"size": 12, "augment": "crop_flip", "preload": True, "pad": 2,
              "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "backbone": {"name": "resnet_cifar8", "width": 4, "embed_dim": 16},
    "base": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 0},
    "experts": {
        "many": {"open_ratio": 4, "num_learnable": -1, "epochs": 2, "patience": 2, "batch_size": 16,
                 "lr": 0.01, "seed": 1},
        "medium": {"open_ratio": 2, "num_learnable": 3, "epochs": 2, "batch_size": 16, "lr": 0.01,
                   "seed": 2},
        "few": {"open_ratio": 2, "num_learnable": 3, "epochs": 2, "batch_size": 8, "lr": 0.01,
                "seed": 3},
    },
    "crt": {"epochs": 2, "batch_size": 32, "lr": 0.1, "seed": 4},
    "lws": {"epochs": 2, "batch_size": 32, "lr": 0.1, "seed": 5},
    "calibration": {"max_iter": 20},
}


def tiny_config() -> dict:
    import copy

    return {
        "default_datasets": ["tiny"],
        "execution": {"device": "cpu", "eval_batch_size": 64, "train_threads": 1,
                      "expert_threads": 1, "logits_threads": 1},
        "datasets": {"tiny": copy.deepcopy(TINY_DATASET)},
    }


def jpeg_dataset(root: Path) -> dict:
    """The tiny dataset as JPEG files behind a ``lists`` dataset (``preload: false``): the file
    path, where ``execution.decode_on_device`` decodes with nvJPEG on a GPU. Returns the
    dataset's config section; its images and list files are written under ``root``.

    The first training image is a CMYK JPEG, as ImageNet has some: nvJPEG refuses it, so
    its batch falls back to the CPU decoder.
    """
    import copy

    from PIL import Image

    from balanced_experts.lists import read_list, write_list
    from balanced_experts.synthetic import SyntheticSpec, generate

    root = Path(root).resolve()
    # 32-px images, cropped to 24 px: the ImageNet recipe (random resized crop, flip, jitter).
    generate(SyntheticSpec(**dict(TINY_DATASET["data"]["synthetic"], image_size=32)), root, log=lambda _: None)
    for split in ("train", "val", "test"):
        image_list = read_list(root / f"{split}.txt")
        jpegs = []
        for i, png in enumerate(image_list.paths):
            with Image.open(root / png) as image:
                image = image.convert("CMYK" if split == "train" and i == 0 else "RGB")
            jpegs.append(png.removesuffix(".png") + ".jpg")
            image.save(root / jpegs[-1], quality=90)
            (root / png).unlink()
        write_list(root / f"{split}.txt", jpegs, image_list.labels)
    dataset = copy.deepcopy(TINY_DATASET)
    dataset["data"] = {"kind": "lists", "root": str(root),
                       **{f"{split}_list": str(root / f"{split}.txt") for split in ("train", "val", "test")}}
    dataset["input"] = {"size": 24, "resize": 28, "augment": "imagenet", "preload": False,
                        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return dataset


def copy_workflow(dest: Path, config: dict | None = None, repo: Path = REPO) -> Path:
    """Copy ``repo``'s workflow (Snakefile, workflow/, src/, profiles/) into ``dest`` with its
    own config.yaml (the tiny one by default)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "Snakefile", dest / "Snakefile")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("workflow", "src", "profiles"):
        shutil.copytree(repo / folder, dest / folder, ignore=ignore)
    write_config(dest, config if config is not None else tiny_config())
    return dest


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real ``snakemake`` of this interpreter's environment in ``workdir``."""
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe) if exe.exists() else "snakemake", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def last_attempt(log: str) -> str:
    """The part of a job's log written by its last attempt: from its last header line on
    (a job's log keeps every attempt, each starting with a ``===== <date> <job>: ...`` line)."""
    headers = [m.start() for m in re.finditer(r"(?m)^\S+ ===== \d{4}-\d\d-\d\d ", log)]
    return log[headers[-1]:] if headers else log


_JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):\s*$")


def planned_jobs(workdir: Path, *targets: str) -> set[tuple[str, str]]:
    """``(rule, wildcards)`` of every job a dry run would execute (``all`` left out)."""
    result = snakemake(workdir, "-n", "--cores", "2", *targets)
    jobs: list[list[str]] = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        header = _JOB_HEADER.match(line.strip())
        if header:
            jobs.append([header.group(1), ""])
        elif jobs and line.startswith("    wildcards:"):
            jobs[-1][1] = line.strip().removeprefix("wildcards:").strip()
    return {(rule, wildcards) for rule, wildcards in jobs if rule != "all"}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete run of the whole DAG on the tiny config, shared by the pipeline tests."""
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny_run"))
    snakemake(workdir, "--cores", "2")
    return workdir
