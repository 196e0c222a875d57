"""One source per default and per name: config.yaml's `defaults` against the defaults of the
code that reads each section, the schema's keys and enumerations against the code's settings
classes and registries, and the method names of the report's plots and captions against
balanced_experts.methods."""

import dataclasses
import inspect
import re

import pytest
import yaml

from balanced_experts import DATA_SPLITS, DECOUPLED_METHODS, SPLIT_NAMES
from balanced_experts.calibration import OPTIMIZERS, SGDRecipe, fit_calibration
from balanced_experts.cifar import VARIANTS, CifarLTSpec
from balanced_experts.configuration import DEFAULT_SEEDS
from balanced_experts.decoupled import FEATURE_SOURCES, DecoupledSettings
from balanced_experts.execution import ExecutionSettings
from balanced_experts.experts import REJECT_COUNTS, REJECT_SAMPLINGS, ExpertSettings
from balanced_experts.images.augment import AUGMENTATIONS
from balanced_experts.images.spec import InputSpec
from balanced_experts.methods import METHODS, PEER_METHODS, PEER_SWITCH, PROPOSED, TEST_TIME_METHODS
from balanced_experts.models import BACKBONES, FROZEN_BN_MODES, LongTailNet, build_model
from balanced_experts.peers import PEERS, default_config
from balanced_experts.plots import METHOD_STYLES
from balanced_experts.pretrained import FORMATS
from balanced_experts.splits import SplitRule
from balanced_experts.synthetic import SyntheticSpec
from balanced_experts.tables import FOLDS
from balanced_experts.training import SCHEDULERS, TrainSettings, make_scheduler
from conftest import REPO

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
DEFAULTS = CONFIG["defaults"]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
DATASET = SCHEMA["definitions"]["dataset"]["properties"]

# Each section of config.yaml's `defaults` -> the settings classes (or the function) that read it.
READERS = {
    ("base",): (TrainSettings,),
    **{("experts", split): (TrainSettings, ExpertSettings) for split in SPLIT_NAMES},
    **{(method,): (TrainSettings, DecoupledSettings) for method in DECOUPLED_METHODS},
    ("input",): (InputSpec,),
    ("backbone",): (LongTailNet,),
    ("class_splits",): (SplitRule,),
    ("calibration",): (fit_calibration,),
    ("calibration", "sgd"): (SGDRecipe,),
}
# The arguments of a reader that are no keys of its section.
NOT_KEYS = {LongTailNet: {"backbone", "num_outputs"},  # the section's `name`; the experts' own count
            fit_calibration: {"experts", "labels", "num_classes", "log", "block_rows"}}


def _parameters(reader) -> dict:
    """Config key -> default (``inspect.Parameter.empty`` where there is none) of a settings
    dataclass's fields or a function's keyword arguments."""
    if dataclasses.is_dataclass(reader):
        return {f.name: inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
                for f in dataclasses.fields(reader)}
    return {name: p.default for name, p in inspect.signature(reader).parameters.items()
            if name not in NOT_KEYS.get(reader, ())}


def _required(*readers) -> set[str]:
    return {name for reader in readers for name, default in _parameters(reader).items()
            if default is inspect.Parameter.empty}


def _section(path):
    section = DEFAULTS
    for key in path:
        section = section[key]
    return section


def test_every_defaults_section_has_its_readers():
    assert set(DEFAULTS) == {path[0] for path in READERS} | {"seeds", "peers"}
    assert {"sgd"} == {key for key, value in DEFAULTS["calibration"].items() if isinstance(value, dict)}
    assert set(DEFAULTS["experts"]) == set(SPLIT_NAMES)
    assert DEFAULTS["seeds"] == DEFAULT_SEEDS  # a dataset that sets no seeds, without `defaults`


