"""Seeds and variants through real Snakemake on the tiny config: the report over several
seeds, what adding or removing a seed plans, and what a variant shares with the main settings."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from balanced_experts.experiments import MODELS
from balanced_experts.methods import METHODS, PEER_METHODS
from balanced_experts.over_seeds import REPORT_COLUMNS
from conftest import REPO, SEEDS_TARGET, edited_copy, snakemake

pytestmark = pytest.mark.slow

# The methods of the base model alone, which a variant of the few expert leaves as they are.
BASELINES = [method for method in METHODS if method.startswith("base")]


def replicate_jobs(setting: str, seed: int) -> set[tuple[str, str]]:
    """Every job of one replicate: the models, their logits, the calibration, its report."""
    where = f"setting={setting}, seed={seed}"
    return ({("train_base", where), ("calibrate", where), ("report", where)}
            | {("train_decoupled", f"{where}, method={m}") for m in ("crt", "lws")}
            | {("train_expert", f"{where}, expert={e}") for e in ("many", "medium", "few")}
            | {("train_peer", f"{where}, peer={p}") for p in PEER_METHODS}
            | {("logits", f"{where}, model={m}, split={s}") for m in MODELS for s in ("train", "val", "test")}
            | {("sade_test_time", where)})


# -- seeds (conftest's two_seeds: the finished one-seed tiny run with a second seed added) ---

def test_adding_a_seed_plans_only_that_seeds_jobs(two_seeds):
    _, planned = two_seeds
    assert planned == replicate_jobs("tiny", 1) | {("aggregate", "setting=tiny"),
                                                    ("resolved_config", "setting=tiny"), ("summary", "")}


def test_report_is_the_mean_and_std_over_the_seeds(two_seeds, tiny_run):
    workdir, _ = two_seeds
    results = workdir / "results/tiny"
    rows = pd.read_csv(results / "report_seeds.csv")
    assert list(rows.columns) == ["seed", *REPORT_COLUMNS] and rows["seed"].unique().tolist() == [0, 1]
    for seed in (0, 1):  # every seed's rows as that replicate's report wrote them
        pd.testing.assert_frame_equal(rows[rows["seed"] == seed].drop(columns="seed").reset_index(drop=True),
                                      pd.read_csv(results / f"seed{seed}/report.csv"))
    # Seed 0 is the one-seed run's replicate, untouched.
    assert (results / "seed0/report.csv").read_bytes() == (tiny_run / "results/tiny/seed0/report.csv").read_bytes()

    report = pd.read_csv(results / "report.csv").set_index("method")
    assert (report["seeds"] == 2).all()
    for method, part in rows.groupby("method"):
        for column in REPORT_COLUMNS[1:]:
            values = part[column].to_numpy()
            if np.isnan(values).all():  # the oracle has no probabilities
                assert np.isnan(report.loc[method, [column, f"{column}_std"]].to_numpy(dtype=float)).all()
                continue
            assert report.loc[method, column] == pytest.approx(values.mean(), abs=0.0051)
            assert report.loc[method, f"{column}_std"] == pytest.approx(values.std(ddof=1), abs=0.0051)


def test_replicates_draw_from_derived_seeds(two_seeds):
    workdir, _ = two_seeds
    results = workdir / "results/tiny"
    # seed + 1000 k: the base model's 0 and the few expert's 3 become 1000 and 1003.
    assert "seed=1000" in (results / "seed1/logs/train_base.log").read_text()
    assert "seed=1003" in (results / "seed1/logs/train_few.log").read_text()
    weights = [torch.load(results / f"seed{k}/models/base/weights.pt", weights_only=True)["state_dict"]
               for k in (0, 1)]
    assert not torch.equal(weights[0]["classifier.weight"], weights[1]["classifier.weight"])
    # Data, classes and image caches are shared by the replicates.
    assert not any((results / "seed1").glob("**/classes.csv")) and not (results / "seed1/cache").exists()


def test_removing_a_seed_retrains_nothing(two_seeds, tmp_path):
    workdir, _ = two_seeds
    _, planned = edited_copy(workdir, tmp_path / "run", lambda tiny: tiny.update(seeds=[1]), SEEDS_TARGET)
    assert planned == {("aggregate", "setting=tiny"), ("resolved_config", "setting=tiny")}


# -- variants (conftest's variant_run: the tiny run with a variant of the few-shot expert) ---

def test_variant_of_one_expert_plans_only_that_experts_chain(variant_run):
    _, planned = variant_run
    where = "setting=tiny/variants/fewlr, seed=0"
    assert planned == {
        ("train_expert", f"{where}, expert=few"),
        *{("logits", f"{where}, model=few, split={split}") for split in ("train", "val", "test")},
        ("calibrate", where),
        ("report", where),
        ("aggregate", "setting=tiny/variants/fewlr"),
        ("resolved_config", "setting=tiny/variants/fewlr"),
        ("compare", "dataset=tiny"),  # a bare `snakemake` compares once the dataset has variants
    }


def test_variant_differs_from_the_main_settings_only_through_its_expert(variant_run):
    workdir, _ = variant_run
    results = workdir / "results/tiny"
    variant = results / "variants/fewlr"
    # Its own folder holds only what it changed: the few expert, its logits, the calibration.
    assert sorted(p.name for p in (variant / "seed0/models").iterdir()) == ["few"]
    assert sorted(p.name for p in (variant / "seed0/logits").iterdir()) == ["few"]
    assert (variant / "seed0/calibration/calibration.pt").exists()
    main_few, variant_few = (torch.load(folder / "seed0/models/few/weights.pt", weights_only=True)["state_dict"]
                             for folder in (results, variant))
    assert not torch.equal(main_few["classifier.weight"], variant_few["classifier.weight"])

    main_report = pd.read_csv(results / "report.csv").set_index("method")
    variant_report = pd.read_csv(variant / "report.csv").set_index("method")
    pd.testing.assert_frame_equal(main_report.loc[BASELINES], variant_report.loc[BASELINES])

    comparison = pd.read_csv(results / "comparison.csv")
    assert comparison["setting"].unique().tolist() == ["main", "fewlr"]
    for name, report in (("main", main_report), ("fewlr", variant_report)):
        part = comparison[comparison["setting"] == name].drop(columns="setting").set_index("method")
        pd.testing.assert_frame_equal(part, report)
    assert (results / "plots/comparison.png").stat().st_size > 10_000

    main_config = yaml.safe_load((results / "resolved_config.yaml").read_text())
    variant_config = yaml.safe_load((variant / "resolved_config.yaml").read_text())
    assert variant_config["experts"]["few"]["lr"] == 0.03
    variant_config["experts"]["few"]["lr"] = main_config["experts"]["few"]["lr"]
    assert variant_config == main_config


def test_variant_of_one_peer_plans_only_that_peers_chain(tiny_run, tmp_path):
    """A variant that changes only LDAM-DRW's scale trains and scores LDAM-DRW alone; every
    other model, the calibration among them, is the main settings'."""
    _, planned = edited_copy(tiny_run, tmp_path / "run", lambda tiny: tiny.update(
        variants={"scale16": {"peers": {"ldam_drw": {"scale": 16}}}}))
    where = "setting=tiny/variants/scale16, seed=0"
    assert planned == {
        ("train_peer", f"{where}, peer=ldam_drw"),
        *{("logits", f"{where}, model=ldam_drw, split={split}") for split in ("train", "val", "test")},
        ("report", where),
        ("aggregate", "setting=tiny/variants/scale16"),
        ("resolved_config", "setting=tiny/variants/scale16"),
        ("compare", "dataset=tiny"),
    }


