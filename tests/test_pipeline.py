"""The whole DAG through real Snakemake on the tiny config: outputs, logs, and rerun sets."""

import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from balanced_experts import methods
from balanced_experts.experiments import EXPERTS, MODELS
from balanced_experts.logits import read_logits
from balanced_experts.over_seeds import REPORT_COLUMNS
from conftest import planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

METHODS = list(methods.METHODS)  # the tiny config runs every peer
SPLITS = ("train", "val", "test")


def test_report_has_every_method_and_fold(tiny_run):
    report = pd.read_csv(tiny_run / "results/tiny/report.csv")
    # The mean over the seeds in the columns of a one-seed report, then their spread.
    assert list(report.columns) == REPORT_COLUMNS + [f"{c}_std" for c in REPORT_COLUMNS[1:]] + ["seeds"]
    assert report["method"].tolist() == METHODS
    assert (report["seeds"] == 1).all() and report.filter(like="_std").isna().all(axis=None)
    seed0 = pd.read_csv(tiny_run / "results/tiny/seed0/report.csv")
    assert list(seed0.columns) == REPORT_COLUMNS
    pd.testing.assert_frame_equal(report[REPORT_COLUMNS], seed0)
    values = report[["many", "medium", "few", "all"]].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 100).all()
    with_probabilities = report[report["method"] != "oracle"]
    assert (with_probabilities["ece"].between(0, 100)).all() and (with_probabilities["nll"] > 0).all()
    assert report.loc[report["method"] == "oracle", ["ece", "nll"]].isna().all(axis=None)
    counts = pd.read_csv(tiny_run / "results/tiny/split_counts.csv")
    assert counts["split"].tolist() == ["many", "medium", "few"]
    classes = pd.read_csv(tiny_run / "results/tiny/classes.csv")
    assert list(classes.columns) == ["class_id", "train_count", "split"]
    assert set(classes["split"]) == {"many", "medium", "few"}


def test_logits_of_every_model_and_split_are_aligned(tiny_run):
    classes = pd.read_csv(tiny_run / "results/tiny/classes.csv")
    for split in SPLITS:
        tables = {m: read_logits(tiny_run / f"results/tiny/seed0/logits/{m}/{split}.parquet") for m in MODELS}
        frame = pd.read_parquet(tiny_run / f"results/tiny/seed0/logits/base/{split}.parquet")
        list_lines = (tiny_run / f"results/tiny/data/{split}.txt").read_text().splitlines()
        assert len(frame) == len(list_lines)
        assert frame["path"].tolist() == [line.rsplit(" ", 1)[0] for line in list_lines]
        for model, table in tables.items():
            assert np.array_equal(table.sample_ids, tables["base"].sample_ids)
            assert np.array_equal(table.labels, tables["base"].labels)
            if model not in EXPERTS:
                assert table.output_class_ids.tolist() == list(range(len(classes)))
            else:
                expected = classes.loc[classes["split"] == model, "class_id"].tolist()
                assert table.output_class_ids.tolist() == expected + [-1]
                assert table.meta["open_ratio"] == tiny_config()["datasets"]["tiny"]["experts"][model]["open_ratio"]


