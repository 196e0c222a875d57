"""The multi-expert backbone (RIDE's split) and RIDE's loss."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from balanced_experts.models import TORCHVISION_LAYOUTS, LongTailNet, build_model, save_checkpoint
from balanced_experts.multi_expert import (
    DEFAULTS,
    EXPERT_STAGES,
    build_multi_expert,
    copy_trunk,
    expert_parameters,
    load_multi_expert,
    mean_logits,
    model_cost,
    shared_parameters,
)
from balanced_experts.baselines import train_prior
from balanced_experts.ride import (
    class_balanced_weights,
    class_margins,
    deferred_epochs,
    diversity_temperatures,
    ride_loss,
    ride_prior,
)

SMALL = {"name": "resnet_cifar8", "width": 4, "embed_dim": 8}
DOC = Path(__file__).resolve().parents[1] / "docs" / "multi_expert.md"


def test_cifar_split_and_widths():
    """resnet_cifar: stem + layer1 shared, layer2 + layer3 per expert at 3/4 width (RIDE's
    ResNet-32: 24 and 48 channels for width 16); forward gives N x E x C, their mean the logits."""
    model = build_multi_expert({"name": "resnet_cifar8", "width": 16, "embed_dim": 128}, 10)
    assert model.shared_stage_names == ["layer1"] and model.expert_stage_names == ["layer2", "layer3"]
    assert len(model.expert_stage_names) == EXPERT_STAGES
    assert model.shared.out_features == 16 and model.expert_planes == [24, 48]
    assert model.num_experts == DEFAULTS["num_experts"] == 3
    assert [e.trunk.out_features for e in model.experts] == [48] * 3
    model.eval()
    out = model(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 3, 10) and out.dtype == torch.float32
    shared = model.shared(torch.randn(4, 3, 16, 16))
    assert shared.shape == (4, 16, 16, 16)
    assert torch.allclose(mean_logits(out), out.mean(1))
    # The cosine classifier bounds every logit by its scale.
    assert out.abs().max() <= DEFAULTS["classifier_scale"] + 1e-4


@pytest.mark.parametrize("backbone", sorted(TORCHVISION_LAYOUTS))
def test_torchvision_split_and_widths(backbone):
    """Every torchvision backbone: stem + layer1 + layer2 shared, layer3 + layer4 per expert, with
    RIDE's reduced planes 192 and 384 (of 256 and 512), the single model's block types and depths."""
    embed = None if backbone.startswith("resnext") else 32
    model = build_multi_expert({"name": backbone, "embed_dim": embed}, 7)
    single = build_model({"name": backbone, "embed_dim": embed}, 7)
    assert model.shared_stage_names == ["layer1", "layer2"] and model.expert_planes == [192, 384]
    for name in model.shared_stage_names:
        assert ([tuple(p.shape) for p in getattr(model.shared, name).parameters()]
                == [tuple(p.shape) for p in getattr(single.trunk, name).parameters()])
    expansion = single.trunk.out_features // 512
    for name in model.expert_stage_names:
        stage, full = getattr(model.experts[0].trunk, name), getattr(single.trunk, name)
        assert len(stage) == len(full) and {type(b) for b in stage} == {type(b) for b in full}
    assert model.experts[0].trunk.out_features == 384 * expansion
    if backbone == "resnet10":  # the forward pass of one (small) torchvision backbone
        model.eval()
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3, 7)


def test_every_expert_is_a_single_models_head_on_its_own_stages():
    """An expert has the single model's head (fc, ReLU, classifier, in float32): the same
    attributes and modules, so a change to LongTailNet's head cannot silently miss the experts."""
    model = build_multi_expert(SMALL, 5, {"classifier": "linear"})
    single = LongTailNet(SMALL["name"], 5, embed_dim=SMALL["embed_dim"], width=SMALL["width"])
    expert = model.experts[1]
    assert isinstance(expert, LongTailNet)
    assert set(vars(expert)) == set(vars(single)) and list(expert._modules) == list(single._modules)
    assert ({k for k in expert.state_dict() if not k.startswith("trunk.")}
            == {k for k in single.state_dict() if not k.startswith("trunk.")})
    assert model.experts[0].classifier.bias is not None
    assert [k for k in build_multi_expert({**SMALL, "embed_dim": None}, 5).state_dict() if ".fc." in k] == []


