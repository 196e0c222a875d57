"""Layered settings (defaults, dataset, variant), the checks of the merged settings, and
which stages a variant shares with its dataset's main settings."""

import copy

import pytest
import yaml

from balanced_experts.configuration import (config_problem, deep_merge, resolve_dataset, resolve_settings,
                                            resolve_variant)
from balanced_experts.experiments import MODELS, STAGES, Experiments, replicate_seed
from balanced_experts.methods import PEER_METHODS
from conftest import REPO, TINY_DATASET, tiny_config

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
REPO_CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def test_deep_merge_merges_mappings_and_replaces_everything_else():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"z": 1}}
    override = {"a": {"y": [3]}, "b": {"new": 2}, "c": None}
    before = copy.deepcopy(base), copy.deepcopy(override)
    assert deep_merge(base, override) == {"a": {"x": 1, "y": [3]}, "b": {"new": 2}, "c": None}
    assert (base, override) == before


def test_dataset_inherits_defaults_and_variant_inherits_its_dataset():
    config = tiny_config()
    config["defaults"] = {"calibration": {"max_iter": 7, "tolerance": 0.1}, "base": {"momentum": 0.5}}
    config["datasets"]["tiny"]["variants"] = {"v": {"calibration": {"max_iter": 9}}}
    tiny = resolve_dataset(config, "tiny")
    assert tiny["calibration"] == {"max_iter": 20, "tolerance": 0.1}  # the dataset's 20 wins
    assert tiny["base"] == {**TINY_DATASET["base"], "momentum": 0.5}
    assert tiny["seeds"] == [0] and "variants" not in tiny
    variant = resolve_variant(config, "tiny", "v")
    assert variant == {**tiny, "calibration": {"max_iter": 9, "tolerance": 0.1}}
    assert list(resolve_settings(config)) == ["tiny", "tiny/variants/v"]


def test_repository_presets_are_valid_and_a_user_dataset_needs_three_keys():
    assert config_problem(REPO_CONFIG, SCHEMA) is None
    config = copy.deepcopy(REPO_CONFIG)
    config["datasets"]["mine"] = {
        "data": {"kind": "lists", "root": "r", "train_list": "a", "val_list": "b", "test_list": "c"},
        "input": {"size": 64}, "backbone": {"name": "resnet18"}}
    assert config_problem(config, SCHEMA) is None
    mine = resolve_dataset(config, "mine")
    assert mine["experts"] == REPO_CONFIG["defaults"]["experts"] and mine["input"]["augment"] == "imagenet"


def test_repository_presets_state_only_what_differs_from_the_defaults():
    for name, section in REPO_CONFIG["datasets"].items():
        for key, value in section.items():
            inherited = REPO_CONFIG["defaults"].get(key)
            if isinstance(value, dict) and isinstance(inherited, dict):
                for sub, sub_value in value.items():
                    assert inherited.get(sub) != sub_value or isinstance(sub_value, dict), (name, key, sub)
            else:
                assert inherited != value, (name, key)


def _problem(edit) -> str:
    config = tiny_config()
    edit(config)
    return config_problem(config, SCHEMA)


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["datasets"]["tiny"]["base"].update(lr=0),
     "datasets.tiny.base.lr: 0 is out of range; must be > 0"),
    (lambda c: c.update(defaults={"crt": {"epochs": 0, "weight_decay": -1}}),  # tiny sets its own epochs
     "defaults.crt.weight_decay: -1 is out of range; must be >= 0"),
    (lambda c: c.update(defaults={"base": {"lrr": 1}}),
     "defaults.base: unknown key 'lrr'; allowed: epochs,"),
    (lambda c: c["datasets"]["tiny"].update(variants={"v": {"experts": {"few": {"open_ratio": 0.5}}}}),
     "datasets.tiny.variants.v.experts.few.open_ratio: 0.5 is out of range; must be >= 1"),
    (lambda c: c["datasets"]["tiny"].update(variants={"v": {"base": {"lrr": 1}}}),
     "datasets.tiny.variants.v.base: unknown key 'lrr'; allowed: epochs,"),
    (lambda c: c["datasets"]["tiny"].update(variants={"v": {"class_splits": {"few_threshold": 30}}}),
     "datasets.tiny.variants.v.class_splits: few_threshold (30) must not exceed many_threshold (24)"),
    (lambda c: c["datasets"]["tiny"].update(variants={"v": {"seeds": [0, 1]}}),
     "datasets.tiny.variants.v.seeds: a variant cannot change 'seeds'"),
    (lambda c: c["datasets"].update({"my/data": {}}),
     "datasets: 'my/data' is not allowed; allowed: letters, digits"),
    (lambda c: c["datasets"]["tiny"].update(variants={"main": {}}),
     "datasets.tiny.variants: 'main' is not allowed; allowed: letters, digits"),
    (lambda c: c["datasets"]["tiny"].update(seeds=[0, 0]),
     "datasets.tiny.seeds: [0, 0] lists an item twice"),
    (lambda c: c.update(defaults={"seeds": [0, "1"]}),
     "defaults.seeds.1: '1' is a str; expected integer"),
    (lambda c: c["datasets"]["tiny"]["experts"].pop("few"),
     "datasets.tiny.experts: missing required key 'few'"),
    (lambda c: c["datasets"]["tiny"].update(variants={"v": {"peers": {"ldam_drw": {"drw_start": 1.5}}}}),
     "datasets.tiny.variants.v.peers.ldam_drw.drw_start: 1.5 is out of range; must be <= 1"),
    (lambda c: c.update(defaults={"peers": {"focal": {"enabled": True}}}),
     "defaults.peers: unknown key 'focal'; allowed: balanced_softmax, ldam_drw"),
    (lambda c: c.update(summary={"datasets": ["tiny", "places"]}),
     "summary.datasets: 'places' is not a dataset; allowed: tiny"),
])
def test_problems_name_the_layer_that_set_the_key(edit, expected):
    assert _problem(edit).startswith(expected)