def test_logs_metrics_and_benchmarks(tiny_run):
    results = tiny_run / "results/tiny/seed0"
    for model in MODELS:
        log = (results / f"logs/train_{model}.log").read_text()
        assert f"{model} epoch 1/2 loss" in log and "val_acc" in log and "ETA" in log
        metrics = pd.read_csv(results / f"models/{model}/metrics.csv")
        assert list(metrics.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
        assert len(metrics) >= 1
        assert (results / f"benchmarks/train_{model}.tsv").exists()
        for split in SPLITS:
            assert (results / f"benchmarks/logits_{model}_{split}.tsv").exists()
    assert "few expert:" in (results / "logs/train_few.log").read_text()
    assert "calibration: val NLL" in (results / "logs/calibrate.log").read_text()


def test_second_invocation_has_nothing_to_do(tiny_run):
    assert planned_jobs(tiny_run) == set()


def test_touching_files_reruns_nothing(tiny_run):
    touched = [tiny_run / rel for rel in (
        "results/tiny/classes.csv", "results/tiny/data/train.txt", "results/tiny/seed0/models/base/weights.pt",
        "results/tiny/seed0/logits/few/val.parquet", "workflow/scripts/report.py", "src/balanced_experts/training.py")]
    before = {path: path.stat() for path in touched}
    later = time.time() + 5
    try:
        for path in touched:
            os.utime(path, (later, later))
        assert planned_jobs(tiny_run) == set()
    finally:  # the shared run's times: a copy's job that ends within 5 s would be older than its inputs
        for path, stat in before.items():
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture
def edited_run(tiny_run, tmp_path):
    """A copy of the finished tiny run, to edit without disturbing the other tests."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    return workdir


def test_editing_one_expert_reruns_only_its_chain(edited_run):
    config = yaml.safe_load((edited_run / "config.yaml").read_text())
    config["datasets"]["tiny"]["experts"]["few"]["lr"] = 0.02
    write_config(edited_run, config)
    assert planned_jobs(edited_run) == {
        ("train_expert", "setting=tiny, seed=0, expert=few"),
        ("logits", "setting=tiny, seed=0, model=few, split=train"),
        ("logits", "setting=tiny, seed=0, model=few, split=val"),
        ("logits", "setting=tiny, seed=0, model=few, split=test"),
        ("calibrate", "setting=tiny, seed=0"),
        ("report", "setting=tiny, seed=0"),
        ("aggregate", "setting=tiny"),
        ("summary", ""),
        ("resolved_config", "setting=tiny"),  # it records the edited setting
    }


def test_decoupled_classifiers_keep_the_base_representation(tiny_run):
    """cRT and LWS train on the frozen base model: their trunk and fc weights are the base
    model's; their BatchNorm statistics were re-estimated on class-aware batches (frozen_bn:
    train); LWS's classifier is the base classifier times its per-class scales."""
    import torch

    from balanced_experts.models import load_checkpoint

    models = {m: load_checkpoint(tiny_run / f"results/tiny/seed0/models/{m}/weights.pt")
              for m in ("base", "crt", "lws")}
    base = models["base"]["state_dict"]
    for method in ("crt", "lws"):
        state, meta = models[method]["state_dict"], models[method]["meta"]
        assert meta["model"] == method and meta["features"] == "images" and state.keys() == base.keys()
        for key, value in state.items():
            if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert not torch.equal(value, base[key]), key
            elif not key.startswith("classifier."):
                assert torch.equal(value, base[key]), key
    scales = torch.tensor(models["lws"]["meta"]["lws_scales"])
    assert not torch.equal(scales, torch.ones_like(scales))
    lws = models["lws"]["state_dict"]
    assert torch.allclose(lws["classifier.weight"], scales[:, None] * base["classifier.weight"])
    assert torch.allclose(lws["classifier.bias"], scales * base["classifier.bias"])
    assert not torch.allclose(models["crt"]["state_dict"]["classifier.weight"], base["classifier.weight"])
    assert "4 images per class in a row" in (tiny_run / "results/tiny/seed0/logs/train_lws.log").read_text()


def test_peers_train_on_the_base_recipe_and_carry_their_prior(tiny_run):
    """Each peer trains for the base model's epochs with its own head (LDAM-DRW's cosine
    classifier at its scale); its weights' metadata and its logits carry the prior of the epoch
    kept, which the shift table's adapted column assumes."""
    import torch

    from balanced_experts.models import CosineClassifier, load_model
    from balanced_experts.peers import peer_settings

    config = tiny_config()["datasets"]["tiny"]
    results = tiny_run / "results/tiny/seed0"
    counts = pd.read_csv(tiny_run / "results/tiny/classes.csv")["train_count"].to_numpy()
    base, _ = load_model(results / "models/base/weights.pt")
    shift = pd.read_csv(results / "test_shift.csv").set_index(["method", "distribution", "imbalance"])
    heads = {"balanced_softmax": torch.nn.Linear, "ldam_drw": CosineClassifier}
    assert set(heads) | set(MULTI_EXPERT_PEERS) == set(methods.PEER_METHODS)
    for name, head in heads.items():
        peer = peer_settings(name, config.get("peers", {}).get(name))
        model, meta = load_model(results / f"models/{name}/weights.pt")
        assert meta["model"] == name and meta["backbone"] == peer.backbone(config["backbone"])
        assert type(model.classifier) is head
        assert len(pd.read_csv(results / f"models/{name}/metrics.csv")) == config["base"]["epochs"]
        assert not torch.equal(model.fc.weight, base.fc.weight)
        np.testing.assert_allclose(meta["prior"], peer.prior(counts, meta["best_epoch"], config["base"]["epochs"]))
        assert read_logits(results / f"logits/{name}/test.parquet").meta["prior"] == meta["prior"]
        # Adapted to the uniform test prior from a uniform prior: the plain predictions.
        if np.allclose(meta["prior"], 1 / len(counts)):
            row = shift.loc[(name, "uniform", 1)]
            assert row["accuracy_adapted"] == row["accuracy"]
    assert model.classifier.scale == peer.scale


