"""Checks of the workflow configuration that give one readable line per problem.

The JSON schema (``workflow/schemas/config.schema.yaml``) states what each key may hold;
jsonschema's own messages dump the whole offending sub-document, so :func:`config_problem`
turns the most relevant error into ``<key path>: <what is wrong>; <what is allowed>``.
Rules the schema cannot express (threshold order, default datasets that do not exist) are
checked here too.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from . import DECOUPLED_METHODS


class ConfigError(ValueError):
    """A configuration that the workflow cannot run with."""


def load_schema(path: str | Path) -> dict:
    with Path(path).open() as handle:
        return yaml.safe_load(handle)


def _key_path(path) -> str:
    return ".".join(str(part) for part in path) or "config"


def _allowed_keys(schema: dict) -> str:
    return ", ".join(schema.get("properties", {})) or "none"


def _describe(error: jsonschema.ValidationError) -> str:
    """One line for one schema violation: the key path, the value, what is allowed."""
    key = _key_path(error.absolute_path)
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
        return f"{key}: {value!r} is a {type(value).__name__}; expected {expected}"
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
    return f"{key}: {error.message}"


def schema_problems(config: dict, schema: dict) -> list[str]:
    """One line per schema violation, most relevant first."""
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=jsonschema.exceptions.relevance)
    # relevance sorts the best match last; descend into anyOf/oneOf alternatives as best_match does.
    return [_describe(jsonschema.exceptions.best_match([e])) for e in reversed(errors)]


def semantic_problems(config: dict) -> list[str]:
    """What the schema cannot say: relations between keys."""
    problems = []
    datasets = config.get("datasets", {})
    for name in config.get("default_datasets", []):
        if name not in datasets:
            problems.append(f"default_datasets: {name!r} is not a dataset; allowed: {', '.join(datasets)}")
    for name, dataset in datasets.items():
        splits = dataset.get("class_splits", {})
        many, few = splits.get("many_threshold", 100), splits.get("few_threshold", 20)
        if few > many:
            problems.append(
                f"datasets.{name}.class_splits: few_threshold ({few}) must not exceed "
                f"many_threshold ({many})")
        if "embed_dim" in dataset.get("backbone", {}) and dataset["backbone"]["embed_dim"] is None:
            for expert, settings in dataset.get("experts", {}).items():
                if settings.get("num_learnable") == 2:
                    problems.append(
                        f"datasets.{name}.experts.{expert}.num_learnable: 2 adds the fc layer, and "
                        f"backbone.embed_dim is null (no fc layer); use 1 or >= 3")
        for method in DECOUPLED_METHODS:
            section = dataset.get(method, {})
            if section.get("features") == "cached" and section.get("frozen_bn") == "train":
                problems.append(
                    f"datasets.{name}.{method}.frozen_bn: 'train' needs features: images (cached "
                    f"features are computed once, in eval mode); use eval or leave it unset")
        data = dataset.get("data", {})
        if data.get("kind") == "lists":
            missing = [k for k in ("root", "train_list", "val_list", "test_list") if k not in data]
            if missing:
                problems.append(f"datasets.{name}.data: kind 'lists' needs {', '.join(missing)}")
    return problems


def config_problem(config: dict, schema: dict) -> str | None:
    """The first problem of ``config`` as one line, or None if it is valid."""
    problems = schema_problems(config, schema)
    if not problems:
        problems = semantic_problems(config)
    return problems[0] if problems else None


def check_config(config: dict, schema_path: str | Path) -> None:
    """Raise :class:`ConfigError` with one line naming the key path and what is allowed."""
    problem = config_problem(config, load_schema(schema_path))
    if problem:
        raise ConfigError(f"invalid config: {problem}")
