"""Backbones and the classifier used by the base model and every expert.

A model is ``backbone -> global pool -> fc (embed_dim) -> ReLU -> classifier``, the
OLTR/experts architecture; with ``embed_dim: null`` the classifier sits directly on the
pooled trunk features (Decoupling's models, e.g. ResNeXt-50 on 2048-d features).
``num_learnable`` selects what an expert fine-tunes: -1 everything; 1 the classifier;
2 classifier + fc; k >= 3 additionally the last k - 2 backbone stages (the indices keep
their meaning without an fc layer, where 2 is refused: it would add nothing to 1).
The classifier is linear, or (``classifier: cosine``, the LDAM-DRW peer's) a scaled cosine
classifier, :class:`CosineClassifier`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .faults import ArtifactError
from .files import load_torch_file, save_torch_file


class BasicBlock(nn.Module):
    """The two-3x3-conv residual block of torchvision's ResNet, with its attribute (and so
    state-dict) names. Defined here so that the CIFAR ResNets need no torchvision import,
    which costs 1.5 s per job (it pulls in torch._dynamo): about 35 s of job time in the
    default pipeline."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Shortcut1x1(nn.Conv2d):
    """The 1x1, stride-s convolution of a residual shortcut; on the CPU with fewer than 16
    input channels it convolves every s-th pixel at stride 1, which gives the same result
    up to float32 rounding (to the bit on some CPUs; the kernels sum in another order on
    others).

    The strided form's weight gradient in oneDNN (PyTorch's CPU convolutions) writes past
    its per-thread workspace for a channels-last input with fewer channels than the
    kernel's block (16 with AVX-512, 8 with AVX2) when a thread's share of the batch starts
    inside an image: it corrupts the heap of a training job with several threads, which
    dies of SIGABRT or SIGSEGV in ``loss.backward()`` (uxlfoundation/oneDNN#6035; oneDNN
    3.12 in torch 2.14.1, unfixed in 3.13). A CIFAR ResNet of width under 16 (the tests'
    tiny one) has such shortcuts. Parameters and state-dict keys are nn.Conv2d's."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        if x.device.type == "cpu" and self.in_channels < 16:
            return nn.functional.conv2d(x[:, :, ::self.stride[0], ::self.stride[1]], self.weight)
        return super().forward(x)


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, section 4.2): 3x3 stem, three stages.

    ``depth = 6n + 2`` (8, 20, 32, 56, ...), stage widths ``width, 2*width, 4*width``.
    """

    def __init__(self, depth: int = 32, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.in_planes = width
        self.layer1 = self._stage(width, blocks, stride=1)
        self.layer2 = self._stage(2 * width, blocks, stride=2)
        self.layer3 = self._stage(4 * width, blocks, stride=2)
        self.out_features = 4 * width

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            s = stride if i == 0 else 1
            downsample = None
            if s != 1 or self.in_planes != planes:
                downsample = nn.Sequential(Shortcut1x1(self.in_planes, planes, s), nn.BatchNorm2d(planes))
            layers.append(BasicBlock(self.in_planes, planes, stride=s, downsample=downsample))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x):
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


class TorchvisionResNetTrunk(nn.Module):
    """A torchvision ResNet without its avgpool/fc, exposing its four stages."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        self.out_features = resnet.fc.in_features

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _make_trunk(name: str, width: int | None) -> nn.Module:
    if name.startswith("resnet_cifar"):
        depth = int(name.removeprefix("resnet_cifar"))
        return CifarResNet(depth=depth, width=width or 16)
    return TorchvisionResNetTrunk(torchvision_resnet(name))


def torchvision_resnet(name: str) -> nn.Module:
    """The torchvision ResNet of a ``TORCHVISION_LAYOUTS`` backbone (its ``_make_layer``
    also builds the multi-expert models' per-expert stages)."""
    if name not in TORCHVISION_LAYOUTS:
        known = sorted(TORCHVISION_LAYOUTS) + ["resnet_cifar<6n+2>"]
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(known)}")
    from torchvision.models import resnet

    block, layers, *options = TORCHVISION_LAYOUTS[name]
    return resnet.ResNet(getattr(resnet, block), layers, **(options[0] if options else {}))