def test_an_experts_gradient_reaches_only_its_own_stages_and_the_shared_ones():
    torch.manual_seed(0)
    model = build_multi_expert(SMALL, 5)
    model.train()
    out = model(torch.randn(6, 3, 12, 12))
    shared = shared_parameters(model)
    for k in range(model.num_experts):
        others = [p for j in range(model.num_experts) if j != k for p in expert_parameters(model, j)]
        own = expert_parameters(model, k)
        grads = torch.autograd.grad(out[:, k].pow(2).sum(), shared + own + others, allow_unused=True,
                                    retain_graph=True)
        shared_grads, own_grads = grads[:len(shared)], grads[len(shared):len(shared) + len(own)]
        # torch.stack passes zeros back to the other experts' logits: their layers get exact zeros.
        assert all(g is None or torch.count_nonzero(g) == 0 for g in grads[len(shared) + len(own):])
        assert all(g is not None for g in shared_grads + own_grads)
        assert sum(g.abs().sum() for g in shared_grads) > 0 and sum(g.abs().sum() for g in own_grads) > 0
    # The shared stages get gradient from every expert: the sum's is the sum of the experts'.
    first_conv = shared[0]
    each = [torch.autograd.grad(out[:, k].pow(2).sum(), first_conv, retain_graph=True)[0] for k in range(3)]
    total = torch.autograd.grad(out.pow(2).sum(), first_conv)[0]
    assert torch.allclose(total, sum(each), rtol=1e-4, atol=1e-3)
    assert all(g.abs().sum() > 0 for g in each)
    # Changing one expert's weights leaves the other experts' logits as they were.
    model.eval()
    x = torch.randn(4, 3, 12, 12)
    before = model(x).detach()
    with torch.no_grad():
        for p in expert_parameters(model, 1):
            p.add_(torch.randn_like(p))
    after = model(x).detach()
    assert torch.equal(after[:, [0, 2]], before[:, [0, 2]]) and not torch.allclose(after[:, 1], before[:, 1])
    # Every parameter belongs to the shared part or to exactly one expert.
    ids = [id(p) for p in shared] + [id(p) for k in range(3) for p in expert_parameters(model, k)]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_checkpoint_round_trip(tmp_path):
    settings = {"num_experts": 2, "expert_width": 0.5}
    model = build_multi_expert(SMALL, 4, settings)
    meta = {"model": "ride", "backbone": SMALL, "output_class_ids": [0, 1, 2, 3], "multi_expert": settings}
    save_checkpoint(tmp_path / "w.pt", model, meta)
    loaded, loaded_meta = load_multi_expert(tmp_path / "w.pt")
    assert loaded_meta == meta and loaded.num_experts == 2 and loaded.expert_planes == [4, 8]
    x = torch.randn(2, 3, 12, 12)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(ValueError, match="unknown multi-expert setting.*experts"):
        build_multi_expert(SMALL, 4, {"experts": 3})


def test_copy_trunk_starts_every_expert_from_the_single_models_stages():
    """SADE's Places-LT model: full-width experts, each starting from the pretrained later stages."""
    single = build_model(SMALL, 5)
    model = build_multi_expert(SMALL, 5, {"expert_width": 1.0})
    copy_trunk(model, single.trunk)
    single.eval(), model.eval()
    x = torch.randn(3, 3, 12, 12)
    shared = model.shared(x)
    for expert in model.experts:
        assert torch.allclose(expert.trunk(shared), single.trunk(x), atol=1e-6)
    with pytest.raises(ValueError, match="needs expert_width: 1"):
        copy_trunk(build_multi_expert(SMALL, 5), single.trunk)