@pytest.mark.parametrize("written, hint", [
    ("1e-3", "(YAML 1.1 reads 1e-3 as a string: write 1.0e-3)"),
    ("1.0e3", "(YAML 1.1 reads 1.0e3 as a string: write 1.0e+3)"),
    ("'0.01'", "(a number in quotes is a string: write it without them)"),
])
def test_a_number_yaml_reads_as_a_string_says_how_to_write_it(written, hint):
    config = tiny_config()
    config["datasets"]["tiny"]["base"]["lr"] = yaml.safe_load(f"lr: {written}")["lr"]  # as the file says it
    value = config["datasets"]["tiny"]["base"]["lr"]
    assert config_problem(config, SCHEMA) == f"datasets.tiny.base.lr: {value!r} is a str; expected number {hint}"
    suggested = hint.rpartition("write ")[2].rstrip(")")
    if "YAML 1.1" in hint:
        assert yaml.safe_load(f"lr: {suggested}")["lr"] == float(written)  # the suggestion reads as the number


def test_the_small_data_example_is_valid_and_sets_early_stopping():
    config = copy.deepcopy(REPO_CONFIG)
    example = yaml.safe_load((REPO / "docs/mydata.yaml").read_text())
    config["datasets"].update(example["datasets"])
    assert config_problem(config, SCHEMA) is None
    mydata = resolve_dataset(config, "mydata")
    assert mydata["base"]["patience"] and all(expert["patience"] for expert in mydata["experts"].values())
    assert mydata["data"]["kind"] == "lists" and mydata["data"]["train_list"].startswith(mydata["data"]["root"])


def test_replicate_zero_is_the_configured_settings():
    experiments = Experiments.from_config(tiny_config())
    assert experiments.params("tiny", "train_expert", 0, "few")["train"] == TINY_DATASET["experts"]["few"]
    replicate = experiments.params("tiny", "train_expert", 2, "few")["train"]
    assert replicate == {**TINY_DATASET["experts"]["few"], "seed": replicate_seed(3, 2)} and replicate["seed"] == 2003
    # Stages that draw nothing random read the same slices in every replicate; the
    # calibration's SGD recipe shuffles, from its own seed of the replicate.
    assert experiments.params("tiny", "logits", 2, "few") == experiments.params("tiny", "logits", 0, "few")
    assert "sgd" not in TINY_DATASET.get("calibration", {})
    assert experiments.params("tiny", "calibrate", 2) == experiments.params("tiny", "calibrate", 0)
    repo = Experiments.from_config(REPO_CONFIG)
    zero, two = (repo.params("synthetic", "calibrate", k)["calibration"] for k in (0, 2))
    assert two == {**zero, "sgd": {**zero["sgd"], "seed": replicate_seed(5021, 2)}}


def _owners(variant: dict) -> dict[tuple[str, str | None], str]:
    config = tiny_config()
    config["datasets"]["tiny"]["variants"] = {"v": variant}
    experiments = Experiments.from_config(config)
    jobs = [("classes", None), ("image_cache", None), ("train_base", None),
            *[("train_decoupled", m) for m in ("crt", "lws")],
            *[("train_expert", e) for e in ("many", "medium", "few")],
            *[("train_peer", p) for p in PEER_METHODS],
            *[("logits", m) for m in MODELS], ("calibrate", None), ("sade_test_time", None)]
    assert {stage for stage, _ in jobs} == set(STAGES)
    return {job: experiments.owner("tiny/variants/v", job[0], 1, job[1]) for job in jobs}


