"""How the cost of the report-side stages grows with the data: wall time and peak memory per
stage, from CIFAR size to iNaturalist 2018 size (8,142 classes, 24,426 evaluation images).

    python bench/scale.py                        # every case and the plan time (~15 min on 2 cores)
    python bench/scale.py --sizes cifar,inat1k   # some cases only (names below)
    python bench/scale.py --sizes inat8k --no-plan --max-rss-gb 8
    python bench/scale.py --repo /tmp/unchanged   # another checkout's src/ (git archive main src | tar -x)

Every case gets synthetic inputs of realistic shape written with the library's own writers:
classes.csv (an exponential long tail, the standard many/medium/few rule), the base model's
classifier weights, logits of the base model (val, test), cRT and LWS, the three experts
(val, test; a reject column, ``open_ratio``) and the four peers (a ``prior``), and each
model's metrics.csv. Each stage then runs in its own process (``--stage``), which reports
the stage's wall time (imports and setup left out) and its peak RSS (VmHWM: the process's,
imports included, shown apart as ``imports GB``). A stage whose RSS passes
``--max-rss-gb`` is stopped and shown as such (``>``).

Stages: ``calibrate`` (workflow/scripts/calibrate.py: the experts' val logits, the fit with
config.yaml's calibration defaults but at most ``--calibration-max-iter`` L-BFGS iterations,
its val accuracy, the state written: the report's calibration), ``report`` (build_report
and the files workflow/scripts/report.py writes), ``shift`` (one method: the base model's softmax and its shift table),
``plots`` (per-class accuracy, reliability and training curves, from a per-class table and
predictions of the case's shape) and ``logits write`` / ``logits read`` (one base-model
logits table through write_logits / read_logits). For the largest case also the layout
alternative: the logits as one fixed-size-list column instead of a column per class
(``layout ...``; written and read with pyarrow, and read with pandas.read_parquet).

Columns: the largest single logits file the stage reads (written, for ``logits write``),
peak / that file and what the stage adds to the imports' RSS / that file, the case's work
(images x classes) and wall time relative to the ``inat1k`` case's (where measured). Unless
``--no-plan``: the dry run (``snakemake -n``) of the default
synthetic dataset with 10 seeds x 10 variants and every peer on: its jobs and plan time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]

# name: (classes, val images per class, test images per class, largest train count)
CASES = {
    "cifar": (100, 20, 100, 500),        # CIFAR-100-LT: 10,000 test images
    "imagenet": (1000, 20, 50, 1280),    # ImageNet-LT: 50,000 test images
    "inat1k": (1000, 3, 3, 1000),        # iNaturalist-like: 3 images per class
    "inat4k": (4000, 3, 3, 1000),
    "inat8k": (8142, 3, 3, 1000),        # iNaturalist 2018: 24,426 images
}
REFERENCE = "inat1k"
EXPERTS = ("many", "medium", "few")
DECOUPLED = ("crt", "lws")
PEERS = ("balanced_softmax", "ldam_drw", "ride", "sade")
STAGES = ("calibrate", "report", "shift", "plots", "logits write", "logits read")
LAYOUT_STAGES = ("layout write (list column)", "layout read (list column)", "layout pandas (list column)",
                 "layout pandas (columns)")


# -- the inputs ---------------------------------------------------------------------------------

def train_counts(num_classes: int, largest: int) -> np.ndarray:
    """An exponential long tail from ``largest`` down to 2 images (imbalance largest / 2)."""
    ranks = np.arange(num_classes) / max(num_classes - 1, 1)
    return np.maximum(np.round(largest * (2 / largest) ** ranks), 2).astype(np.int64)


def class_logits(rng, labels, num_classes):
    """N x C float32: noise, the true class raised so that about two thirds are right."""
    logits = rng.standard_normal((len(labels), num_classes), dtype=np.float32)
    logits[np.arange(len(labels)), labels] += 3.5
    return logits


def generate(folder: Path, case: str) -> None:
    import pandas as pd
    import torch

    from balanced_experts.experts import REJECT
    from balanced_experts.files import save_torch_file
    from balanced_experts.logits import LogitsTable, write_logits
    from balanced_experts.splits import SplitRule, class_table

    num_classes, val_per_class, test_per_class, largest = CASES[case]
    rng = np.random.default_rng(0)
    counts = train_counts(num_classes, largest)
    classes = class_table(np.repeat(np.arange(num_classes), counts), num_classes, SplitRule())
    classes.to_csv(folder / "classes.csv", index=False)
    prior = (counts / counts.sum()).tolist()
    weight = torch.from_numpy(rng.standard_normal((num_classes, 512), dtype=np.float32))
    save_torch_file({"state_dict": {"classifier.weight": weight, "classifier.bias": torch.zeros(num_classes)},
                     "meta": {"model": "base", "num_classes": num_classes}}, folder / "base_weights.pt")
    splits = classes["split"].to_numpy()
    for split, per_class in (("val", val_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(num_classes), per_class)
        paths = [f"{split}/{i}.jpg" for i in range(len(labels))]

        def write(model, logits, output_ids, **meta):
            write_logits(folder / model / f"{split}.parquet", LogitsTable(
                logits=logits, labels=labels, sample_ids=np.arange(len(labels)), paths=paths,
                output_class_ids=np.asarray(output_ids),
                meta={"model": model, "split": split, "num_classes": num_classes, **meta}))

        models = ["base"] if split == "val" else ["base", *DECOUPLED, *PEERS]
        for model in models:
            write(model, class_logits(rng, labels, num_classes), np.arange(num_classes),
                  **({"prior": prior} if model in PEERS else {}))
        for name in EXPERTS:
            ids = np.flatnonzero(splits == name)
            column = np.searchsorted(ids, labels)
            owned = np.isin(labels, ids)
            logits = rng.standard_normal((len(labels), len(ids) + 1), dtype=np.float32)
            logits[np.flatnonzero(owned), column[owned]] += 3.5
            logits[~owned, -1] += 3.0
            write(name, logits, [*ids, REJECT], open_ratio=8.0 if name != "many" else 16.0)
    for model in ("base", *DECOUPLED, *EXPERTS, *PEERS):
        epochs = np.arange(1, 11)
        pd.DataFrame({"epoch": epochs, "train_loss": 3 / epochs, "val_acc": 60 - 30 / epochs}).to_csv(
            folder / model / "metrics.csv", index=False)
    # The plots' inputs: a per-class table and predictions of the case's shape.
    methods = ["base", "base_logit_adjusted", "base_tau_norm", "base_crt", "base_lws", "experts_naive",
               "experts_prior", "experts_calibrated", "oracle", *PEERS]
    labels = np.repeat(np.arange(num_classes), test_per_class)
    per_class = classes[["class_id", "train_count", "split"]].copy()
    predictions = {"sample_id": np.arange(len(labels)), "label": labels}
    skill = np.log(counts) / np.log(counts.max())
    for method in methods:
        right = rng.random(len(labels)) < 0.3 + 0.6 * skill[labels]
        pred = np.where(right, labels, rng.integers(0, num_classes, len(labels)))
        per_class[method] = 100.0 * np.bincount(labels[pred == labels], minlength=num_classes) / test_per_class
        predictions[f"pred_{method}"] = pred
        predictions[f"conf_{method}"] = np.clip(rng.normal(0.6, 0.2, len(labels)), 0.01, 1.0)
    per_class.to_csv(folder / "plot_per_class.csv", index=False, float_format="%.2f")
    pd.DataFrame(predictions).to_parquet(folder / "plot_predictions.parquet", index=False)


# -- the stages (each in its own process) -------------------------------------------------------

def calibration_config() -> dict:
    import yaml

    cfg = dict(yaml.safe_load((HERE / "config.yaml").read_text())["defaults"]["calibration"])
    cfg["max_iter"] = int(os.environ.get("SCALE_CALIBRATION_MAX_ITER", cfg["max_iter"]))
    return cfg


def stage(name: str, folder: Path) -> dict:
    """Run one stage in this process; its wall time and notes."""
    import pandas as pd

    notes = ""
    if name == "calibrate":
        import torch

        from balanced_experts.calibration import expert_outputs_from_table, fit_calibration, save_calibration
        from balanced_experts.logits import check_aligned, read_logits

        cfg = calibration_config()
        start = time.perf_counter()
        tables = {n: read_logits(folder / n / "val.parquet") for n in EXPERTS}
        check_aligned(tables)
        experts = [expert_outputs_from_table(tables[n]) for n in EXPERTS]
        labels = torch.from_numpy(tables["many"].labels)
        fit_start = time.perf_counter()
        model, summary = fit_calibration(experts, labels, tables["many"].num_classes, log=lambda _: None, **cfg)
        fit = time.perf_counter() - fit_start
        from balanced_experts import calibration

        if hasattr(calibration, "fused_predictions"):  # as the checkout's calibrate.py
            (calibration.fused_predictions(model, experts) == labels).float().mean().item()
        else:
            with torch.no_grad():
                (model(experts).argmax(1) == labels).float().mean().item()
        save_calibration(folder / "calibration.pt", model, list(EXPERTS))
        notes = (f"max_iter {cfg['max_iter']}: {summary['evaluations']} evaluations, "
                 f"{fit / summary['evaluations']:.2f} s each")
    elif name == "report":
        from balanced_experts.report import build_report

        start = time.perf_counter()
        report = build_report(
            classes_csv=folder / "classes.csv", base_val=folder / "base/val.parquet",
            base_test=folder / "base/test.parquet", base_weights=folder / "base_weights.pt",
            decoupled_logits=[folder / m / "test.parquet" for m in DECOUPLED],
            expert_logits=[folder / m / "test.parquet" for m in EXPERTS], calibration=folder / "calibration.pt",
            peer_logits=[folder / m / "test.parquet" for m in PEERS])
        out = folder / "report"
        out.mkdir(exist_ok=True)
        report.summary.to_csv(out / "report.csv", index=False, float_format="%.2f")
        report.per_class.to_csv(out / "per_class.csv", index=False, float_format="%.2f")
        report.predictions.to_parquet(out / "predictions.parquet", index=False)
        report.test_shift.to_csv(out / "test_shift.csv", index=False, float_format="%.2f")
        (out / "report_info.json").write_text(json.dumps(report.info, indent=2))
    elif name == "shift":
        from balanced_experts.baselines import softmax, train_prior
        from balanced_experts.logits import read_logits
        from balanced_experts.shift import shift_table
        from balanced_experts.splits import read_class_table

        counts = read_class_table(folder / "classes.csv")["train_count"].to_numpy()
        start = time.perf_counter()
        table = read_logits(folder / "base/test.parquet")
        probabilities = {"base": softmax(table.logits)}
        shift_table(probabilities, {"base": train_prior(counts)}, table.labels, counts)
    elif name == "plots":
        from balanced_experts.methods import GENERALIST, PROPOSED
        from balanced_experts.plots import per_class_accuracy_plot, reliability_plot, training_curves_plot

        start = time.perf_counter()
        per_class = pd.read_csv(folder / "plot_per_class.csv")
        predictions = pd.read_parquet(folder / "plot_predictions.parquet")
        out = folder / "plots"
        out.mkdir(exist_ok=True)
        per_class_accuracy_plot([per_class], out / "per_class_accuracy.png")
        reliability_plot(predictions, [GENERALIST, PROPOSED], out / "reliability.png")
        training_curves_plot({m: [pd.read_csv(folder / m / "metrics.csv")]
                              for m in ("base", *DECOUPLED, *EXPERTS, *PEERS)}, out / "training.png")
    elif name == "logits write":
        from balanced_experts.logits import read_logits, write_logits

        table = read_logits(folder / "base/test.parquet")
        table.meta["model"] = "copy"
        start = time.perf_counter()
        write_logits(folder / "copy/test.parquet", table)
    elif name == "logits read":
        from balanced_experts.logits import read_logits

        start = time.perf_counter()
        read_logits(folder / "base/test.parquet")
    elif name.startswith("layout"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "layout_list.parquet"
        if name == "layout write (list column)":
            from balanced_experts.logits import read_logits

            table = read_logits(folder / "base/test.parquet")
            start = time.perf_counter()
            n, m = table.logits.shape
            column = pa.FixedSizeListArray.from_arrays(pa.array(table.logits.reshape(-1)), m)
            arrays = [pa.array(table.sample_ids), pa.array(table.paths, type=pa.string()),
                      pa.array(table.labels), column]
            pq.write_table(pa.Table.from_arrays(arrays, names=["sample_id", "path", "label", "logits"]), path,
                           use_dictionary=False, write_statistics=["sample_id", "label"])
        elif name == "layout read (list column)":
            start = time.perf_counter()
            column = pq.read_table(path, columns=["logits"]).column("logits").combine_chunks()
            logits = column.values.to_numpy().reshape(len(column), -1)
            assert logits.dtype == np.float32
            notes = f"file {path.stat().st_size / 1e9:.3f} GB"
        elif name == "layout pandas (list column)":
            start = time.perf_counter()
            frame = pd.read_parquet(path)
            np.stack(frame["logits"].to_numpy())  # the logits as an array: one object per row first
        else:  # the columns layout, as written today
            start = time.perf_counter()
            pd.read_parquet(folder / "base/test.parquet")
    else:
        raise ValueError(f"unknown stage {name!r}")
    return {"wall": time.perf_counter() - start, "notes": notes}


def high_water() -> int:
    """This process's peak RSS in bytes: VmHWM, its own address space's (``ru_maxrss`` keeps
    the parent's across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(name: str, folder: Path) -> None:
    if name == "generate":
        case, folder = folder.name, folder
        return generate(folder, case)
    import pandas  # noqa: F401  (the libraries every stage imports, counted as the baseline)
    import torch  # noqa: F401

    import balanced_experts.report  # noqa: F401

    imported = high_water()
    result = stage(name, folder)
    result.update(peak=high_water(), imported=imported)
    print("RESULT " + json.dumps(result), flush=True)


def run_stage(name: str, folder: Path, max_rss: float, max_iter: int, repo: Path) -> dict:
    """The stage in a child process on ``repo``'s src/, stopped when its RSS passes ``max_rss`` bytes."""
    env = dict(os.environ, PYTHONPATH=str(repo / "src"), SCALE_CALIBRATION_MAX_ITER=str(max_iter))
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--stage", name, "--dir", str(folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stopped = False
    while process.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{process.pid}/status").read_text().splitlines())
            rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        except (OSError, ValueError):
            rss = 0
        if rss > max_rss:
            process.send_signal(signal.SIGKILL)
            stopped = True
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if stopped:
        return {"stopped": True, "wall": time.perf_counter() - start, "peak": max_rss, "imported": float("nan"),
                "notes": f"stopped at RSS > {max_rss / 1e9:.0f} GB"}
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        raise RuntimeError(f"stage {name!r} failed ({process.returncode}):\n{stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def largest_input(name: str, folder: Path) -> Path:
    if name == "calibrate":
        return max((folder / n / "val.parquet" for n in EXPERTS), key=lambda p: p.stat().st_size)
    if name == "report":
        return max([folder / "base/val.parquet", *folder.glob("*/test.parquet")], key=lambda p: p.stat().st_size)
    if name == "layout read (list column)" or name == "layout pandas (list column)":
        return folder / "layout_list.parquet"
    if name == "plots":
        return folder / "plot_predictions.parquet"
    return folder / "base/test.parquet"


# -- the plan -----------------------------------------------------------------------------------

def plan_time() -> tuple[int, float]:
    """Jobs and seconds of ``snakemake -n`` of the default dataset, 10 seeds x 10 variants, every peer on."""
    import yaml

    sys.path.insert(0, str(HERE / "tests"))
    from conftest import copy_workflow  # the tests' workflow copy

    config = yaml.safe_load((HERE / "config.yaml").read_text())
    synthetic = config["datasets"]["synthetic"]
    synthetic["seeds"] = list(range(10))
    synthetic["peers"] = {"ride": {"enabled": True, "diversity_factor": -0.45}, "sade": {"enabled": True}}
    # Variants of the kinds docs/seeds-and-variants.md describes: an expert, the calibration, the splits.
    variants = {f"few_open{r}": {"experts": {"few": {"open_ratio": r}}} for r in (2, 4, 16)}
    variants |= {f"medium_open{r}": {"experts": {"medium": {"open_ratio": r}}} for r in (4, 16)}
    variants |= {f"wd{i}": {"calibration": {"weight_decay": 10.0 ** -i}} for i in (3, 4, 5)}
    variants |= {"no_prior": {"calibration": {"prior_correction": False}},
                 "many150": {"class_splits": {"many_threshold": 150}}}
    synthetic["variants"] = variants
    exe = Path(sys.executable).with_name("snakemake")
    with tempfile.TemporaryDirectory(prefix="scale-plan-") as tmp:
        workdir = copy_workflow(Path(tmp), config)
        start = time.perf_counter()
        result = subprocess.run([str(exe) if exe.exists() else "snakemake", "-n", "--cores", "2", "--quiet", "rules"],
                                cwd=workdir, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"snakemake -n failed:\n{result.stderr[-3000:]}")
    total = [line.split() for line in (result.stdout + result.stderr).splitlines() if line.strip().startswith("total")]
    return int(total[-1][1]), seconds


# -- the table ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(CASES), help=f"cases, comma-separated: {', '.join(CASES)}")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages, comma-separated")
    parser.add_argument("--max-rss-gb", type=float, default=8.0, help="stop a stage whose RSS passes this")
    parser.add_argument("--no-plan", action="store_true", help="leave out the dry run's plan time")
    parser.add_argument("--no-layout", action="store_true", help="leave out the layout measurement")
    parser.add_argument("--calibration-max-iter", type=int, default=10,
                        help="L-BFGS iterations of the calibration fit (config.yaml: 200; the time per "
                             "evaluation is in the notes)")
    parser.add_argument("--keep", type=Path, help="keep the cases' files in this folder (and use those "
                                                  "already there)")
    parser.add_argument("--repo", type=Path, default=HERE,
                        help="measure this checkout's src/ (e.g. an unchanged copy, for before/after tables)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return child(args.stage, args.dir)
    sys.path.insert(0, str(HERE / "src"))
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = sorted(set(sizes) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    stages = args.stages.split(",")
    rows = []
    reference: dict[str, float] = {}
    for case in [c for c in CASES if c in sizes]:
        num_classes, _, test_per_class, _ = CASES[case]
        work = num_classes * test_per_class * num_classes
        root = args.keep or Path(tempfile.mkdtemp(prefix="scale-"))
        folder = root / case
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if not (folder / "plot_predictions.parquet").exists():  # in a child: this process stays small
            subprocess.run([sys.executable, __file__, "--stage", "generate", "--dir", str(folder)], check=True,
                           env=dict(os.environ, PYTHONPATH=str(HERE / "src")))
        print(f"{case}: inputs in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        names = [s for s in STAGES if s in stages]
        if case == [c for c in CASES if c in sizes][-1] and not args.no_layout:
            names += LAYOUT_STAGES
        for name in names:
            result = run_stage(name, folder, args.max_rss_gb * 1e9, args.calibration_max_iter, args.repo)
            size = largest_input(name, folder).stat().st_size if name != "logits write" else \
                (folder / "copy/test.parquet").stat().st_size
            if case == REFERENCE and not result.get("stopped"):
                reference[name] = result["wall"]
            rows.append((case, num_classes * test_per_class, num_classes, work, name, result, size))
            print(f"  {case} {name}: {result['wall']:.2f} s, {result['peak'] / 1e9:.2f} GB {result['notes']}",
                  file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(root)
    work_reference = CASES[REFERENCE][0] ** 2 * CASES[REFERENCE][2]
    print("| case | images | classes | stage | wall s | peak RSS GB | imports GB | largest logits file GB "
          "| peak / file | (peak - imports) / file | work / 1k | wall / 1k | notes |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for case, images, classes, work, name, result, size in rows:
        over = ">" if result.get("stopped") else ""
        wall_ratio = f"{over}{result['wall'] / reference[name]:.1f}x" if name in reference else ""
        added = "" if over else f"{(result['peak'] - result['imported']) / size:.1f}"
        imported = "" if over else f"{result['imported'] / 1e9:.2f}"
        print(f"| {case} | {images:,} | {classes:,} | {name} | {over}{result['wall']:.2f} | "
              f"{over}{result['peak'] / 1e9:.2f} | {imported} | {size / 1e9:.3f} | {over}{result['peak'] / size:.1f} "
              f"| {added} | {work / work_reference:.1f}x | {wall_ratio} | {result['notes']} |")
    if not args.no_plan:
        jobs, seconds = plan_time()
        print(f"\nPlan: `snakemake -n` of the default synthetic dataset, 10 seeds x 10 variants, every peer on: "
              f"{jobs:,} jobs in {seconds:.1f} s.")


if __name__ == "__main__":
    main()
