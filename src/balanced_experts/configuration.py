"""The workflow configuration: layered settings, and checks that give one readable line
per problem.

Layers. A dataset's settings are the top-level ``defaults`` section with the dataset's
own section merged over it (:func:`deep_merge`: mappings merge key by key, any other
value replaces the one beneath it); a variant's (``datasets.<name>.variants.<variant>``)
are its partial section merged over its dataset's. Every check and every stage sees
these merged settings (:func:`resolve_dataset`, :func:`resolve_variant`).

Checks. The JSON schema (``workflow/schemas/config.schema.yaml``) states what each key may
hold; it validates the file's structure and then every dataset's and variant's merged
settings. jsonschema's own messages dump the whole offending sub-document, so
:func:`config_problem` turns the most relevant error into ``<key path>: <what is wrong>;
<what is allowed>``, where the key path names the layer the offending key came from (the
variant, the dataset or ``defaults``). Rules the schema cannot express (threshold order,
default datasets that do not exist, what a variant may not change) are checked here too.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import yaml

from . import DECOUPLED_METHODS

DEFAULT_SEEDS = [0]
"""Replicates of a dataset that sets no ``seeds``."""

VARIANT_FIXED_KEYS = {
    "data": "it runs on its dataset's data; define another dataset for other data",
    "seeds": "it runs on its dataset's seeds, so that the comparison is seed by seed",
    "variants": "variants do not nest",
}
"""What a variant may not change, and why."""


class ConfigError(ValueError):
    """A configuration that the workflow cannot run with."""


# -- layers ----------------------------------------------------------------------------------

def deep_merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``: mappings merge key by key, recursively; any other value
    (a list, a number, a string, null) replaces the one beneath it. Returns a new dict and
    leaves both arguments as they were."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_dataset(config: dict, name: str) -> dict:
    """Dataset ``name``'s settings: ``defaults`` with the dataset's section merged over them,
    ``seeds`` filled in when neither sets them, the ``variants`` left out."""
    merged = deep_merge(config.get("defaults") or {}, config["datasets"][name] or {})
    merged.pop("variants", None)
    merged.setdefault("seeds", list(DEFAULT_SEEDS))
    return merged


def variant_names(config: dict, name: str) -> list[str]:
    """The variants of dataset ``name``, in the order the config lists them."""
    return list((config["datasets"][name] or {}).get("variants") or {})


def resolve_variant(config: dict, name: str, variant: str) -> dict:
    """Variant ``variant`` of dataset ``name``: its section merged over the dataset's settings."""
    return deep_merge(resolve_dataset(config, name), config["datasets"][name]["variants"][variant] or {})


def setting_path(dataset: str, variant: str | None = None) -> str:
    """A dataset's main settings are named by the dataset, a variant by
    ``<dataset>/variants/<variant>``: the folder under ``results/`` that holds its results."""
    return dataset if variant is None else f"{dataset}/variants/{variant}"


def parse_setting(setting: str) -> tuple[str, str | None]:
    """``(dataset, variant or None)`` of a setting's name (see :func:`setting_path`)."""
    dataset, _, variant = setting.partition("/variants/")
    return dataset, variant or None


def setting_key(setting: str) -> str:
    """The config key of a setting's section, for messages: ``datasets.<name>`` or
    ``datasets.<name>.variants.<variant>``."""
    dataset, variant = parse_setting(setting)
    return f"datasets.{dataset}" + (f".variants.{variant}" if variant else "")


def resolve_settings(config: dict) -> dict[str, dict]:
    """Every setting of a (checked) config, main settings and variants: name -> settings."""
    settings = {}
    for name in config["datasets"]:
        settings[setting_path(name)] = resolve_dataset(config, name)
        for variant in variant_names(config, name):
            settings[setting_path(name, variant)] = resolve_variant(config, name, variant)
    return settings


# -- checks ----------------------------------------------------------------------------------

def load_schema(path: str | Path) -> dict:
    with Path(path).open() as handle:
        return yaml.safe_load(handle)


def _key_path(path) -> str:
    return ".".join(str(part) for part in path) or "config"


def _allowed_keys(schema: dict) -> str:
    return ", ".join(schema.get("properties", {})) or "none"