def _doc_costs():
    """The rows of docs/multi_expert.md's cost table: backbone -> (size, classes, single params,
    multi params, single MFLOPs, multi MFLOPs)."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and re.fullmatch(r"`[\w]+`", cells[0]):
            name = cells[0].strip("`")
            rows[name] = (int(cells[1]), int(cells[2]), cells[3], *[float(c.replace(",", "")) for c in cells[4:8]])
    return rows


@pytest.mark.parametrize("backbone", ["resnet_cifar8", "resnet_cifar32", "resnet10"])
def test_documented_costs_are_the_models(backbone):
    """docs/multi_expert.md's parameter and FLOP counts (thousands, millions) are those of the models."""
    size, classes, embed, *documented = _doc_costs()[backbone]
    cfg = {"name": backbone, "embed_dim": None if embed == "none" else int(embed)}
    if backbone.startswith("resnet_cifar"):
        cfg["width"] = 16
    single, multi = model_cost(build_model(cfg, classes), size), model_cost(build_multi_expert(cfg, classes), size)
    measured = [single["parameters"] / 1e3, multi["parameters"] / 1e3, single["flops"] / 1e6, multi["flops"] / 1e6]
    assert documented == pytest.approx(measured, rel=5e-3)


# ---------------------------------------------------------------------------
# RIDE's loss

def test_ride_loss_components():
    counts = [16, 4, 1]
    assert class_margins(counts, 0.5) == pytest.approx([0.25, 0.25 * math.sqrt(2), 0.5])
    beta = 0.9999
    weights = class_balanced_weights(counts, beta)
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    assert weights == pytest.approx([3 * w / sum(raw) for w in raw]) and weights.sum() == pytest.approx(3)
    # 3 * prior * 0.05 + 0.95, scaled to a largest value of 1.
    factors = [3 * n / 21 * 0.05 + 0.95 for n in counts]
    assert diversity_temperatures(counts, 0.05) == pytest.approx([f / factors[0] for f in factors])
    with pytest.raises(ValueError, match="too large"):
        diversity_temperatures(counts, 1.5)
    # RIDE's and LDAM-DRW's `epoch > 160` of 200 (80 of 100), epochs counted from 1.
    assert deferred_epochs(200, 0.8) == 160 and deferred_epochs(100, 0.8) == 80 and deferred_epochs(15, 0.8) == 12
    # The probabilities carry the training prior before the deferral, n_c w_c after it.
    assert ride_prior(counts, 12, 15) == pytest.approx(train_prior(counts))
    mass = np.array(counts) * weights
    assert ride_prior(counts, 13, 15) == pytest.approx(mass / mass.sum())


def test_ride_individual_loss_by_hand():
    """Two identical experts (no diversity: each is the mean), zero logits, counts 16 : 1, so the
    margins are 1/4 and 1/2 and at scale 4 ln 2 the target logits drop by ln 2 and 2 ln 2: the
    cross-entropies are ln 3 (class 0) and ln 5 (class 1)."""
    scale = 4 * math.log(2)
    loss = ride_loss([16, 1], epochs=10, scale=scale)
    outputs, targets = torch.zeros(2, 2, 2), torch.tensor([0, 1])
    assert loss(1)(outputs, targets).item() == pytest.approx(2 * (math.log(3) + math.log(5)) / 2, rel=1e-6)
    # From epoch 9 (0.8 * 10 + 1): DRW's weighted mean, weights (1 - b) / (1 - b^n): w_1 = 1.
    w0 = (1 - 0.9999) / (1 - 0.9999 ** 16)
    drw = 2 * (w0 * math.log(3) + math.log(5)) / (w0 + 1)
    assert loss(8)(outputs, targets).item() == pytest.approx(2 * (math.log(3) + math.log(5)) / 2, rel=1e-6)
    assert loss(9)(outputs, targets).item() == pytest.approx(drw, rel=1e-6)


def test_ride_diversity_loss_by_hand():
    """No margins; experts [ln 3, 0] and [-ln 3, 0]: the mean is uniform, each expert's
    cross-entropies are ln(4/3) and ln 4, and KL(uniform || (3/4, 1/4)) = ln(2 / sqrt 3)."""
    a = math.log(3)
    outputs, targets = torch.tensor([[[a, 0.0], [-a, 0.0]]] * 2), torch.tensor([0, 1])
    cross_entropy = 2 * (math.log(4 / 3) + math.log(4)) / 2
    divergence = math.log(2 / math.sqrt(3))
    for factor in (-0.2, -0.45, 0.0):
        loss = ride_loss([16, 1], epochs=10, scale=30, max_margin=0.0, diversity_factor=factor)
        assert loss(1)(outputs, targets).item() == pytest.approx(cross_entropy + factor * 2 * divergence, rel=1e-6)