MULTI_EXPERT_PEERS = ("ride", "sade")


def test_multi_expert_peers_train_their_experts_and_score_their_mean(tiny_run):
    """RIDE and SADE: a multi-expert model rebuilt from its weights' metadata, trained for the
    base model's epochs; its logits are its experts' mean, and carry its kept epoch's prior."""
    import torch

    from balanced_experts.images.source import ImageSource
    from balanced_experts.images.spec import InputSpec
    from balanced_experts.lists import read_list
    from balanced_experts.multi_expert import MultiExpertNet, load_multi_expert, mean_logits
    from balanced_experts.peers import peer_settings

    config = tiny_config()["datasets"]["tiny"]
    results = tiny_run / "results/tiny/seed0"
    counts = pd.read_csv(tiny_run / "results/tiny/classes.csv")["train_count"].to_numpy()
    test_list = read_list(tiny_run / "results/tiny/data/test.txt")
    source = ImageSource.open(tiny_run / "results/tiny/data", test_list, InputSpec.from_config(config["input"]),
                              cache=results.parent / "cache/test.npy")
    images = torch.cat([x for x, _ in source.batches(np.arange(len(test_list)), test_list.labels, 64, False,
                                                      torch.device("cpu"))])
    for name in MULTI_EXPERT_PEERS:
        peer = peer_settings(name, config["peers"][name])
        model, meta = load_multi_expert(results / f"models/{name}/weights.pt")
        assert isinstance(model, MultiExpertNet) and model.num_experts == 3
        assert meta["multi_expert"] == peer.multi_expert_settings()
        assert len(pd.read_csv(results / f"models/{name}/metrics.csv")) == config["base"]["epochs"]
        np.testing.assert_allclose(meta["prior"], peer.prior(counts, meta["best_epoch"], config["base"]["epochs"]))
        logits = read_logits(results / f"logits/{name}/test.parquet")
        assert logits.meta["prior"] == meta["prior"]
        with torch.no_grad():
            expected = mean_logits(model.eval()(images)).numpy()
        np.testing.assert_allclose(logits.logits, expected, rtol=1e-4, atol=1e-4)
    # RIDE's experts, trained jointly from one initialisation, ended apart.
    ride, _ = load_multi_expert(results / "models/ride/weights.pt")
    with torch.no_grad():
        experts = ride.eval()(images)
    assert not torch.allclose(experts[:, 0], experts[:, 1])


def test_sade_test_time_row_of_the_shift_table(tiny_run):
    """SADE's test-time aggregation: for every shifted test distribution, a drawn test set, the
    learned expert weights (a distribution over its 3 experts) and their accuracy, which is
    the sade_test_time row of test_shift.csv (no adapted column: it never sees the prior)."""
    from balanced_experts.sade import AGNOSTIC_COLUMNS, shifted_counts
    from balanced_experts.shift import DISTRIBUTIONS, shifted_prior

    results = tiny_run / "results/tiny/seed0"
    table = pd.read_csv(results / "test_time/sade.csv")
    assert list(table.columns) == AGNOSTIC_COLUMNS + [f"weight_{k}" for k in range(3)]
    assert list(zip(table["distribution"], table["imbalance"])) == list(DISTRIBUTIONS)
    weights = table.filter(like="weight_").to_numpy()
    np.testing.assert_allclose(weights.sum(1), 1, atol=2e-4)
    assert (weights > 0).all()
    counts = pd.read_csv(tiny_run / "results/tiny/classes.csv")["train_count"].to_numpy()
    available = np.bincount(read_logits(results / "logits/sade/test.parquet").labels, minlength=len(counts))
    assert table["images"].tolist() == [
        int(shifted_counts(available, shifted_prior(counts, d, rho)).sum()) for d, rho in DISTRIBUTIONS]
    uniform = table.set_index("distribution").loc["uniform"]
    report = pd.read_csv(results / "report.csv").set_index("method")
    # On the whole balanced test set with equal weights: the report's sade row.
    assert uniform["accuracy_equal_weights"] == pytest.approx(report.loc["sade", "all"], abs=0.011)
    shift = pd.read_csv(results / "test_shift.csv")
    row = shift[shift["method"] == "sade_test_time"]
    np.testing.assert_allclose(row["accuracy"], table["accuracy"], atol=0.006)
    assert row["accuracy_adapted"].isna().all()
    assert "sade_test_time" in pd.read_csv(tiny_run / "results/tiny/test_shift.csv")["method"].tolist()