def _describe(error: jsonschema.ValidationError, key: str | None = None) -> str:
    """One line for one schema violation: the key path, the value, what is allowed."""
    key = key or _key_path(error.absolute_path)
    value, schema, kind = error.instance, error.schema, error.validator
    if kind == "additionalProperties":
        unknown = sorted(set(value) - set(schema.get("properties", {})))
        return (f"{key}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"allowed: {_allowed_keys(schema)}")
    if kind == "required":
        missing = [k for k in schema["required"] if k not in value]
        return f"{key}: missing required key {', '.join(map(repr, missing))}"
    if kind == "enum":
        return f"{key}: {value!r} is not allowed; allowed: {', '.join(map(str, schema['enum']))}"
    if kind == "type":
        expected = schema["type"] if isinstance(schema["type"], str) else " or ".join(schema["type"])
        return f"{key}: {value!r} is a {type(value).__name__}; expected {expected}{_number_hint(value, expected)}"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"{key}: {value!r} is out of range; must be {bounds[kind]} {schema[kind]}"
    if kind in ("not", "pattern"):
        allowed = schema.get("description") or f"must match {schema.get('pattern')!r}"
        return f"{key}: {value!r} is not allowed; allowed: {allowed}"
    if kind in ("minItems", "maxItems"):
        bound = "at least" if kind == "minItems" else "at most"
        return f"{key}: {len(value)} items; needs {bound} {schema[kind]}"
    if kind == "minProperties":
        return f"{key}: needs at least {schema[kind]} entr{'y' if schema[kind] == 1 else 'ies'}"
    if kind == "uniqueItems":
        return f"{key}: {value!r} lists an item twice"
    return f"{key}: {error.message}"


YAML_11_EXPONENT = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?)(\d+)")
"""A number in exponent notation; YAML 1.1 (PyYAML, Snakemake's loader) reads it as a float
only with a dot in the mantissa and a sign in the exponent: ``1e-3`` and ``1.0e3`` are strings."""


def _number_hint(value, expected: str) -> str:
    """For a string where a number belongs: how to write it so that YAML reads a number."""
    if not isinstance(value, str) or "number" not in expected and "integer" not in expected:
        return ""
    try:
        unquoted = yaml.safe_load(value)
    except yaml.YAMLError:
        unquoted = None
    if isinstance(unquoted, (int, float)) and not isinstance(unquoted, bool):
        return " (a number in quotes is a string: write it without them)"
    exponent = YAML_11_EXPONENT.fullmatch(value.strip())
    if not exponent:
        return ""
    mantissa, sign, digits = exponent.groups()
    mantissa += "" if "." in mantissa else ".0"
    return f" (YAML 1.1 reads {value} as a string: write {mantissa}e{sign or '+'}{digits})"


def _sorted_errors(instance, schema: dict) -> list[jsonschema.ValidationError]:
    """Schema violations of ``instance``, most relevant first."""
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(instance), key=jsonschema.exceptions.relevance)
    # relevance sorts the best match last; descend into anyOf/oneOf alternatives as best_match does.
    return [jsonschema.exceptions.best_match([e]) for e in reversed(errors)]


def schema_problems(config: dict, schema: dict) -> list[str]:
    """One line per violation of the file's structure (top-level keys, ``execution``, each
    dataset and variant section a mapping), most relevant first."""
    return [_describe(error) for error in _sorted_errors(config, schema)]


def _layer_of(path: list, layers: list[tuple[str, dict]]) -> int | None:
    """Index of the most specific layer that sets ``path`` (keys inside merged settings)."""
    for index, (_, section) in enumerate(layers):
        node = section
        for part in path:
            if isinstance(node, dict) and part in node or isinstance(node, list) and part < len(node):
                node = node[part]
            else:
                break
        else:
            return index
    return None


def _origin(path: list, layers: list[tuple[str, dict]], found_by: list | None = None) -> str:
    """The config key of ``path``: under the most specific layer that sets it (or that sets
    ``found_by``), or under the most specific layer of all when none does (a missing key)."""
    index = _layer_of(path if found_by is None else found_by, layers)
    return _key_path([layers[index or 0][0], *path])