def test_variant_of_sades_test_time_plans_only_its_aggregation(tiny_run, tmp_path):
    """SADE's test-time settings are not its training's: a variant of them learns the
    aggregation again on the main settings' SADE model, and trains nothing."""
    _, planned = edited_copy(tiny_run, tmp_path / "run", lambda tiny: tiny.update(
        variants={"tt3": {"peers": {"sade": {"test_time": {"epochs": 3}}}}}))
    where = "setting=tiny/variants/tt3, seed=0"
    assert planned == {("sade_test_time", where), ("report", where), ("aggregate", "setting=tiny/variants/tt3"),
                       ("resolved_config", "setting=tiny/variants/tt3"), ("compare", "dataset=tiny")}


def test_switching_a_peer_off_trains_nothing_and_drops_its_row(tiny_run, tmp_path):
    workdir, planned = edited_copy(tiny_run, tmp_path / "run",
                                   lambda tiny: tiny["peers"].update(balanced_softmax={"enabled": False}))
    assert planned == {("report", "setting=tiny, seed=0"), ("aggregate", "setting=tiny"),
                       ("resolved_config", "setting=tiny"), ("summary", "")}
    snakemake(workdir, "--cores", "2")
    report = pd.read_csv(workdir / "results/tiny/report.csv")
    assert report["method"].tolist() == [m for m in METHODS if m != "balanced_softmax"]
    shift = pd.read_csv(workdir / "results/tiny/test_shift.csv")
    assert "balanced_softmax" not in set(shift["method"]) and "ldam_drw" in set(shift["method"])
    # The other rows are the run's with the peer on.
    before = pd.read_csv(tiny_run / "results/tiny/report.csv").set_index("method")
    pd.testing.assert_frame_equal(report.set_index("method"), before.drop(index="balanced_softmax"))