# ImageNet-style ResNets: torchvision's ResNet with these blocks, stage depths and (for
# ResNeXt) grouped 3x3 convolutions, as torchvision.models.resnext50_32x4d builds it.
TORCHVISION_LAYOUTS = {
    "resnet10": ("BasicBlock", [1, 1, 1, 1]),
    "resnet18": ("BasicBlock", [2, 2, 2, 2]),
    "resnet34": ("BasicBlock", [3, 4, 6, 3]),
    "resnet50": ("Bottleneck", [3, 4, 6, 3]),
    "resnet101": ("Bottleneck", [3, 4, 23, 3]),
    "resnet152": ("Bottleneck", [3, 8, 36, 3]),
    "resnext50_32x4d": ("Bottleneck", [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
}

BACKBONES = (*(f"resnet_cifar{depth}" for depth in (8, 20, 32, 56)), *TORCHVISION_LAYOUTS)
"""The backbones ``backbone.name`` may name (the schema's enum; a test holds them equal and
builds each): the CIFAR ResNets of the common depths (any ``6n + 2`` builds) and the
ImageNet-style ResNets."""


class CosineClassifier(nn.Module):
    """A normalised classifier: the logit of class ``c`` is ``scale * cos(f, w_c)``, the
    cosine between the features and the class's weight vector times a fixed scale, no bias
    (the classifier of LDAM-DRW, Cao et al. 2019). The weight has ``nn.Linear``'s layout;
    each class's vector starts as a uniform draw from [-1, 1]^d scaled to unit length: the
    forward pass sees only its direction, but its length sets the size of SGD's steps on it.
    """

    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__()
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        weight = torch.empty(out_features, in_features).uniform_(-1, 1)
        self.weight = nn.Parameter(weight / weight.norm(dim=1, keepdim=True))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = nn.functional.linear(nn.functional.normalize(features, dim=1),
                                      nn.functional.normalize(self.weight, dim=1))
        return self.scale * cosine

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


CLASSIFIERS = ("linear", "cosine")
"""The classifier heads a model can have (``backbone.classifier``; linear unless set)."""


def _make_classifier(kind: str, in_features: int, out_features: int, scale: float | None) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "cosine":
        if scale is None:
            raise ValueError("a cosine classifier needs its scale (backbone.classifier_scale)")
        return CosineClassifier(in_features, out_features, scale)
    raise ValueError(f"unknown classifier {kind!r}; known: {', '.join(CLASSIFIERS)}")


class LongTailNet(nn.Module):
    """Trunk -> global average pool -> fc(embed_dim) -> ReLU -> classifier(num_outputs).

    ``embed_dim=None``: no fc layer (and no ReLU); the classifier reads the pooled trunk
    features, ``trunk.out_features`` wide. ``classifier``: one of :data:`CLASSIFIERS`
    (``classifier_scale``: the cosine classifier's scale).
    """

    def __init__(self, backbone: str, num_outputs: int, embed_dim: int | None = 512, width: int | None = None,
                 classifier: str = "linear", classifier_scale: float | None = None):
        super().__init__()
        self.trunk = _make_trunk(backbone, width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.trunk.out_features, embed_dim) if embed_dim is not None else None
        self.relu = nn.ReLU(inplace=True)
        self.feature_dim = embed_dim if embed_dim is not None else self.trunk.out_features
        self.classifier = _make_classifier(classifier, self.feature_dim, num_outputs, classifier_scale)

    # The head (pool, fc, classifier) runs in float32 even under bf16 autocast: the logits
    # are stored as float32 and feed argmax and the calibration's NLL, and bf16 would round
    # them to steps of 0.0625 for |z| in 8-16 (ties, coarse probabilities). The trunk's
    # convolutions keep the autocast speed; the head is a negligible share of the FLOPs.
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input: ``feature_dim`` values per image, in float32."""
        x = self.trunk(x)
        with torch.autocast(x.device.type, enabled=False):
            pooled = torch.flatten(self.pool(x.float()), 1)
            return pooled if self.fc is None else self.relu(self.fc(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        with torch.autocast(features.device.type, enabled=False):
            return self.classifier(features)

    def learnable_modules(self, num_learnable: int) -> list[nn.Module]:
        """The modules an expert fine-tunes for a given ``num_learnable``."""
        if num_learnable == -1:
            return [self]
        if num_learnable < 1:
            raise ValueError(f"num_learnable must be -1 or >= 1, got {num_learnable}")
        modules: list[nn.Module] = [self.classifier]
        if num_learnable == 2 and self.fc is None:
            raise ValueError("num_learnable=2 adds the fc layer, and this model has none (embed_dim: null); "
                             "use 1 (classifier) or >= 3 (classifier + the last num_learnable - 2 stages)")
        if num_learnable >= 2 and self.fc is not None:
            modules.append(self.fc)
        stages = self.trunk.stages()
        extra = num_learnable - 2
        if extra > len(stages):
            raise ValueError(
                f"num_learnable={num_learnable} asks for {extra} backbone stages but the "
                f"backbone has {len(stages)}; use -1 to fine-tune everything"
            )
        if extra > 0:
            modules.extend(stages[len(stages) - extra:])
        return modules


def build_model(backbone_cfg: dict, num_outputs: int) -> LongTailNet:
    """A model in channels-last layout, which is faster for convolutions on CPUs and GPUs."""
    # What the section leaves out takes LongTailNet's default (config.yaml's, a test holds them equal).
    options = {key: backbone_cfg[key] for key in ("embed_dim", "width", "classifier", "classifier_scale")
               if key in backbone_cfg}
    model = LongTailNet(backbone_cfg["name"], num_outputs, **options)
    return model.to(memory_format=torch.channels_last)


def set_learnable(model: LongTailNet, num_learnable: int) -> list[nn.Parameter]:
    """Freeze everything but the modules ``num_learnable`` selects; returns the trainable parameters."""
    return set_learnable_modules(model, model.learnable_modules(num_learnable))


def set_learnable_modules(model: nn.Module, learnable: list[nn.Module]) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` but those of ``learnable`` (remembered for
    :func:`train_mode`); returns the trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in learnable:
        for p in module.parameters():
            p.requires_grad_(True)
    model._learnable = learnable
    return [p for p in model.parameters() if p.requires_grad]


FROZEN_BN_MODES = ("train", "eval")
"""The modes ``frozen_bn`` may name (the schema's enum; a test holds them equal): see :func:`train_mode`."""


def train_mode(model: nn.Module, frozen_bn: str = "train") -> None:
    """The mode of every module while training, for the BatchNorm layers of frozen modules.

    ``train`` (the original experts code, and Kang et al.'s decoupled classifiers): the
    whole model is in train mode, so a frozen BatchNorm layer normalises with the batch's
    statistics and re-estimates its running statistics on the data being trained on,
    while its weight and bias stay frozen. ``eval``: only the learnable modules (see
    :func:`set_learnable_modules`) are in train mode; frozen BatchNorm layers normalise
    with, and keep, the running statistics they were loaded with.
    """
    if frozen_bn not in FROZEN_BN_MODES:
        raise ValueError(f"frozen_bn must be one of {', '.join(FROZEN_BN_MODES)}, got {frozen_bn!r}")
    if frozen_bn == "train":
        model.train()
        return
    model.eval()
    for module in getattr(model, "_learnable", [model]):
        module.train()


# ---------------------------------------------------------------------------
# Checkpoints: plain dicts of tensors and builtins, loadable with weights_only=True.

def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> None:
    """Write ``{"state_dict", "meta"}`` atomically (temp file + rename)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch_file({"state_dict": state, "meta": meta}, path)


def load_checkpoint(path: str | Path) -> dict:
    """``{"state_dict", "meta"}`` of a weights file; :class:`ArtifactError` if it is none."""
    checkpoint = load_torch_file(path)
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)
            and isinstance(checkpoint.get("meta"), dict)):
        raise ArtifactError(path, "a torch file, but not model weights of this workflow "
                                  "(no 'state_dict' and 'meta')")
    return checkpoint


def load_model(path: str | Path) -> tuple[LongTailNet, dict]:
    """Rebuild a model from its checkpoint; returns ``(model, meta)``."""
    checkpoint = load_checkpoint(path)
    meta = checkpoint["meta"]
    try:
        model = build_model(meta["backbone"], len(meta["output_class_ids"]))
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArtifactError(path, f"its tensors do not fit the model its metadata describes ({problem})") from None
    return model, meta


def resume_checkpoint_path(weights_path: str | Path) -> Path:
    """Where the training of ``weights_path`` keeps its epoch checkpoint: beside it, not a
    declared output, so that Snakemake leaves it in place when the job fails or is cancelled."""
    return Path(weights_path).with_name("resume.pt")


def discard_resume_checkpoint(weights_path: str | Path) -> bool:
    """Remove the epoch checkpoint kept beside ``weights_path`` once those weights are safe:
    call it from a job that reads them, which Snakemake starts only after it has accepted
    them. Until then the checkpoint restores them in seconds if Snakemake discards them
    (see :func:`balanced_experts.training.fit`). Returns whether there was one."""
    path = resume_checkpoint_path(weights_path)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed
