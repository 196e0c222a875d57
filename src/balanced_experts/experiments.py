"""Experiments: settings, replicates, and which stages a variant shares with its dataset.

A *setting* is a dataset's main settings, named by the dataset (``places``), or one of its
variants, named ``<dataset>/variants/<variant>``; either name is also the folder under
``results/`` that holds the setting's results. A *replicate* is one seed ``k`` of a
setting: every seed its models draw from (weights, the expert's reject sample, shuffles and
augmentation) is the configured one plus ``1000 k`` (:func:`replicate_seed`), so replicate
0 is exactly the configured settings. Data, classes and image caches do not depend on k.

:data:`STAGES` says, once for every stage, which slices of a setting's config it reads
(exactly its rule's ``params``) and which stages' outputs it reads. A variant's stage is
*shared* with the main settings, and its outputs are the main settings' files, when its
slices equal the main settings' and every stage upstream of it is shared
(:meth:`Experiments.owner`): a variant that changes only ``experts.few`` trains the few
expert, scores it, and recalibrates, and shares everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import DECOUPLED_METHODS, SPLIT_NAMES
from .configuration import parse_setting, resolve_settings
from .methods import PEER_METHODS, enabled_peers

EXPERTS = SPLIT_NAMES
"""One expert per class split."""

MODELS = ("base", *EXPERTS, *DECOUPLED_METHODS, *PEER_METHODS)
"""Every model whose logits may be written: the base model, the experts, the decoupled
classifiers (cRT, LWS) and the peers. A setting runs those of :meth:`Experiments.models`:
every one but the peers its config switches off."""

SEED_STRIDE = 1000


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of replicate ``replicate`` for a model configured with ``seed``."""
    return int(seed) + SEED_STRIDE * int(replicate)


def training_stage(model: str) -> tuple[str, str | None]:
    """``(stage, key)`` of the stage that trains ``model``."""
    if model in EXPERTS:
        return "train_expert", model
    if model in DECOUPLED_METHODS:
        return "train_decoupled", model
    if model in PEER_METHODS:
        return "train_peer", model
    return f"train_{model}", None


@dataclass(frozen=True)
class Stage:
    """What one stage reads from its setting's config and from other stages.

    ``slices``: rule param name -> config key path ("{key}" stands for the job's expert,
    decoupled method or peer);
    ``upstream``: the job's key -> the ``(stage, key)`` whose outputs it reads
    (tests/test_artifacts.py holds it against the rules' inputs);
    ``seeded``: where the ``seed`` derived from the replicate sits: a slice name and the
    keys inside it (a training stage's ``("train",)``; the calibration's SGD recipe's
    ``("calibration", "sgd")``);
    ``omit``: slice name -> keys left out of it (a stage that another stage's settings sit
    inside: the SADE peer's training reads ``peers.sade`` but its ``test_time``).

    Whether a stage runs once per replicate or once per setting is its files' business: their
    templates in :mod:`balanced_experts.paths` hold ``{seed}`` or not.
    """

    slices: dict[str, tuple[str, ...]]
    upstream: Callable[[str | None], list[tuple[str, str | None]]] = lambda key: []
    seeded: tuple[str, ...] = ()
    omit: dict[str, tuple[str, ...]] = field(default_factory=dict)


STAGES: dict[str, Stage] = {
    "classes": Stage({"class_splits": ("class_splits",)}),
    "image_cache": Stage({"size": ("input", "size")}),
    "train_base": Stage({"train": ("base",), "backbone": ("backbone",), "input": ("input",)},
                        lambda key: [("image_cache", None)], seeded=("train",)),
    "train_expert": Stage({"train": ("experts", "{key}"), "input": ("input",)},
                          lambda key: [("image_cache", None), ("classes", None), ("train_base", None)],
                          seeded=("train",)),
    "train_decoupled": Stage({"train": ("{key}",), "input": ("input",)},
                             lambda key: [("image_cache", None), ("train_base", None)], seeded=("train",)),
    # A peer: the base model's recipe, backbone and input, with its own loss and head.
    "train_peer": Stage({"train": ("base",), "backbone": ("backbone",), "input": ("input",),
                         "peer": ("peers", "{key}")},
                        lambda key: [("image_cache", None)], seeded=("train",), omit={"peer": ("test_time",)}),
    "logits": Stage({"input": ("input",)}, lambda model: [("image_cache", None), training_stage(model)]),
    # SADE's test-time aggregation: its model's experts on the test images; the lr of its
    # learned weights is the base model's unless peers.sade.test_time sets one.
    "sade_test_time": Stage({"lr": ("base", "lr"), "input": ("input",), "test_time": ("peers", "sade", "test_time")},
                            lambda key: [("image_cache", None), ("train_peer", "sade")],
                            seeded=("test_time",)),
    "calibrate": Stage({"calibration": ("calibration",)}, lambda key: [("logits", e) for e in EXPERTS],
                       seeded=("calibration", "sgd")),
}