def _settings_problems(settings: dict, layers: list[tuple[str, dict]], schema: dict) -> list[str]:
    """Violations of the dataset schema by one setting's merged settings, each named by the
    layer its key came from (``layers``: ``(key prefix, section)``, most specific first)."""
    dataset_schema = {"definitions": schema["definitions"], "$ref": "#/definitions/dataset"}
    problems = []
    for error in _sorted_errors(settings, dataset_schema):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            # An unknown key is named where it was written: find its layer by the key itself.
            unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            problems.append(_describe(error, _origin(path, layers, found_by=path + unknown[:1])))
        else:
            problems.append(_describe(error, _origin(path, layers)))
    return problems + _semantic_problems(settings, layers)


def _semantic_problems(settings: dict, layers: list[tuple[str, dict]]) -> list[str]:
    """What the schema cannot say about one setting: relations between keys."""
    problems = []
    splits = settings.get("class_splits", {})
    many, few = splits.get("many_threshold", 100), splits.get("few_threshold", 20)
    if few > many:
        # Named in the most specific layer that sets either threshold.
        setters = [i for k in ("many_threshold", "few_threshold")
                   if (i := _layer_of(["class_splits", k], layers)) is not None]
        where = _key_path([layers[min(setters, default=0)][0], "class_splits"])
        problems.append(f"{where}: few_threshold ({few}) must not exceed many_threshold ({many})")
    data = settings.get("data", {})
    if data.get("kind") == "lists":
        missing = [k for k in ("root", "train_list", "val_list", "test_list") if k not in data]
        if missing:
            problems.append(f"{_origin(['data'], layers)}: kind 'lists' needs {', '.join(missing)}")
    if "embed_dim" in settings.get("backbone", {}) and settings["backbone"]["embed_dim"] is None:
        for expert, expert_settings in settings.get("experts", {}).items():
            if expert_settings.get("num_learnable") == 2:
                problems.append(
                    f"{_origin(['experts', expert, 'num_learnable'], layers)}: 2 adds the fc layer, and "
                    f"backbone.embed_dim is null (no fc layer); use 1 or >= 3")
    for method in DECOUPLED_METHODS:
        section = settings.get(method, {})
        if section.get("features") == "cached" and section.get("frozen_bn") == "train":
            problems.append(
                f"{_origin([method, 'frozen_bn'], layers)}: 'train' needs features: images (cached "
                f"features are computed once, in eval mode); use eval or leave it unset")
    return problems


def config_problems(config: dict, schema: dict) -> list[str]:
    """Every problem of ``config`` that is found before the first layer that has one: the
    file's structure, then each dataset's merged settings, then each variant's."""
    problems = schema_problems(config, schema)
    if problems:
        return problems
    datasets, defaults = config["datasets"], config.get("defaults") or {}
    for key, names in (("default_datasets", config.get("default_datasets", [])),
                       ("summary.datasets", (config.get("summary") or {}).get("datasets", []))):
        for name in names:
            if name not in datasets:
                problems.append(f"{key}: {name!r} is not a dataset; allowed: {', '.join(datasets)}")
    if "variants" in defaults:
        problems.append("defaults.variants: variants belong to a dataset (datasets.<name>.variants)")
    for name in datasets:
        layers = [(f"datasets.{name}", datasets[name] or {}), ("defaults", defaults)]
        problems += _settings_problems(resolve_dataset(config, name), layers, schema)
    if problems:
        return problems
    for name in datasets:
        for variant in variant_names(config, name):
            section = datasets[name]["variants"][variant] or {}
            key = setting_key(setting_path(name, variant))
            fixed = [k for k in VARIANT_FIXED_KEYS if k in section]
            if fixed:
                problems.append(f"{key}.{fixed[0]}: a variant cannot change {fixed[0]!r}: "
                                f"{VARIANT_FIXED_KEYS[fixed[0]]}")
                continue
            layers = [(key, section), (f"datasets.{name}", datasets[name]), ("defaults", defaults)]
            problems += _settings_problems(resolve_variant(config, name, variant), layers, schema)
    return problems


def config_problem(config: dict, schema: dict) -> str | None:
    """The first problem of ``config`` as one line, or None if it is valid."""
    problems = config_problems(config, schema)
    return problems[0] if problems else None


def check_config(config: dict, schema_path: str | Path) -> None:
    """Raise :class:`ConfigError` with one line naming the key path and what is allowed."""
    problem = config_problem(config, load_schema(schema_path))
    if problem:
        raise ConfigError(f"invalid config: {problem}")