@pytest.mark.parametrize("path", READERS, ids=".".join)
def test_config_yaml_sets_a_default_the_code_does_not_contradict(path):
    """A key config.yaml's `defaults` set is read by the code, and the code has no other
    default for it (or the same one; None, an option switched off, gives way to a set value).
    What the code requires, every section that feeds it sets."""
    section, readers = _section(path), READERS[path]
    parameters = [_parameters(reader) for reader in readers]
    for key, value in section.items():
        assert any(key in p for p in parameters), f"defaults.{'.'.join(path)}.{key} is read by no code"
        for reader, p in zip(readers, parameters):
            default = p.get(key, inspect.Parameter.empty)
            assert default in (inspect.Parameter.empty, None, value), (
                f"defaults.{'.'.join(path)}.{key} is {value!r}, {reader.__name__}'s default {default!r}")
    assert _required(*readers) <= set(section)


def test_peer_defaults_are_the_registrys_and_the_schema_names_their_keys():
    """defaults.peers is peers.default_config() (every peer on, at its paper's settings); the
    schema has a section per peer with its switch and exactly its settings' fields."""
    assert DEFAULTS["peers"] == default_config()
    assert list(PEERS) == list(PEER_METHODS)
    schema = DATASET["peers"]["properties"]
    assert list(schema) == list(PEERS)
    for name, peer in PEERS.items():
        assert set(schema[name]["properties"]) == {PEER_SWITCH} | set(_parameters(peer)), name


def test_the_summary_columns_are_the_tables_folds():
    column = SCHEMA["properties"]["summary"]["properties"]["columns"]["items"]
    assert column["enum"] == list(FOLDS) == CONFIG["summary"]["columns"]  # config.yaml shows the default


def test_execution_defaults_are_those_config_yaml_shows():
    """ExecutionSettings holds the section's defaults; config.yaml spells them all out for the
    reader, and the schema lists its keys: all three name the same settings."""
    assert CONFIG["execution"] == dataclasses.asdict(ExecutionSettings())
    assert set(SCHEMA["properties"]["execution"]["properties"]) == set(_parameters(ExecutionSettings))


def test_the_schema_names_the_keys_the_code_reads():
    """Each section's keys are the fields of the class that reads it, and what the schema
    requires of the merged settings is what that class has no default for. (The base model
    trains every layer: it has no frozen_bn.)"""
    definitions = SCHEMA["definitions"]
    train = set(_parameters(TrainSettings))
    sections = {
        "training": (definitions["training"], train - {"frozen_bn"}, _required(TrainSettings)),
        "expert": (definitions["expert"], train | set(_parameters(ExpertSettings)),
                   _required(TrainSettings, ExpertSettings)),
        "decoupled": (definitions["decoupled"], train | set(_parameters(DecoupledSettings)),
                      _required(TrainSettings, DecoupledSettings)),
        "input": (DATASET["input"], set(_parameters(InputSpec)), set()),
        "class_splits": (DATASET["class_splits"], set(_parameters(SplitRule)), set()),
        "calibration": (DATASET["calibration"], set(_parameters(fit_calibration)), set()),
        "calibration.sgd": (DATASET["calibration"]["properties"]["sgd"], set(_parameters(SGDRecipe)), set()),
        "synthetic": (DATASET["data"]["properties"]["synthetic"], set(_parameters(SyntheticSpec)), set()),
    }
    for name, (schema, keys, required) in sections.items():
        assert set(schema["properties"]) == keys, name
        assert set(schema.get("required", [])) == required, name
    cifar = DATASET["data"]["properties"]["cifar"]
    assert set(cifar["properties"]) == set(_parameters(CifarLTSpec)) | {"archive"}  # the archive travels apart
    assert {f"{split}_list" for split in DATA_SPLITS} <= set(DATASET["data"]["properties"])


ENUMERATIONS = {
    "scheduler": (SCHEMA["definitions"]["training"]["properties"]["scheduler"], SCHEDULERS),
    "frozen_bn": (SCHEMA["definitions"]["frozen_bn"], FROZEN_BN_MODES),
    "reject_sampling": (SCHEMA["definitions"]["expert"]["properties"]["reject_sampling"], REJECT_SAMPLINGS),
    "reject_count": (SCHEMA["definitions"]["expert"]["properties"]["reject_count"], REJECT_COUNTS),
    "calibration.optimizer": (DATASET["calibration"]["properties"]["optimizer"], OPTIMIZERS),
    "features": (SCHEMA["definitions"]["decoupled"]["properties"]["features"], FEATURE_SOURCES),
    "input.augment": (DATASET["input"]["properties"]["augment"], AUGMENTATIONS),
    "backbone.name": (DATASET["backbone"]["properties"]["name"], BACKBONES),
    "backbone.pretrained.format": (DATASET["backbone"]["properties"]["pretrained"]["properties"]["format"], FORMATS),
    "data.cifar.variant": (DATASET["data"]["properties"]["cifar"]["properties"]["variant"], VARIANTS),
}