KEY_WILDCARDS = ("expert", "model", "method", "peer")
"""The wildcards that name a stage job's key ("{key}" in its slices): its expert, model,
decoupled method or peer. A job has at most one."""


def job_key(wildcards) -> str | None:
    """The key of a stage job with ``wildcards`` (Snakemake's, or a dict), or None."""
    return next((wildcards.get(name) for name in KEY_WILDCARDS if name in wildcards.keys()), None)


def config_slice(settings: dict, path: tuple[str, ...], key: str | None = None):
    """One slice of a setting's config, at key ``path`` ("{key}" in it stands for ``key``);
    {} where the config leaves it out."""
    value = settings
    for part in path:
        part = part.format(key=key)
        value = value.get(part, {}) if isinstance(value, dict) else {}
    return value


def _with_replicate_seed(section: dict, keys: tuple[str, ...], replicate: int) -> dict:
    """A copy of ``section`` whose ``seed`` at ``keys`` is replicate ``replicate``'s (nothing
    added where the config has no such section)."""
    if keys:
        if keys[0] not in section:
            return section
        return {**section, keys[0]: _with_replicate_seed(section[keys[0]], keys[1:], replicate)}
    return {**section, "seed": replicate_seed(section.get("seed", 0), replicate)}


@dataclass
class Experiments:
    """The settings of a checked config and the stages their replicates share."""

    settings: dict[str, dict]
    _owners: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, config: dict) -> "Experiments":
        return cls(resolve_settings(config))

    def dataset(self, setting: str) -> str:
        return parse_setting(setting)[0]

    def variants(self, dataset: str) -> list[str]:
        """The settings of ``dataset``'s variants, in config order."""
        return [s for s in self.settings if parse_setting(s)[0] == dataset and s != dataset]

    def seeds(self, setting: str) -> list[int]:
        return list(self.settings[setting]["seeds"])

    def peers(self, setting: str) -> list[str]:
        """The peers ``setting`` switches on (``peers.<name>.enabled``), in report order."""
        return enabled_peers(self.settings[setting].get("peers"))

    def models(self, setting: str) -> list[str]:
        """The models ``setting`` trains and scores: :data:`MODELS` but the peers it switches off."""
        return [m for m in MODELS if m not in PEER_METHODS or m in self.peers(setting)]

    def params(self, setting: str, stage: str, seed: int = 0, key: str | None = None) -> dict:
        """The params of ``stage``'s job for ``setting``, replicate ``seed`` and ``key`` (its
        expert or model): its config slices, the training seed derived from the replicate."""
        spec = STAGES[stage]
        params = {name: config_slice(self.settings[setting], path, key) for name, path in spec.slices.items()}
        for name, keys in spec.omit.items():
            params[name] = {k: v for k, v in params[name].items() if k not in keys}
        if spec.seeded and seed:
            params[spec.seeded[0]] = _with_replicate_seed(params[spec.seeded[0]], spec.seeded[1:], seed)
        return params

    def owner(self, setting: str, stage: str, seed: int = 0, key: str | None = None) -> str:
        """The setting whose folder holds the outputs of ``stage``'s job for ``setting``: its
        dataset's main settings when the job's params equal theirs and every stage upstream
        is shared with them too, else ``setting`` itself."""
        main = self.dataset(setting)
        if setting == main:
            return main
        memo = (setting, stage, seed, key)
        if memo not in self._owners:
            shared = (self.params(setting, stage, seed, key) == self.params(main, stage, seed, key)
                      and all(self.owner(setting, up, seed, up_key) == main
                              for up, up_key in STAGES[stage].upstream(key)))
            self._owners[memo] = main if shared else setting
        return self._owners[memo]

    def stage_file(self, template: str, stage: str, setting: str, seed: int = 0, key: str | None = None,
                   **fields) -> str:
        """The file ``template`` (of :mod:`balanced_experts.paths`) that ``stage``'s job for
        ``setting``, replicate ``seed`` and ``key`` writes, in the folder of the setting that
        owns it (:meth:`owner`); ``fields``: the template's other fields."""
        return template.format(setting=self.owner(setting, stage, seed, key), seed=seed, **fields)