def test_cached_features_rerun_only_the_crt_chain(edited_run):
    """The documented fast path (features computed once): editing crt reruns its chain only."""
    from balanced_experts.models import load_checkpoint

    config = yaml.safe_load((edited_run / "config.yaml").read_text())
    config["datasets"]["tiny"]["crt"]["features"] = "cached"
    write_config(edited_run, config)
    assert planned_jobs(edited_run) == {
        ("train_decoupled", "setting=tiny, seed=0, method=crt"),
        ("logits", "setting=tiny, seed=0, model=crt, split=train"),
        ("logits", "setting=tiny, seed=0, model=crt, split=val"),
        ("logits", "setting=tiny, seed=0, model=crt, split=test"),
        ("report", "setting=tiny, seed=0"),
        ("aggregate", "setting=tiny"),
        ("summary", ""),
        ("resolved_config", "setting=tiny"),
    }
    snakemake(edited_run, "--cores", "1", "results/tiny/seed0/models/crt/weights.pt")
    checkpoint = load_checkpoint(edited_run / "results/tiny/seed0/models/crt/weights.pt")
    base = load_checkpoint(edited_run / "results/tiny/seed0/models/base/weights.pt")["state_dict"]
    assert checkpoint["meta"]["features"] == "cached"
    # The backbone ran in eval mode only: every tensor but the classifier is the base model's.
    assert all(value.equal(base[key]) for key, value in checkpoint["state_dict"].items()
               if not key.startswith("classifier."))
    assert "features of" in (edited_run / "results/tiny/seed0/logs/train_crt.log").read_text()


def test_per_class_table_agrees_with_the_four_fold_report(tiny_run):
    report = pd.read_csv(tiny_run / "results/tiny/report.csv").set_index("method")
    per_class = pd.read_csv(tiny_run / "results/tiny/per_class.csv")
    assert list(per_class.columns) == ["class_id", "train_count", "split"] + METHODS
    test_counts = np.bincount(read_logits(tiny_run / "results/tiny/seed0/logits/base/test.parquet").labels)
    for method in METHODS:
        for split in ("many", "medium", "few"):
            part = per_class["split"] == split
            weighted = np.average(per_class.loc[part, method], weights=test_counts[part.to_numpy()])
            assert weighted == pytest.approx(report.loc[method, split], abs=0.01)
        overall = np.average(per_class[method], weights=test_counts)
        assert overall == pytest.approx(report.loc[method, "all"], abs=0.01)


def test_plots_and_html_report(tiny_run, tmp_path):
    import base64
    import re

    from PIL import Image

    for name in ("four_fold", "per_class_accuracy", "reliability", "training_curves", "long_tail", "test_shift"):
        with Image.open(tiny_run / f"results/tiny/plots/{name}.png") as image:
            assert image.format == "PNG" and image.size[0] > 300
            image.verify()
    html = tmp_path / "report.html"
    snakemake(tiny_run, "--report", str(html))
    text = html.read_text()
    assert text.lstrip().lower().startswith("<!doctype html")
    embedded = re.search(r"data:text/csv;charset=utf8;filename=report\.csv;base64,([A-Za-z0-9+/=]+)", text)
    assert embedded, "report.csv is not embedded in the HTML report"
    table = base64.b64decode(embedded.group(1)).decode()
    for method in METHODS:
        assert f"\n{method}," in table
    assert "filename=test_shift.csv;base64," in text
    assert text.count("data:image/png") >= 6


