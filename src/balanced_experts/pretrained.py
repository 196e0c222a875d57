"""ImageNet-pretrained trunk weights from a local file (nothing is downloaded).

Two file formats are accepted, both ResNet state dicts with torchvision's key names
(``conv1.weight``, ``bn1.running_mean``, ``layer3.12.conv2.weight``,
``layer1.0.downsample.0/1.*``, ``fc.*``):

* ``torchvision``: ``torchvision.models.resnet152(weights=...).state_dict()`` saved with
  ``torch.save``, e.g. the ``resnet152-*.pth`` file torchvision caches.
* ``caffe``: the Caffe-converted ResNet-152 that OLTR and the original experts code used
  (``caffe_resnet152.pth``). It follows the same naming but was written by an older
  PyTorch: BatchNorm has no ``num_batches_tracked``, and a copy saved from a
  ``DataParallel`` model carries a ``module.`` prefix. Like OLTR, the weights go into
  torchvision's Bottleneck (stride on the 3x3 conv) and see RGB inputs normalised with the
  ImageNet mean/std.

Either way the classifier (``fc.*``) is dropped: the model has its own fc and classifier.
Every trunk tensor must be present with the right shape, or loading fails naming what is
missing or mismatched; the original silently kept random weights for absent keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FORMATS = ("torchvision", "caffe")
"""The file formats ``backbone.pretrained.format`` may name (the schema's enum; a test holds them equal)."""

DEFAULT_FORMAT = "torchvision"
"""The format of a ``backbone.pretrained`` section that names none."""

# torchvision ResNet prefix -> this project's trunk prefix (see models.TorchvisionResNetTrunk).
_PREFIXES = {"conv1.": "stem.0.", "bn1.": "stem.1.", "layer1.": "layer1.", "layer2.": "layer2.",
             "layer3.": "layer3.", "layer4.": "layer4."}


class PretrainedWeightsError(ValueError):
    """A pretrained-weights file that cannot serve the configured backbone."""


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a saved file (plain, or wrapped under ``state_dict``/``model``)."""
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise PretrainedWeightsError(f"{path} does not hold a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PretrainedWeightsError(f"{path} holds no tensors")
    return tensors


def map_resnet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision-named ResNet state dict to trunk keys; ``fc.*`` is dropped."""
    mapped = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("fc."):
            continue
        for source, target in _PREFIXES.items():
            if key.startswith(source):
                mapped[target + key[len(source):]] = value
                break
        else:
            mapped[key] = value  # unknown: reported as unexpected by load_trunk_weights
    return mapped


def load_trunk_weights(trunk: nn.Module, path: str | Path, fmt: str = DEFAULT_FORMAT) -> dict:
    """Copy the pretrained weights in ``path`` into ``trunk``; returns a summary.

    Raises :class:`PretrainedWeightsError` when the file is missing, unreadable, or does
    not match the trunk (missing keys, unexpected keys, shape mismatches).
    """
    if fmt not in FORMATS:
        raise PretrainedWeightsError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"{path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, truncated files, non-tensor objects
        raise PretrainedWeightsError(f"{path} cannot be read as a torch state dict: {error}") from None
    weights = map_resnet_keys(_unwrap(raw, path))
    expected = trunk.state_dict()
    # The Caffe conversion predates BatchNorm's step counter, which eval and training ignore
    # (momentum is set); keep the trunk's own counter rather than rejecting the file.
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in weights:
            weights[key] = expected[key]
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
                  for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    if problems:
        raise PretrainedWeightsError(
            f"{path} ({fmt} format) does not match the backbone: " + "; ".join(problems))
    trunk.load_state_dict({k: weights[k].to(v.dtype) for k, v in expected.items()})
    return {"path": str(path), "format": fmt, "tensors": len(expected)}