def test_the_original_protocol_retrains_every_model_on_the_shared_data(tiny_run, tmp_path):
    """docs/synthetic_original.yaml's `original` variant changes the base model's schedule,
    the class splits, every expert and the calibration: it plans every model of its replicate
    (but the peers it switches off) and no data stage: the images and their caches are shared."""
    docs = yaml.safe_load((REPO / "docs/synthetic_original.yaml").read_text())["datasets"]["synthetic"]
    _, planned = edited_copy(tiny_run, tmp_path / "run", lambda tiny: tiny.update(
        peers={**tiny["peers"], **docs["peers"]}, variants={"original": docs["variants"]["original"]}))
    setting = "setting=tiny/variants/original"
    off = {("train_peer", f"{setting}, seed=0, peer={p}") for p in docs["peers"]} | {
        ("logits", f"{setting}, seed=0, model={p}, split={s}") for p in docs["peers"] for s in ("train", "val", "test")}
    main_report = {("report", "setting=tiny, seed=0"), ("aggregate", "setting=tiny"),
                   ("resolved_config", "setting=tiny"), ("summary", "")}  # its peers off: no rows to show
    assert planned == ((replicate_jobs("tiny/variants/original", 0) - off) | main_report | {
        ("classes", setting), ("aggregate", setting), ("resolved_config", setting), ("compare", "dataset=tiny")})


def test_the_originals_calibration_recipe_alone_refits_only_the_calibration(tiny_run, tmp_path):
    """calibration.optimizer: sgd on the main settings' experts: the calibration and the report
    are the variant's, every model is shared; the fit runs the recipe to its stopping rule."""
    workdir, planned = edited_copy(tiny_run, tmp_path / "run", lambda tiny: tiny.update(
        variants={"sgd": {"calibration": {"optimizer": "sgd", "sgd": {"batch_size": 8, "patience": 4}}}}))
    where = "setting=tiny/variants/sgd, seed=0"
    assert planned == {("calibrate", where), ("report", where), ("aggregate", "setting=tiny/variants/sgd"),
                       ("resolved_config", "setting=tiny/variants/sgd"), ("compare", "dataset=tiny")}
    snakemake(workdir, "--cores", "2")
    results = workdir / "results/tiny"
    summary = json.loads((results / "variants/sgd/seed0/calibration/summary.json").read_text())
    assert summary["optimizer"] == "sgd" and summary["epochs"] == summary["best_epoch"] + 4
    assert summary["recipe"]["batch_size"] == 8 and summary["recipe"]["lr"] == 0.1  # the rest: defaults
    main_report = pd.read_csv(results / "report.csv").set_index("method")
    variant_report = pd.read_csv(results / "variants/sgd/report.csv").set_index("method")
    pd.testing.assert_frame_equal(main_report.loc[BASELINES], variant_report.loc[BASELINES])
    assert not variant_report.loc["experts_calibrated"].equals(main_report.loc["experts_calibrated"])