def test_shifted_test_distributions(tiny_run):
    """test_shift.csv: every method with probabilities under every test distribution; the
    uniform one is the balanced test set, so it reproduces the report's `all` column."""
    from balanced_experts.shift import DISTRIBUTIONS, SHIFT_COLUMNS

    report = pd.read_csv(tiny_run / "results/tiny/seed0/report.csv").set_index("method")
    shift = pd.read_csv(tiny_run / "results/tiny/seed0/test_shift.csv")
    assert list(shift.columns) == SHIFT_COLUMNS
    with_probabilities = [m for m in METHODS if m != "oracle"]
    assert shift["method"].unique().tolist() == with_probabilities + list(methods.TEST_TIME_METHODS)
    assert list(zip(shift["distribution"], shift["imbalance"]))[:len(DISTRIBUTIONS)] == list(DISTRIBUTIONS)
    uniform = shift[shift["distribution"] == "uniform"].set_index("method")
    for method in with_probabilities:
        assert uniform.loc[method, "accuracy"] == pytest.approx(report.loc[method, "all"], abs=0.011)
    # Re-targeting a balanced method to the uniform prior changes nothing.
    assert uniform.loc["experts_calibrated", "accuracy_adapted"] == uniform.loc["experts_calibrated", "accuracy"]
    mean = pd.read_csv(tiny_run / "results/tiny/test_shift.csv")
    assert list(mean.columns) == SHIFT_COLUMNS[:3] + ["accuracy", "accuracy_adapted", "accuracy_std",
                                                      "accuracy_adapted_std", "seeds"]
    np.testing.assert_allclose(mean["accuracy"], shift["accuracy"])  # one seed: its own values


def test_editing_the_report_script_reruns_only_the_report(edited_run):
    script = edited_run / "workflow/scripts/report.py"
    script.write_text(script.read_text() + "\n# an edit\n")
    # The replicate's report, the mean over the seeds that reads it, and the summary table.
    assert planned_jobs(edited_run) == {("report", "setting=tiny, seed=0"), ("aggregate", "setting=tiny"),
                                        ("summary", "")}


def test_editing_a_library_module_reruns_every_stage_that_runs_it(edited_run):
    """distributed.py is imported by the training loop, not by the training programs: the
    code inputs follow the imports through it."""
    module = edited_run / "src/balanced_experts/distributed.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    jobs = planned_jobs(edited_run)
    assert {job for job in jobs if job[0].startswith("train")} == {
        ("train_base", "setting=tiny, seed=0"),
        *{("train_expert", f"setting=tiny, seed=0, expert={e}") for e in ("many", "medium", "few")},
        *{("train_decoupled", f"setting=tiny, seed=0, method={m}") for m in ("crt", "lws")},
        *{("train_peer", f"setting=tiny, seed=0, peer={p}") for p in methods.PEER_METHODS},
    }
    assert not {rule for rule, _ in jobs} & {"synthetic_data", "classes", "image_cache", "resolved_config"}


def test_editing_class_splits_keeps_the_base_model(edited_run):
    config = yaml.safe_load((edited_run / "config.yaml").read_text())
    config["datasets"]["tiny"]["class_splits"]["many_threshold"] = 20
    write_config(edited_run, config)
    jobs = planned_jobs(edited_run)
    rules = {rule for rule, _ in jobs}
    assert "classes" in rules and "train_base" not in rules and "synthetic_data" not in rules
    assert ("logits", "setting=tiny, seed=0, model=base, split=test") not in jobs


def test_rerun_after_edit_completes(edited_run):
    config = yaml.safe_load((edited_run / "config.yaml").read_text())
    config["datasets"]["tiny"]["calibration"]["max_iter"] = 5
    write_config(edited_run, config)
    before = (edited_run / "results/tiny/seed0/models/base/weights.pt").stat().st_mtime_ns
    snakemake(edited_run, "--cores", "2")
    assert (edited_run / "results/tiny/seed0/models/base/weights.pt").stat().st_mtime_ns == before
    assert planned_jobs(edited_run) == set()


