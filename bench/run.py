"""Performance figures of this workflow, each beside what it is compared against in the same run.

    python bench/run.py                  # everything CPU-sized (~10 min on 2 cores)
    python bench/run.py --skip-pipeline  # without the from-scratch default pipeline (~4-5 min)
    python bench/run.py --only models,loading   # some sections only (bench/gpu.sh)
    python bench/run.py --device cuda --backbones resnet10 --train-images 20480   # GPU sizes

Prints one markdown table: figure, value, what it is compared against, that value, and the
ratio (value / reference). ``--repo`` measures another checkout's src/ and workflow (e.g. an
unchanged copy, for before/after tables). Workflows are copied with the tests' helpers
(tests/conftest.py), so the bench needs the test extra: ``pip install -e ".[test]"``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))
from conftest import copy_workflow, tiny_config  # noqa: E402  (the tests' workflow copy; tests/tiny.yaml)

ROWS: list[tuple[str, str, str, str, str]] = []
# What --only chooses from: Snakemake runs (pipeline, no-op, dry run), the calibration fit,
# Parquet I/O, training and inference throughput, data loading.
SECTIONS = ("workflow", "calibration", "logits-io", "models", "loading")


def row(figure, value, unit, reference_name="", reference=None, higher_is_better=True, ratio=None):
    """One table line; the ratio is value / reference (so > 1 is faster for throughputs),
    unless given (e.g. the median of paired measurements' ratios)."""
    def fmt(v):
        return f"{v:,.2f} {unit}" if v < 100 else f"{v:,.0f} {unit}"

    if ratio is None and reference:
        ratio = value / reference
    ratio = "" if ratio is None else f"{ratio:.2f}x"
    ROWS.append((figure, fmt(value), reference_name, fmt(reference) if reference else "", ratio))
    print(f"  {figure}: {fmt(value)}" + (f" vs {reference_name} {fmt(reference)}" if reference else ""),
          file=sys.stderr, flush=True)


def timed(fn, *args, repeat=1, **kwargs):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def device_sync(device):
    """A function that waits for the work queued on ``device`` (nothing on the CPU): the
    clock stops after it, or it would time the queueing of CUDA work, not the work."""
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def snakemake_exe() -> str:
    exe = Path(sys.executable).with_name("snakemake")
    return str(exe) if exe.exists() else "snakemake"


def run_snakemake(workdir: Path, *args) -> float:
    start = time.perf_counter()
    result = subprocess.run([snakemake_exe(), *args], cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return seconds


# -- workflow figures ----------------------------------------------------------------------
def bench_pipeline(repo: Path, scratch: Path, cores: int) -> Path:
    config = yaml.safe_load((repo / "config.yaml").read_text())
    workdir = copy_workflow(scratch / "default", config, repo=repo)
    wall = run_snakemake(workdir, "--cores", str(cores))
    stages = {}
    # Per-dataset jobs (image caches) and the jobs of the default seed's replicate.
    results = workdir / "results/synthetic"
    for tsv in sorted(results.glob("benchmarks/*.tsv")) + sorted(results.glob("seed0/benchmarks/*.tsv")):
        with tsv.open() as handle:
            stages[tsv.stem] = float(next(csv.DictReader(handle, delimiter="\t"))["s"])
    row(f"default pipeline from scratch, {cores} cores", wall, "s",
        "sum of benchmarked job times (serial)", sum(stages.values()), higher_is_better=False)
    groups: dict[str, list[float]] = {}
    for name, seconds in stages.items():
        group = "logits" if name.startswith("logits_") else name
        groups.setdefault(group, []).append(seconds)
    for group, values in groups.items():
        row(f"  stage {group}" + (f" ({len(values)} jobs)" if len(values) > 1 else ""), sum(values), "s")
    report = (workdir / "results/synthetic/report.csv").read_text()
    print(f"report of the default run:\n{report}", file=sys.stderr)
    return workdir


def bench_noop(workdir: Path, cores: int):
    noop = min(run_snakemake(workdir, "--cores", str(cores)) for _ in range(3))
    bare = min(timed(subprocess.run, [snakemake_exe(), "--version"], capture_output=True)[0] for _ in range(3))
    row("no-op invocation (nothing to be done)", noop, "s", "`snakemake --version` (start-up)", bare)


def bench_places_dry_run(repo: Path, scratch: Path, shared: Path):
    lists = shared / "places_lt"
    if not lists.is_dir():
        print(f"  (skipped Places-LT dry run: no {lists})", file=sys.stderr)
        return
    config = yaml.safe_load((repo / "config.yaml").read_text())
    places = config["datasets"]["places"]
    root = scratch / "places_root"
    root.mkdir(exist_ok=True)
    weights = scratch / "caffe_resnet152.pth"
    weights.write_bytes(b"")  # planning needs the file to exist, not to be read
    places["data"].update(root=str(root), **{f"{s}_list": str(lists / f"Places_LT_{s}.txt")
                                             for s in ("train", "val", "test")})
    places["backbone"]["pretrained"]["path"] = str(weights)
    config["default_datasets"] = ["places"]
    workdir = copy_workflow(scratch / "places", config, repo=repo)
    dry = min(run_snakemake(workdir, "-n", "--cores", "16") for _ in range(2))
    sys.path.insert(0, str(repo / "src"))
    from balanced_experts.lists import read_list

    parse, _ = timed(lambda: [read_list(lists / f"Places_LT_{s}.txt") for s in ("train", "val", "test")])
    row("dry run, Places-LT DAG (real lists)", dry, "s", "parsing its 3 list files alone", parse)


# -- library figures -----------------------------------------------------------------------
def bench_calibration(device):
    import torch

    from balanced_experts.calibration import ExpertOutputs, fit_calibration

    # ImageNet-LT: 1000 classes in 385 / 479 / 136 many / medium / few, 20 val images per class.
    generator = torch.Generator().manual_seed(0)
    n, num_classes = 20000, 1000
    labels = torch.arange(num_classes).repeat_interleave(n // num_classes)
    perm = torch.randperm(num_classes, generator=generator)
    experts = []
    start = 0
    for size, ratio in ((385, 16.0), (479, 8.0), (136, 8.0)):
        class_ids = perm[start:start + size].sort().values
        start += size
        logits = torch.randn(n, size + 1, generator=generator)
        owned = torch.isin(labels, class_ids)
        column = torch.searchsorted(class_ids, labels[owned])
        logits[owned.nonzero().squeeze(1), column] += 4.0
        logits[~owned, -1] += 3.0
        experts.append(ExpertOutputs(logits.to(device), class_ids.to(device), ratio))
    labels = labels.to(device)
    seconds, (model, summary) = timed(fit_calibration, experts, labels, num_classes, max_iter=200,
                                      log=lambda _: None)
    width = sum(e.logits.shape[1] for e in experts)
    # Reference: one softmax cross-entropy forward + backward on logits of the same size,
    # as many times as the fit evaluated its objective: the floor of any full-batch fit.
    flat = torch.randn(n, width, device=device, requires_grad=True)
    target = labels.clamp(max=width - 1)
    def one_eval():
        loss = torch.nn.functional.cross_entropy(flat, target)
        loss.backward()
    one_eval()
    per_eval, _ = timed(one_eval, repeat=3)
    evals = max(1, int(summary["evaluations"]))
    row(f"joint calibration fit, {n} x {width} ({evals} evals)", seconds, "s",
        f"{evals} x plain CE fwd+bwd of that size", evals * per_eval)


def bench_logits_io(scratch: Path):
    import torch

    from balanced_experts.logits import LogitsTable, read_logits, write_logits

    n, m = 20000, 1003
    rng = np.random.default_rng(0)
    table = LogitsTable(
        logits=rng.standard_normal((n, m), dtype=np.float32), labels=rng.integers(0, 1000, n),
        sample_ids=np.arange(n), paths=[f"val/n{i:08d}/ILSVRC2012_val_{i:08d}.JPEG" for i in range(n)],
        output_class_ids=np.arange(m), meta={"model": "bench", "split": "val", "num_classes": m})
    megabytes = table.logits.nbytes / 1e6
    parquet, pt = scratch / "logits.parquet", scratch / "logits.pt"
    write_s, _ = timed(write_logits, parquet, table, repeat=2)
    read_s, _ = timed(read_logits, parquet, repeat=2)
    tensor = torch.from_numpy(table.logits)
    save_s, _ = timed(torch.save, tensor, pt, repeat=2)
    load_s, _ = timed(torch.load, pt, weights_only=True, repeat=2)
    row(f"Parquet logits write ({megabytes:.0f} MB)", megabytes / write_s, "MB/s", "torch.save", megabytes / save_s)
    row(f"Parquet logits read ({megabytes:.0f} MB)", megabytes / read_s, "MB/s", "torch.load", megabytes / load_s)


def _model_and_source(backbone: str, size: int, num_images: int, device):
    import torch

    from balanced_experts.images.source import ImageSource
    from balanced_experts.images.spec import InputSpec
    from balanced_experts.lists import ImageList
    from balanced_experts.models import build_model

    cfg = {"name": backbone, "embed_dim": 128 if backbone.startswith("resnet_cifar") else 512}
    model = build_model(cfg, 100).to(device)
    spec = InputSpec(size=size, augment="crop_flip" if size <= 64 else "none", preload=True,
                     mean=(0.5,) * 3, std=(0.25,) * 3)
    labels = np.arange(num_images) % 100
    image_list = ImageList(paths=[f"{i}.png" for i in range(num_images)], labels=labels, source="bench")
    source = ImageSource(Path("."), image_list, spec)
    source.pixels = torch.randint(0, 256, (num_images, 3, size, size), dtype=torch.uint8,
                                  generator=torch.Generator().manual_seed(0))
    return model, source, labels


def bench_backbone(backbone: str, size: int, num_images: int, batch: int, device, scratch: Path):
    import torch

    from balanced_experts.logits import predict
    from balanced_experts.training import TrainSettings, fit

    sync = device_sync(device)
    model, source, labels = _model_and_source(backbone, size, num_images, device)
    settings = TrainSettings(epochs=1, batch_size=batch, lr=0.01, seed=0, scheduler="constant")
    positions = np.arange(num_images)
    kwargs = {}
    import inspect
    for name in ("amp", "compile"):
        if name in inspect.signature(fit).parameters:
            kwargs[name] = getattr(bench_backbone, name)

    def pipeline_train():
        fit(model, list(model.parameters()),
            train_batches=lambda g: source.batches(positions, labels, batch, True, device, g),
            val_batches=lambda: iter(()), steps_per_epoch=-(-num_images // batch), settings=settings,
            name="bench", metrics_path=scratch / "metrics.csv", log=lambda _: None, **kwargs)
        sync()

    # The bare loop: the same model, batch size and optimizer on ready normalised tensors.
    ready = [((source.pixels[i:i + batch].to(device).float() / 255 - 0.5) / 0.25)
             .contiguous(memory_format=torch.channels_last) for i in range(0, num_images, batch)]
    targets = [torch.as_tensor(labels[i:i + batch]).to(device) for i in range(0, num_images, batch)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    def bare_train():
        model.train()
        for x, y in zip(ready, targets):
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync()

    @torch.no_grad()
    def bare_infer():
        model.eval()
        for x in ready:
            with autocast:
                model(x)
        sync()

    def pipeline_infer():
        predict(model, source.batches(positions, labels, batch, False, device), num_images, 100)
        sync()

    bare_train()  # warm-up (cudnn benchmark, allocator, compile)
    pipeline_train()
    train_s, _ = timed(pipeline_train, repeat=2)
    bare_s, _ = timed(bare_train, repeat=2)
    TRAIN_RATES[backbone, size] = num_images / train_s
    row(f"train {backbone} @ {size}px, batch {batch}", num_images / train_s, "img/s",
        "bare PyTorch loop (bf16 on CUDA)", num_images / bare_s)
    pipeline_infer()
    infer_s, _ = timed(pipeline_infer, repeat=2)
    bare_infer_s, _ = timed(bare_infer, repeat=2)
    row(f"inference {backbone} @ {size}px, batch {batch}", num_images / infer_s, "img/s",
        "bare no_grad loop", num_images / bare_infer_s)
    if device.type == "cuda" and getattr(bench_backbone, "peak_tflops", 0):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            model(ready[0]).sum().backward()
        flops_per_image = counter.get_total_flops() / len(ready[0])
        achieved = flops_per_image * num_images / train_s / 1e12
        row(f"model FLOP utilisation, train {backbone}", 100 * achieved / bench_backbone.peak_tflops, "%",
            f"peak {bench_backbone.peak_tflops:.0f} TFLOP/s; achieved TFLOP/s", achieved)


TRAIN_RATES: dict[tuple[str, int], float] = {}


def write_jpegs(root: Path, count: int, base: np.ndarray) -> Path:
    """``count`` JPEGs of ``base`` (H x W x 3 uint8) with fresh noise each, and their list file."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    lines = []
    for i in range(count):
        noisy = np.clip(base.astype(np.int16) + generator.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / f"{i}.jpg", quality=90)
        lines.append(f"{i}.jpg {i % 10}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


def bench_jpeg_training(backbone: str, count: int, batch: int, device, scratch: Path):
    """Training fed by the real data path: JPEG files through the DataLoader, decoded on
    ``device`` when it is CUDA (nvJPEG), else by PIL in the workers."""
    from balanced_experts.images.source import ImageSource
    from balanced_experts.images.spec import InputSpec
    from balanced_experts.lists import read_list
    from balanced_experts.models import build_model
    from balanced_experts.training import TrainSettings, fit

    # A colour ramp the size of a typical ImageNet image (400 x 350).
    base = (np.linspace(40, 215, 400)[None, :, None] * np.ones((350, 1, 3)) * [1.0, 0.8, 0.6]).astype(np.uint8)
    list_file = write_jpegs(scratch / "jpeg_train", count, base)
    image_list = read_list(list_file)
    on_device = device.type == "cuda"
    spec = InputSpec(size=224, resize=256, augment="imagenet", workers=bench_data_loading.workers)
    source = ImageSource.open(list_file.parent, image_list, spec, decode_on_device=on_device)
    model = build_model({"name": backbone, "embed_dim": 512}, 10).to(device)
    settings = TrainSettings(epochs=1, batch_size=batch, lr=0.01, seed=0, scheduler="constant")
    positions = np.arange(count)
    sync = device_sync(device)

    def train():
        fit(model, list(model.parameters()),
            train_batches=lambda g: source.batches(positions, image_list.labels, batch, True, device, g),
            val_batches=lambda: iter(()), steps_per_epoch=-(-count // batch), settings=settings,
            name="bench", metrics_path=scratch / "metrics.csv", log=lambda _: None, amp=bench_backbone.amp)
        sync()

    train()  # warm-up: workers, cudnn benchmark, page cache
    seconds, _ = timed(train, repeat=2)
    decoded = f"decoded on {device}" if on_device else "PIL in the workers"
    reference = TRAIN_RATES.get((backbone, 224))
    row(f"train {backbone} @ 224px from {count} 400x350 JPEGs ({decoded}, {spec.workers} workers)",
        count / seconds, "img/s", "the same loop on ready uint8 tensors" if reference else "", reference)


bench_backbone.amp, bench_backbone.compile, bench_backbone.peak_tflops = True, False, 0.0


def bench_data_loading(repo: Path, scratch: Path, device):
    """Small PNGs (the synthetic set) and 224-px JPEGs, pipeline loader against a bare decode loop."""
    import torch
    from PIL import Image

    from balanced_experts.images.source import ImageSource
    from balanced_experts.images.spec import InputSpec
    from balanced_experts.lists import read_list
    from balanced_experts.synthetic import SyntheticSpec, generate

    root = scratch / "synthetic"
    generate(SyntheticSpec(num_classes=20, max_count=250, imbalance=10, val_per_class=2,
                           test_per_class=2, image_size=32), root, log=lambda _: None)
    image_list = read_list(root / "train.txt")
    n = len(image_list)

    def bare_png():
        for rel in image_list.paths:
            with Image.open(root / rel) as image:
                np.asarray(image.convert("RGB"))

    spec = InputSpec(size=32, augment="crop_flip", preload=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    bare_s, _ = timed(bare_png, repeat=2)
    open_s, _ = timed(ImageSource.open, root, image_list, spec, repeat=2)
    row(f"open {n} 32-px PNGs for a job (preload)", n / open_s, "img/s", "bare PIL decode loop", n / bare_s)
    from balanced_experts.images.cache import write_image_cache

    cache = scratch / "train.npy"
    write_s, _ = timed(write_image_cache, root, image_list, spec.size, cache)
    open_s, _ = timed(ImageSource.open, root, image_list, spec, cache=cache, repeat=2)
    row(f"write the decoded cache of {n} 32-px PNGs (once per dataset)", n / write_s, "img/s",
        "bare PIL decode loop", n / bare_s)
    row(f"open {n} 32-px images for a job (memory-mapped cache)", n / open_s, "img/s",
        "bare PIL decode loop", n / bare_s)

    # JPEGs the size of ImageNet's (~400x350), decoded and cropped to 224 px.
    jpeg_root, count = scratch / "jpeg", bench_data_loading.jpeg_images
    base = np.asarray(Image.open(root / image_list.paths[0]).convert("RGB").resize((400, 350)))
    jpeg_list = read_list(write_jpegs(jpeg_root, count, base))
    workers = getattr(bench_data_loading, "workers", 2)

    def bare_jpeg():
        for rel in jpeg_list.paths:
            with Image.open(jpeg_root / rel) as image:
                np.asarray(image.convert("RGB"))

    import inspect

    decoders = [False] + ([True] if "decode_on_device" in inspect.signature(ImageSource.open).parameters else [])
    sync = device_sync(device)
    for train, on_device in [(t, d) for d in decoders for t in (True, False)]:
        jspec = InputSpec(size=224, resize=256, augment="imagenet", workers=workers)
        kwargs = {"decode_on_device": True} if on_device else {}
        source = ImageSource.open(jpeg_root, jpeg_list, jspec, **kwargs)

        def loader(passes=1):
            for _ in source.batches(np.tile(np.arange(count), passes), np.tile(jpeg_list.labels, passes), 64,
                                    train, device, torch.Generator().manual_seed(0)):
                pass
            sync()  # the last batch's device work is part of loading it

        loader()
        # Rounds of a pass, the bare loop and two passes, each figure set against the bare
        # loop of its own round: this machine's speed drifts by up to a third within
        # minutes, and a figure and its reference from different moments would carry that
        # drift. Reported: medians over the rounds, the ratio the median of the rounds'.
        # CPU seconds (the workers': the finished children's) are not inflated by other
        # jobs on the machine as wall time is; those that a second pass adds to one are the
        # workers' steady rate, without their start (a fork per pass), a few per cent of a
        # thousand images and nothing of an ImageNet-LT epoch.
        rounds = []
        for _ in range(bench_data_loading.rounds):
            load, bare = cpu_timed(loader), cpu_timed(bare_jpeg)
            twice = cpu_timed(loader, 2) if not on_device else None
            figures = {"wall": (count / load[0], count / bare[0])}
            if twice and load[2]:
                figures.update(worker=(count / load[2], count / bare[1]),
                               steady=(count / (twice[2] - load[2]), count / bare[1]),
                               main=(count / (twice[1] - load[1]), count / bare[1]))
            rounds.append(figures)

        def median_row(figure, key, reference_name):
            pairs = np.array([r[key] for r in rounds])
            row(figure, float(np.median(pairs[:, 0])), "img/s", reference_name, float(np.median(pairs[:, 1])),
                ratio=float(np.median(pairs[:, 0] / pairs[:, 1])))

        what = ("train augment" if train else "eval resize+crop") + (f", decoded on {device}" if on_device else "")
        median_row(f"loader, 400x350 JPEG -> 224 px, {what}, {workers} workers", "wall",
                   "bare PIL decode loop, 1 process")
        if "worker" in rounds[0]:
            per_cpu = "bare PIL decode loop, per CPU-second"
            median_row(f"  per worker: img per CPU-second of the workers ({what})", "worker", per_cpu)
            median_row(f"  per worker, steady: img per CPU-second a 2nd pass adds ({what})", "steady", per_cpu)
            median_row(f"  the training process: img per its CPU-second, steady ({what})", "main", per_cpu)


def cpu_timed(fn, *args) -> tuple[float, float, float]:
    """``(wall, CPU, children's CPU)`` seconds of ``fn()``; children's: of the processes it
    started and reaped meanwhile (DataLoader workers are joined at the end of a pass)."""
    import resource

    def cpu(who):
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    wall, self_cpu, children = time.perf_counter(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    fn(*args)
    return (time.perf_counter() - wall, cpu(resource.RUSAGE_SELF) - self_cpu,
            cpu(resource.RUSAGE_CHILDREN) - children)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=HERE, help="checkout whose src/ and workflow are measured")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--skip-pipeline", action="store_true", help="no from-scratch default pipeline run")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--skip-models", action="store_true", help="no training/inference throughput")
    parser.add_argument("--backbones", default="resnet_cifar8:32,resnet_cifar32:32,resnet10:224",
                        help="name:size list")
    parser.add_argument("--train-images", type=int, default=0, help="images per timed pass (0: by input size)")
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: 128 small, 32 at 224 px on CPU)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="for the MFU line (H200 bf16: 989)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the JPEG loader rows")
    parser.add_argument("--loader-images", type=int, default=192, help="JPEG files of the loader rows")
    parser.add_argument("--loader-rounds", type=int, default=5,
                        help="rounds of the loader rows, each a loader pass beside a bare decode pass")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the pipeline loop")
    parser.add_argument("--jpeg-train-images", type=int, default=0,
                        help="also time training resnet10 fed by this many JPEG files (0: skip)")
    parser.add_argument("--shared-data", type=Path,
                        default=Path(os.environ.get("BALANCED_EXPERTS_SHARED_DATA", HERE.parent / "shared/data")))
    args = parser.parse_args()
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        parser.error(f"--only: unknown sections {', '.join(sorted(only - set(SECTIONS)))}; "
                     f"known: {', '.join(SECTIONS)}")

    repo = args.repo.resolve()
    sys.path.insert(0, str(repo / "src"))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo / "src"), os.environ.get("PYTHONPATH")) if p)
    import torch

    from balanced_experts.device import resolve_device, setup_torch

    device = resolve_device(args.device)
    setup_torch(args.cores, 0, device)
    bench_backbone.compile, bench_backbone.peak_tflops = args.compile, args.peak_tflops
    bench_data_loading.workers, bench_data_loading.jpeg_images = args.workers, args.loader_images
    bench_data_loading.rounds = args.loader_rounds
    print(f"bench: {repo} on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        scratch = Path(tmp)
        if "workflow" in only:
            if args.skip_pipeline:
                workdir = copy_workflow(scratch / "tiny", tiny_config(), repo=repo)
                run_snakemake(workdir, "--cores", str(args.cores))
                print("  (no-op timed on the tiny test config: --skip-pipeline)", file=sys.stderr)
            else:
                workdir = bench_pipeline(repo, scratch, args.cores)
            bench_noop(workdir, args.cores)
            bench_places_dry_run(repo, scratch, args.shared_data)
        if "calibration" in only:
            bench_calibration(device)
        if "logits-io" in only:
            bench_logits_io(scratch)
        if "models" in only and not args.skip_models:
            for item in args.backbones.split(","):
                name, size = item.split(":")
                size = int(size)
                small = size <= 64
                images = args.train_images or (2048 if small else (128 if device.type == "cpu" else 8192))
                batch = args.batch or (128 if small or device.type == "cuda" else 32)
                bench_backbone(name, size, images, batch, device, scratch)
        if "loading" in only:
            bench_data_loading(repo, scratch, device)
        if args.jpeg_train_images:
            bench_jpeg_training("resnet10", args.jpeg_train_images, args.batch or 32, device, scratch)

    out = io.StringIO()
    out.write("| figure | value | compared against | reference | ratio |\n|---|---:|---|---:|---:|\n")
    for cells in ROWS:
        out.write("| " + " | ".join(cells) + " |\n")
    print(out.getvalue())


if __name__ == "__main__":
    main()