def _own(owners):
    return {job for job, owner in owners.items() if owner == "tiny/variants/v"}


def test_variant_shares_every_stage_it_does_not_change():
    assert _own(_owners({"experts": {"few": {"lr": 0.5}}})) == {
        ("train_expert", "few"), ("logits", "few"), ("calibrate", None)}
    assert _own(_owners({"calibration": {"max_iter": 3}})) == {("calibrate", None)}
    assert _own(_owners({"calibration": {"optimizer": "sgd", "sgd": {"batch_size": 32}}})) == {("calibrate", None)}
    assert _own(_owners({"crt": {"lr": 0.5}})) == {("train_decoupled", "crt"), ("logits", "crt")}
    # One peer's setting: that peer alone; the base recipe: the base model and every peer.
    assert _own(_owners({"peers": {"ldam_drw": {"scale": 16}}})) == {("train_peer", "ldam_drw"),
                                                                     ("logits", "ldam_drw")}
    # SADE's test-time settings: its aggregation alone; its model's: its chain.
    assert _own(_owners({"peers": {"sade": {"test_time": {"epochs": 3}}}})) == {("sade_test_time", None)}
    assert _own(_owners({"peers": {"sade": {"inverse_prior_power": 1.0}}})) == {
        ("train_peer", "sade"), ("logits", "sade"), ("sade_test_time", None)}
    owners = _owners({"base": {"lr": 0.01}})
    assert _own(owners) == set(owners) - {("classes", None), ("image_cache", None)}
    # New class splits: new experts on the shared base model.
    assert _own(_owners({"class_splits": {"many_threshold": 20}})) == {
        ("classes", None), *[(s, e) for e in ("many", "medium", "few") for s in ("train_expert", "logits")],
        ("calibrate", None)}
    # Another backbone: every model, but the data's classes and image caches are shared.
    owners = _owners({"backbone": {"width": 8}})
    assert _own(owners) == set(owners) - {("classes", None), ("image_cache", None)}
    # A setting equal to the main one shares everything.
    assert _own(_owners({})) == set()


@pytest.mark.parametrize("dataset", ["places", "imagenet"])
def test_the_original_variant_of_a_real_preset_retrains_its_models_on_the_shared_data(dataset):
    """config.yaml's `original` variants: the original protocol changes the base model's
    schedule, so every model of theirs is their own; the image caches are shared, and the
    peers, which the original does not have, are off."""
    experiments = Experiments.from_config(REPO_CONFIG)
    variant = f"{dataset}/variants/original"
    assert experiments.owner(variant, "image_cache") == dataset
    for stage, key in [("classes", None), ("train_base", None), ("train_expert", "few"), ("calibrate", None)]:
        assert experiments.owner(variant, stage, 0, key) == variant, stage
    assert experiments.peers(variant) == [] and experiments.peers(dataset) == list(PEER_METHODS)
    settings = experiments.settings[variant]
    assert settings["calibration"]["optimizer"] == "sgd" and settings["class_splits"]["many_inclusive"]
    assert {settings["experts"][e]["reject_count"] for e in ("many", "medium", "few")} == {"floor"}


def test_the_default_datasets_original_variant_is_imagenet_lts():
    """docs/synthetic_original.yaml's variant (the default dataset's schedules are ImageNet-LT's:
    cosine base, step many and medium experts, cosine few) is config.yaml's for ImageNet-LT,
    its peers set apart (the file turns them off for both settings)."""
    docs = yaml.safe_load((REPO / "docs/synthetic_original.yaml").read_text())["datasets"]["synthetic"]
    imagenet = copy.deepcopy(REPO_CONFIG["datasets"]["imagenet"]["variants"]["original"])
    imagenet.pop("peers")
    assert docs["variants"]["original"] == imagenet
    synthetic, places = REPO_CONFIG["datasets"]["synthetic"], REPO_CONFIG["datasets"]["places"]["variants"]["original"]
    assert [synthetic["experts"][e].get("scheduler", "cosine") for e in ("many", "medium", "few")] == [
        "step", "step", "cosine"]
    imagenet = REPO_CONFIG["datasets"]["imagenet"]["variants"]["original"]
    assert {k: v for k, v in places.items() if k not in ("base", "experts")} == {
        k: v for k, v in imagenet.items() if k not in ("base", "experts")}