def test_jobs_read_the_decoded_cache_not_the_images(edited_run):
    """Each split is decoded once into results/<dataset>/cache/<split>.npy, which the
    training and logits jobs list as an input; rebuilding one split's cache reruns its readers."""
    lists = {split: (edited_run / f"results/tiny/data/{split}.txt").read_text().splitlines() for split in SPLITS}
    for split in SPLITS:
        cache = np.load(edited_run / f"results/tiny/cache/{split}.npy", mmap_mode="r")
        assert isinstance(cache, np.memmap) and cache.shape == (len(lists[split]), 3, 12, 12)
    # Other pixels in the test cache: exactly the five test-split logits jobs read it.
    path = edited_run / "results/tiny/cache/test.npy"
    pixels = np.load(path)
    pixels[0] = 255 - pixels[0]
    np.save(path, pixels)
    later = time.time() + 5
    os.utime(path, (later, later))
    jobs = planned_jobs(edited_run)
    assert {("logits", f"setting=tiny, seed=0, model={m}, split=test") for m in MODELS} <= jobs
    assert not any(rule.startswith("train") or rule == "image_cache" for rule, _ in jobs)


def test_paper_tables_of_the_run(tiny_run, tmp_path):
    """report.md / report.tex are the setting's table of its per-seed rows; results/summary.md
    and .tex the default datasets' (here the tiny one) side by side; both compile."""
    import shutil
    import subprocess

    from balanced_experts.tables import FOLDS, method_groups, setting_table, summary_table

    results = tiny_run / "results"
    rows = pd.read_csv(results / "tiny/report_seeds.csv")
    table = setting_table(rows, "tiny")
    assert (results / "tiny/report.md").read_text() == table.markdown()
    assert (results / "tiny/report.tex").read_text() == table.latex()
    listed = re.findall(r"(?m)^\| `(\w+)` \|", table.markdown())
    assert listed == [m for group in method_groups(METHODS) for m in group]  # the peers last
    summary = summary_table({"tiny": rows}, FOLDS)
    assert (results / "summary.md").read_text() == summary.markdown()
    assert (results / "summary.tex").read_text() == summary.latex()
    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex (Debian: texlive-latex-recommended)")
    for name in ("tiny/report.tex", "summary.tex"):
        shutil.copy(results / name, tmp_path / Path(name).name)
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                        "\\input{report.tex}\n\\input{summary.tex}\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]


def test_the_report_read_model_by_model_in_any_blocks_is_the_pipelines(tiny_run, tmp_path):
    """build_report reads one model's logits at a time and scores a block of rows at a
    time: blocks of one row and one logits column give the very report of one block of
    everything, and its files are the pipeline's report stage's, byte for byte."""
    import json

    from balanced_experts.report import build_report

    results = tiny_run / "results/tiny/seed0"

    def logits(model):
        return results / f"logits/{model}/test.parquet"

    def report(**blocks):
        return build_report(classes_csv=tiny_run / "results/tiny/classes.csv",
                            base_val=results / "logits/base/val.parquet", base_test=logits("base"),
                            base_weights=results / "models/base/weights.pt",
                            decoupled_logits=[logits(m) for m in ("crt", "lws")],
                            expert_logits=[logits(e) for e in EXPERTS],
                            calibration=results / "calibration/calibration.pt",
                            peer_logits=[logits(p) for p in methods.PEER_METHODS],
                            test_time={"sade_test_time": results / "test_time/sade.csv"}, **blocks)

    whole, small = report(block_rows=10**9, block_columns=10**9), report(block_rows=1, block_columns=1)
    assert len(whole.predictions) > 1 and whole.summary["method"].tolist() == METHODS
    for name in ("summary", "per_class", "predictions", "test_shift"):
        pd.testing.assert_frame_equal(getattr(small, name), getattr(whole, name), check_exact=True)
    assert small.info == whole.info
    pd.testing.assert_frame_equal(report(block_rows=7, block_columns=5).predictions, whole.predictions,
                                  check_exact=True)
    # The pipeline wrote the same report (workflow/scripts/report.py's formats).
    whole.summary.to_csv(tmp_path / "report.csv", index=False, float_format="%.2f")
    whole.per_class.to_csv(tmp_path / "per_class.csv", index=False, float_format="%.2f")
    whole.test_shift.to_csv(tmp_path / "test_shift.csv", index=False, float_format="%.2f")
    for name in ("report.csv", "per_class.csv", "test_shift.csv"):
        assert (tmp_path / name).read_text() == (results / name).read_text(), name
    pd.testing.assert_frame_equal(whole.predictions, pd.read_parquet(results / "predictions/test.parquet"),
                                  check_exact=True)
    assert whole.info == json.loads((results / "report_info.json").read_text())