def test_ride_loss_after_deferral_by_hand():
    """From the deferral epoch on: LDAM with DRW weights, and the diversity term at per-class
    temperatures T_c (scaled by mean(T)^2), computed here with plain floats."""
    counts, scale, factor, r = [6, 3, 1], 2.0, -0.2, 0.05
    outputs = torch.tensor([[[1.0, -0.5, 0.2], [0.3, 0.1, -1.0]], [[-0.2, 0.8, 0.5], [0.9, -0.4, 0.0]]])
    targets = [2, 1]
    margins = [0.5 * (min(counts) / n) ** 0.25 for n in counts]
    raw = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in counts]
    prior = [n / sum(counts) for n in counts]
    factors = [3 * p * r + 1 - r for p in prior]
    temps = [f / max(factors) for f in factors]
    t_mean = sum(temps) / 3

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    expected = 0.0
    for k in range(2):
        num = den = 0.0
        for i, y in enumerate(targets):
            z = [v - (scale * margins[c] if c == y else 0.0) for c, v in enumerate(outputs[i, k].tolist())]
            num += raw[y] * -math.log(softmax(z)[y])
            den += raw[y]
        expected += num / den
        kl = 0.0
        for i in range(2):
            mean = [(outputs[i, 0, c].item() + outputs[i, 1, c].item()) / 2 for c in range(3)]
            q = softmax([mean[c] / temps[c] for c in range(3)])
            p = softmax([outputs[i, k, c].item() / temps[c] for c in range(3)])
            kl += sum(q[c] * math.log(q[c] / p[c]) for c in range(3))
        expected += factor * t_mean ** 2 * kl / 2
    loss = ride_loss(counts, epochs=5, scale=scale, diversity_factor=factor, reweight_factor=r)
    assert loss(5)(outputs, torch.tensor(targets)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_ride_loss_trains_the_multi_expert_model():
    """A few SGD steps of RIDE's loss on a real multi-expert model lower it, and its gradient
    reaches every expert's layers."""
    torch.manual_seed(0)
    model = build_multi_expert(SMALL, 4)
    x, y = torch.randn(16, 3, 12, 12), torch.randint(0, 4, (16,))
    loss = ride_loss([40, 20, 10, 5], epochs=10, scale=DEFAULTS["classifier_scale"])(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        value = loss(model(x), y)
        optimizer.zero_grad()
        value.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for k in range(3)
                   for p in expert_parameters(model, k) if p.dim() > 1)
        optimizer.step()
        losses.append(value.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_ride_loss_gradient_holds_the_mean_distribution_constant():
    """RIDE computes the mean distribution without gradient: an expert's logits get only the
    gradient of its own terms, (softmax(z_k - margins) - onehot) / N + factor (softmax(z_k) - q) / N."""
    torch.manual_seed(1)
    counts, scale, factor = [9, 3, 1], 3.0, -0.45
    outputs = torch.randn(5, 3, 3).requires_grad_(True)
    targets = torch.tensor([0, 1, 2, 2, 0])
    loss = ride_loss(counts, epochs=10, scale=scale, diversity_factor=factor)(1)
    grad = torch.autograd.grad(loss(outputs, targets), outputs)[0]
    margins = torch.tensor(class_margins(counts, 0.5) * scale, dtype=torch.float32)
    onehot = torch.nn.functional.one_hot(targets, 3).float()
    q = torch.softmax(outputs.detach().mean(1), 1)
    for k in range(3):
        z = outputs.detach()[:, k]
        expected = (torch.softmax(z - onehot * margins[targets][:, None], 1) - onehot) / 5
        expected += factor * (torch.softmax(z, 1) - q) / 5
        assert torch.allclose(grad[:, k], expected, atol=1e-6)