@pytest.mark.parametrize("key", ENUMERATIONS)
def test_the_schema_allows_exactly_the_names_the_code_knows(key):
    schema, registry = ENUMERATIONS[key]
    assert schema["enum"] == list(registry)


def test_the_schema_has_a_section_per_expert_and_per_decoupled_classifier():
    experts = DATASET["experts"]
    assert list(experts["properties"]) == experts["required"] == list(SPLIT_NAMES)
    decoupled = [key for key, value in DATASET.items() if value == {"$ref": "#/definitions/decoupled"}]
    assert decoupled == list(DECOUPLED_METHODS)


def test_every_data_kind_is_prepared_by_its_rule_or_read_from_the_users_lists():
    """`synthetic` and `cifar` data are made by the rules `<kind>_data`; `lists` names files."""
    rules = re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk")), re.M)
    prepared = {rule.removesuffix("_data") for rule in rules if rule.endswith("_data")}
    assert set(DATASET["data"]["properties"]["kind"]["enum"]) == prepared | {"lists"}


@pytest.mark.slow
def test_every_registered_backbone_and_scheduler_works():
    import torch

    with torch.device("meta"):  # built, not initialised: ResNet-152's init takes seconds
        for name in BACKBONES:
            assert build_model({"name": name, "embed_dim": 8}, 3).classifier.out_features == 3, name
    for name in SCHEDULERS:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = make_scheduler(optimizer, TrainSettings(epochs=3, batch_size=1, lr=0.1, seed=0, scheduler=name), 2)
        optimizer.step()
        scheduler.step()
        assert 0 < optimizer.param_groups[0]["lr"] <= 0.1, name


def test_cosine_epoch_holds_each_epochs_lr_as_the_originals_cosine_annealing():
    """cosine_epoch is torch's CosineAnnealingLR(T_max=epochs) stepped once per epoch (the
    original code's: lr_e = lr (1 + cos(pi e / T)) / 2 in epoch e = 0..T-1), here at 3 steps
    per epoch; cosine lowers the lr at every step."""
    import math

    import torch

    def factors(scheduler):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        lam = make_scheduler(optimizer, TrainSettings(epochs=4, batch_size=1, lr=0.1, seed=0,
                                                      scheduler=scheduler), 3).lr_lambdas[0]
        return [lam(step) for step in range(12)]

    annealing = [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert factors("cosine_epoch") == pytest.approx([f for f in annealing for _ in range(3)], abs=1e-12)
    per_step = factors("cosine")  # the same at each epoch's first step, lower after it
    assert per_step[::3] == pytest.approx(annealing, abs=1e-12) and per_step[1] < annealing[0]


# -- method names ------------------------------------------------------------------------------

def test_the_plots_style_methods_of_the_report_in_its_order():
    assert list(METHOD_STYLES) == [m for m in (*METHODS, *TEST_TIME_METHODS) if m in METHOD_STYLES]
    assert PROPOSED in METHOD_STYLES


def test_the_captions_name_the_report_methods_as_they_are_spelled():
    """report.csv's caption describes every method; any caption naming a method spells it
    as the report does."""
    captions = {path.name: path.read_text() for path in (REPO / "workflow/report").glob("*.rst")}
    assert set(METHODS) <= set(re.findall(r"``(\w+)``", captions["report.rst"]))
    for name, text in captions.items():
        named = set(re.findall(r"\b(?:base|experts)_\w+|\boracle\b", text))
        assert named <= set(METHODS), f"workflow/report/{name} names {sorted(named - set(METHODS))}"
