"""Multi-expert backbones: shared early stages, the later stages and the head once per expert.

RIDE (Wang et al., ICLR 2021, frank-xwang/RIDE-LongTailRecognition) builds its experts on
one backbone this way, and SADE (Zhang et al., NeurIPS 2022, Vanint/SADE-AgnosticLT) reuses
RIDE's models. Here the split is the same for every backbone of :mod:`.models`: the stem and
every stage but the last :data:`EXPERT_STAGES` are shared; each expert has its own last two
stages, global pool, fc layer (when the backbone has one: ``embed_dim``) and classifier.

- ``resnet_cifar<6n+2>`` (stages ``width, 2 width, 4 width``): stem + layer1 shared,
  layer2 + layer3 per expert (RIDE's and SADE's ResNet-32).
- torchvision ResNets and ResNeXt-50 (four stages): stem + layer1 + layer2 shared, layer3 +
  layer4 per expert (RIDE's ResNet-10/50/152 and ResNeXt-50).

The expert stages are ``expert_width`` times as wide as the single model's (the planes of
each block; RIDE's ``reduce_dimension``: 3/4, e.g. 24 and 48 channels instead of 32 and 64
for ResNet-32, 192 and 384 planes instead of 256 and 512 for the ImageNet ResNets). SADE's
Places-LT model keeps the full width (1.0), so that every expert can start from the
ImageNet-pretrained layer3 and layer4 (:func:`copy_trunk`). The classifier is RIDE's and
SADE's normalised one by default: ``scale * cos(f, w_c)`` with scale 30
(:class:`.models.CosineClassifier`).

``forward`` returns every expert's logits, ``N x E x C``; the model's logits are their mean
(:func:`mean_logits`), as RIDE's and SADE's ``final_out``. Parameter and FLOP counts against
the single model: :func:`model_cost`, ``docs/multi_expert.md``.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .models import (
    CifarResNet,
    LongTailNet,
    TorchvisionResNetTrunk,
    _make_classifier,
    _make_trunk,
    load_checkpoint,
    load_model,
    torchvision_resnet,
)
from .faults import ArtifactError

EXPERT_STAGES = 2
"""The last this many backbone stages are built once per expert (RIDE's split)."""

DEFAULTS = {"num_experts": 3, "expert_width": 0.75, "classifier": "cosine", "classifier_scale": 30.0}
"""The multi-expert settings of RIDE's and SADE's published models: 3 experts, stages 3/4 as
wide (``reduce_dimension``), a cosine classifier with scale 30 (``use_norm``, ``s=30``)."""


_SINGLE = inspect.signature(LongTailNet).parameters  # the single model's defaults are the experts'


class Stages(nn.Sequential):
    """Named modules run in order (the stem and stages), ``out_features`` channels out."""

    def __init__(self, modules: dict[str, nn.Module], out_features: int):
        super().__init__(OrderedDict(modules))
        self.out_features = out_features

    def stages(self) -> list[nn.Module]:
        return [module for name, module in self.named_children() if name.startswith("layer")]


class ExpertBranch(LongTailNet):
    """One expert: its own stages as the trunk of a :class:`.models.LongTailNet` head (global
    pool, fc + ReLU when ``embed_dim`` is set, classifier; in float32 under autocast).

    It inherits the single model's forward pass; only the trunk differs, so the layers are
    built here instead of by ``LongTailNet.__init__``, which would build a whole backbone."""

    def __init__(self, stages: Stages, num_outputs: int, embed_dim: int | None, classifier: str,
                 classifier_scale: float | None):
        nn.Module.__init__(self)
        self.trunk = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(stages.out_features, embed_dim) if embed_dim is not None else None
        self.relu = nn.ReLU(inplace=True)
        self.feature_dim = embed_dim if embed_dim is not None else stages.out_features
        self.classifier = _make_classifier(classifier, self.feature_dim, num_outputs, classifier_scale)


def _out_channels(stage: nn.Sequential) -> int:
    """Channels out of a stage of residual blocks: those of its last block's last BatchNorm."""
    return [m for m in stage[-1].modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


def _trunk_and_stage_builder(backbone: str, width: int | None):
    """The single model's trunk, and ``make_stage(name, in_channels, planes)``: a stage with that
    stage's depth and stride, built by the trunk's own stage builder (CifarResNet's ``_stage``,
    torchvision's ``ResNet._make_layer``), so its blocks are the single model's."""
    if backbone.startswith("resnet_cifar"):
        trunk: CifarResNet = _make_trunk(backbone, width)

        def make_stage(name: str, in_channels: int, planes: int) -> nn.Sequential:
            trunk.in_planes = in_channels
            return trunk._stage(planes, len(getattr(trunk, name)), stride=2)

        return trunk, make_stage, 1
    net = torchvision_resnet(backbone)
    trunk = TorchvisionResNetTrunk(net)
    block = type(net.layer1[0])

    def make_stage(name: str, in_channels: int, planes: int) -> nn.Sequential:
        net.inplanes = in_channels
        stage = net._make_layer(block, planes, len(getattr(trunk, name)), stride=2)
        # torchvision initialises the convolutions of the stages its constructor builds so.
        for module in stage.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        return stage

    return trunk, make_stage, block.expansion


class MultiExpertNet(nn.Module):
    """Shared stem and early stages, then ``num_experts`` :class:`ExpertBranch` es.

    ``forward(x)``: the experts' logits, ``N x num_experts x num_outputs`` (float32).
    """

    def __init__(self, backbone: str, num_outputs: int, embed_dim: int | None = _SINGLE["embed_dim"].default,
                 width: int | None = _SINGLE["width"].default, num_experts: int = DEFAULTS["num_experts"],
                 expert_width: float = DEFAULTS["expert_width"],
                 classifier: str = DEFAULTS["classifier"],
                 classifier_scale: float | None = DEFAULTS["classifier_scale"]):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be at least 1, got {num_experts}")
        if not 0 < expert_width <= 1:
            raise ValueError(f"expert_width must be in (0, 1], got {expert_width}")
        trunk, make_stage, expansion = _trunk_and_stage_builder(backbone, width)
        names = [f"layer{i + 1}" for i in range(len(trunk.stages()))]
        self.shared_stage_names, self.expert_stage_names = names[:-EXPERT_STAGES], names[-EXPERT_STAGES:]
        shared = {name: getattr(trunk, name) for name in self.shared_stage_names}
        self.shared = Stages({"stem": trunk.stem, **shared}, _out_channels(getattr(trunk, names[-EXPERT_STAGES - 1])))
        self.expert_planes = [max(1, round(_out_channels(getattr(trunk, name)) // expansion * expert_width))
                              for name in self.expert_stage_names]
        experts = []
        for _ in range(num_experts):
            stages, channels = {}, self.shared.out_features
            for name, planes in zip(self.expert_stage_names, self.expert_planes):
                stages[name] = make_stage(name, channels, planes)
                channels = planes * expansion
            experts.append(ExpertBranch(Stages(stages, channels), num_outputs, embed_dim, classifier,
                                        classifier_scale))
        self.experts = nn.ModuleList(experts)
        self.num_outputs = num_outputs

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared(x)
        return torch.stack([expert(shared) for expert in self.experts], dim=1)


def mean_logits(outputs: torch.Tensor) -> torch.Tensor:
    """The model's logits: the mean of its experts' (``N x E x C -> N x C``)."""
    return outputs.mean(1)


def settings_of(cfg: dict | None) -> dict:
    """The multi-expert settings: :data:`DEFAULTS` updated by ``cfg``; unknown keys are refused."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown multi-expert setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **cfg}


def build_multi_expert(backbone_cfg: dict, num_outputs: int, settings: dict | None = None) -> MultiExpertNet:
    """A multi-expert model of a dataset's ``backbone`` config, in channels-last layout (as
    :func:`.models.build_model`); ``settings``: see :data:`DEFAULTS`."""
    options = {key: backbone_cfg[key] for key in ("embed_dim", "width") if key in backbone_cfg}
    model = MultiExpertNet(backbone_cfg["name"], num_outputs, **options, **settings_of(settings))
    return model.to(memory_format=torch.channels_last)


def load_multi_expert(path: str | Path) -> tuple[MultiExpertNet, dict]:
    """Rebuild a multi-expert model from a checkpoint whose meta holds ``backbone``,
    ``output_class_ids`` and ``multi_expert`` (its settings); returns ``(model, meta)``."""
    checkpoint = load_checkpoint(path)
    meta = checkpoint["meta"]
    try:
        model = build_multi_expert(meta["backbone"], len(meta["output_class_ids"]), meta["multi_expert"])
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArtifactError(path, f"its tensors do not fit the multi-expert model its metadata describes "
                                  f"({problem})") from None
    return model, meta


class ExpertsMean(nn.Module):
    """A multi-expert model as a single one: its logits are the experts' mean (``N x C``)."""

    def __init__(self, model: MultiExpertNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_logits(self.model(x))


def load_scoring_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Any model's weights (``models.load_model``'s, or a multi-expert model's: its meta holds
    ``multi_expert``) as a model whose forward gives its ``N x C`` logits; returns ``(model, meta)``."""
    if "multi_expert" in load_checkpoint(path)["meta"]:
        model, meta = load_multi_expert(path)
        return ExpertsMean(model), meta
    return load_model(path)


def copy_trunk(model: MultiExpertNet, trunk: nn.Module) -> None:
    """Start ``model`` from a single model's trunk (e.g. ImageNet-pretrained weights loaded by
    :func:`.pretrained.load_trunk_weights`): its shared stages take the trunk's, and every
    expert's stages a copy of the trunk's later stages (SADE's Places-LT model). The experts'
    stages must be as wide as the trunk's (``expert_width: 1``)."""
    state = trunk.state_dict()
    shared = {key: value for key, value in state.items() if key.split(".")[0] in ("stem", *model.shared_stage_names)}
    model.shared.load_state_dict(shared)
    later = {key: value for key, value in state.items() if key.split(".")[0] in model.expert_stage_names}
    for index, expert in enumerate(model.experts):
        own = expert.trunk.state_dict()
        wrong = [key for key, value in own.items() if later[key].shape != value.shape]
        if wrong:
            raise ValueError(f"expert {index}'s stages are narrower than the trunk's ({wrong[0]}: "
                             f"{tuple(own[wrong[0]].shape)} vs {tuple(later[wrong[0]].shape)}); starting "
                             f"the experts from the trunk's weights needs expert_width: 1")
        expert.trunk.load_state_dict(later)


def shared_parameters(model: MultiExpertNet) -> list[nn.Parameter]:
    return list(model.shared.parameters())


def expert_parameters(model: MultiExpertNet, index: int) -> list[nn.Parameter]:
    return list(model.experts[index].parameters())


@torch.no_grad()
def model_cost(model: nn.Module, size: int) -> dict[str, int]:
    """Parameters, and FLOPs of one ``3 x size x size`` image (2 per multiply-add of the
    convolutions and linear layers, as ``torch.utils.flop_counter`` counts them; BatchNorm,
    ReLU, pooling and the cosine classifier's normalisations are left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, size, size))
    model.train(was_training)
    return {"parameters": sum(p.numel() for p in model.parameters()), "flops": counter.get_total_flops()}
