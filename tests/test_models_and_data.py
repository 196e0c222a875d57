import numpy as np
import pytest
import torch
from PIL import Image

from balanced_experts.faults import ArtifactError
from balanced_experts.images.decoding import ImageFileError
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import read_list
from balanced_experts.models import build_model, load_model, save_checkpoint, set_learnable
from balanced_experts.synthetic import SyntheticSpec, generate, long_tail_counts

BACKBONE = {"name": "resnet_cifar8", "width": 4, "embed_dim": 8}


def trainable_names(model):
    return {name.split(".")[0] if not name.startswith("trunk") else ".".join(name.split(".")[:2])
            for name, p in model.named_parameters() if p.requires_grad}


def test_num_learnable_selects_modules():
    model = build_model(BACKBONE, 5)
    set_learnable(model, 1)
    assert trainable_names(model) == {"classifier"}
    set_learnable(model, 2)
    assert trainable_names(model) == {"classifier", "fc"}
    set_learnable(model, 3)
    assert trainable_names(model) == {"classifier", "fc", "trunk.layer3"}
    set_learnable(model, 5)
    assert trainable_names(model) == {"classifier", "fc", "trunk.layer1", "trunk.layer2", "trunk.layer3"}
    set_learnable(model, -1)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="backbone has 3"):
        set_learnable(model, 6)


def test_model_without_fc_layer():
    """``embed_dim: null``: the classifier reads the pooled trunk features; num_learnable keeps
    its indices (3 = classifier + last stage) and refuses 2, which would add nothing."""
    model = build_model({**BACKBONE, "embed_dim": None}, 5)
    assert model.fc is None and model.feature_dim == model.trunk.out_features == 16
    assert model.classifier.in_features == 16 and not any(k.startswith("fc.") for k in model.state_dict())
    x = torch.randn(2, 3, 12, 12)
    model.eval()
    pooled = model.trunk(x).mean((2, 3))
    assert torch.allclose(model.features(x), pooled, atol=1e-6)
    assert torch.allclose(model(x), model.classifier(pooled), atol=1e-6)
    set_learnable(model, 1)
    assert trainable_names(model) == {"classifier"}
    set_learnable(model, 3)
    assert trainable_names(model) == {"classifier", "trunk.layer3"}
    with pytest.raises(ValueError, match="num_learnable=2 adds the fc layer"):
        set_learnable(model, 2)


def test_resnext50_trunk_loads_torchvision_weights(tmp_path):
    """resnext50_32x4d is torchvision's ResNeXt-50 32x4d: a torchvision state dict loads through
    the pretrained-weights loader, and the model then computes torchvision's pooled features."""
    import torchvision

    from balanced_experts.pretrained import load_trunk_weights

    torch.manual_seed(0)
    reference = torchvision.models.resnext50_32x4d(weights=None)
    for module in reference.modules():  # non-trivial statistics, so that eval mode tests them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "resnext50_32x4d.pth")
    model = build_model({"name": "resnext50_32x4d", "embed_dim": None}, 10)
    assert model.feature_dim == 2048
    conv = model.trunk.layer1[0].conv2
    assert conv.groups == 32 and conv.out_channels == 128  # 32 groups x 4 channels
    loaded = load_trunk_weights(model.trunk, tmp_path / "resnext50_32x4d.pth", "torchvision")
    assert loaded["tensors"] == len(model.trunk.state_dict())
    reference.fc = torch.nn.Identity()
    reference.eval(), model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.features(x.contiguous(memory_format=torch.channels_last)), reference(x),
                              atol=1e-4)


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = build_model(BACKBONE, 4)
    meta = {"model": "few", "backbone": BACKBONE, "num_classes": 9, "output_class_ids": [1, 5, 8, -1],
            "open_ratio": 8.0}
    save_checkpoint(tmp_path / "w.pt", model, meta)
    loaded, loaded_meta = load_model(tmp_path / "w.pt")
    assert loaded_meta == meta
    x = torch.randn(2, 3, 12, 12)
    model.eval(), loaded.eval()
    assert torch.allclose(model(x), loaded(x))
    # The file holds only tensors and builtins: the safe unpickler accepts it.
    torch.load(tmp_path / "w.pt", weights_only=True)


def test_synthetic_dataset_is_deterministic_and_long_tailed(tmp_path):
    spec = SyntheticSpec(num_classes=6, max_count=30, imbalance=10, val_per_class=2,
                         test_per_class=3, image_size=10, seed=3)
    counts = generate(spec, tmp_path / "a", log=lambda _: None)
    generate(spec, tmp_path / "b", log=lambda _: None)
    assert counts == {"train": sum(long_tail_counts(6, 30, 10)), "val": 12, "test": 18}
    assert long_tail_counts(6, 30, 10).tolist() == [30, 18, 11, 7, 4, 3]
    train = read_list(tmp_path / "a" / "train.txt")
    assert train.class_counts().tolist() == [30, 18, 11, 7, 4, 3]
    first = tmp_path / "a" / train.paths[0]
    assert (tmp_path / "a" / "train.txt").read_bytes() == (tmp_path / "b" / "train.txt").read_bytes()
    assert first.read_bytes() == (tmp_path / "b" / train.paths[0]).read_bytes()
    with Image.open(first) as image:
        assert image.format == "PNG" and image.size == (10, 10) and image.mode == "RGB"
    # Images of one class vary; images of different classes differ more on average.
    pixels = {c: np.stack([np.asarray(Image.open(tmp_path / "a" / p), dtype=float)
                           for p, y in zip(train.paths, train.labels) if y == c]) for c in (0, 1)}
    within = np.abs(pixels[0][:15] - pixels[0][15:30]).mean()
    between = np.abs(pixels[0][:15] - pixels[1][:15]).mean()
    assert 0 < within < between


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    generate(SyntheticSpec(num_classes=3, max_count=10, imbalance=2, val_per_class=2,
                           test_per_class=2, image_size=16, seed=0), root, log=lambda _: None)
    return root


@pytest.mark.parametrize("preload", [True, False])
def test_batches_cover_every_sample_once(small_root, preload):
    image_list = read_list(small_root / "train.txt")
    spec = InputSpec(size=16, augment="crop_flip", preload=preload, workers=0)
    source = ImageSource.open(small_root, image_list, spec)
    positions = np.arange(len(image_list))
    generator = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in source.batches(positions, positions, 4, True, torch.device("cpu"), generator)])
    assert sorted(seen.tolist()) == positions.tolist()
    x, _ = next(source.batches(positions, image_list.labels, 5, False, torch.device("cpu")))
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32


def test_preloaded_and_file_paths_agree_at_eval(small_root):
    image_list = read_list(small_root / "val.txt")
    positions = np.arange(len(image_list))
    tensors = [
        next(ImageSource.open(small_root, image_list, InputSpec(size=16, augment="crop_flip", preload=p,
                                                                 resize=16, workers=0))
             .batches(positions, image_list.labels, 64, False, torch.device("cpu")))[0]
        for p in (True, False)
    ]
    assert torch.allclose(tensors[0], tensors[1], atol=1e-5)


def test_augmentation_is_reproducible_and_changes_images(small_root):
    image_list = read_list(small_root / "train.txt")
    source = ImageSource.open(small_root, image_list, InputSpec(size=16, augment="crop_flip", preload=True))
    positions = np.arange(len(image_list))

    def first_batch(seed):
        g = torch.Generator().manual_seed(seed)
        return next(source.batches(positions, positions, 8, True, torch.device("cpu"), g))

    (x1, y1), (x2, y2), (x3, _) = first_batch(1), first_batch(1), first_batch(2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_unreadable_image_names_file_and_line(tmp_path, small_root):
    image_list = read_list(small_root / "val.txt")
    broken = tmp_path / "root"
    broken.mkdir()
    for rel in image_list.paths:
        (broken / rel).parent.mkdir(parents=True, exist_ok=True)
        (broken / rel).write_bytes((small_root / rel).read_bytes())
    (broken / image_list.paths[2]).write_bytes(b"not a png")
    with pytest.raises(ImageFileError, match=r"val.txt, line 3\)"):
        ImageSource.open(broken, image_list, InputSpec(size=16, preload=True))


def _jpeg_and_png_root(tmp_path):
    from balanced_experts.lists import ImageList

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        # Smooth images: JPEG compression and resampling differ little between decoders.
        ramp = np.linspace(0, 255, 70)[None, :, None] * np.ones((50 + 10 * i, 1, 3)) * rng.random(3)
        ext = "jpg" if i % 2 else "png"
        Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / f"{i}.{ext}", quality=95)
        paths.append(f"{i}.{ext}")
    return tmp_path, ImageList(paths=paths, labels=np.arange(6) % 3)


def test_device_decoding_falls_back_to_the_cpu_and_matches_the_pil_path(tmp_path):
    """decode_on_device on a CPU job: JPEGs through torchvision's decoder, PNGs through
    decode_image; the eval inputs agree with the PIL path, training batches are well formed."""
    import torch

    root, image_list = _jpeg_and_png_root(tmp_path)
    spec = InputSpec(size=32, resize=36, augment="imagenet", mean=(0.5,) * 3, std=(0.25,) * 3)
    cpu = torch.device("cpu")
    positions = np.arange(len(image_list))
    reference = list(ImageSource.open(root, image_list, spec).batches(positions, image_list.labels, 4, False, cpu))
    decoded = list(ImageSource.open(root, image_list, spec, decode_on_device=True)
                   .batches(positions, image_list.labels, 4, False, cpu))
    assert [x.shape for x, _ in decoded] == [x.shape for x, _ in reference]
    for (x, y), (x_ref, y_ref) in zip(decoded, reference):
        assert torch.equal(y, y_ref)
        assert (x - x_ref).abs().mean() < 0.05  # normalised units: ~1/80 of the pixel range
    source = ImageSource.open(root, image_list, spec, decode_on_device=True)
    runs = [list(source.batches(positions, image_list.labels, 4, True, cpu, torch.Generator().manual_seed(1)))
            for _ in range(2)]
    for (x, y), (x2, y2) in zip(*runs):  # seeded: the same crops, flips and jitter twice
        assert x.shape[1:] == (3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert torch.isfinite(x).all()


def test_image_cache_holds_the_decoded_pixels_memory_mapped(small_root, tmp_path):
    """The cache is the PNG pixels in list order, read back as a memory map, and a job's
    batches from it equal those from decoding the files."""
    import torch

    from balanced_experts.images.cache import read_image_cache, write_image_cache

    image_list = read_list(small_root / "train.txt")
    cache = tmp_path / "cache" / "train.npy"
    write_image_cache(small_root, image_list, 16, cache)
    pixels = read_image_cache(cache, image_list, 16)
    assert isinstance(pixels, np.memmap) and pixels.shape == (len(image_list), 3, 16, 16)
    for i in (0, len(image_list) - 1):
        expected = np.asarray(Image.open(small_root / image_list.paths[i]).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(pixels[i], expected)
    spec = InputSpec(size=16, augment="crop_flip", preload=True)
    rows = np.arange(1, len(image_list), 2)
    for subset, cache_rows in ((image_list, None), (image_list.subset(rows), rows)):
        decoded = ImageSource.open(small_root, subset, spec)
        cached = ImageSource.open(small_root, subset, spec, cache=cache, cache_rows=cache_rows)
        positions = np.arange(len(subset))
        for (a, _), (b, _) in zip(decoded.batches(positions, subset.labels, 8, True, torch.device("cpu"),
                                                  torch.Generator().manual_seed(0)),
                                  cached.batches(positions, subset.labels, 8, True, torch.device("cpu"),
                                                 torch.Generator().manual_seed(0))):
            assert torch.equal(a, b)
    with pytest.raises(ArtifactError, match=fr"holds uint8 \({len(image_list)}, 3, 16, 16\), not the uint8 "
                                            fr"\({len(rows)}, 3, 16, 16\) images"):
        read_image_cache(cache, image_list.subset(rows), 16)


def test_cifar_block_is_torchvisions_basic_block():
    """The CIFAR ResNet's own BasicBlock computes what torchvision's does with the same weights
    (it exists so that small-image jobs skip the torchvision import)."""
    from torchvision.models.resnet import BasicBlock as TorchvisionBlock

    from balanced_experts.models import BasicBlock

    downsample = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1, stride=2, bias=False), torch.nn.BatchNorm2d(8))
    ours, theirs = BasicBlock(4, 8, stride=2, downsample=downsample), TorchvisionBlock(4, 8, 2, downsample)
    theirs.load_state_dict(ours.state_dict())  # the same parameter names
    x = torch.randn(2, 4, 10, 10)
    assert torch.allclose(ours.eval()(x), theirs.eval()(x))
    assert torch.allclose(ours.train()(x), theirs.train()(x))


@pytest.mark.parametrize("batch", [5, 16])
@pytest.mark.parametrize("in_planes, planes, size", [(4, 8, 12), (8, 16, 6), (16, 32, 6)])
def test_the_shortcut_convolution_is_nn_conv2d_up_to_rounding(in_planes, planes, size, batch):
    """Shortcut1x1 (models.py: it works around a heap overflow in oneDNN's strided 1x1 weight
    gradient) gives nn.Conv2d's output and gradients up to float32 rounding, in the tiny model's
    shapes and its channels-last layout. The reference is nn.Conv2d in float64, which oneDNN
    does not compute: its float32 strided kernel, the one the workaround avoids, corrupts the
    heap on some CPUs even on one thread (AMD EPYC with AVX-512, in this very comparison)."""
    from balanced_experts.models import Shortcut1x1

    ours = Shortcut1x1(in_planes, planes, 2).to(memory_format=torch.channels_last)
    plain = torch.nn.Conv2d(in_planes, planes, 1, stride=2, bias=False).double()
    plain.load_state_dict(ours.state_dict())  # the same parameter names
    x = torch.randn(batch, in_planes, size, size).contiguous(memory_format=torch.channels_last)
    outputs, grads = [], []
    for conv, image in ((ours, x.clone()), (plain, x.double())):
        image.requires_grad_()
        out = conv(image)
        out.square().sum().backward()
        outputs.append(out)
        grads.append((image.grad, conv.weight.grad))
    for a, b in [(outputs[0], outputs[1]), *zip(*grads)]:
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6 * b.abs().max().item())


# Training steps of the tiny model on the CPU with two threads, at batches of 5 and 3 images:
# the threads split such a batch inside an image, which is where oneDNN's strided 1x1 weight
# gradient overflows (with nn.Conv2d shortcuts this dies of SIGABRT or SIGSEGV within a few
# dozen steps, in `pytest -m slurm`'s many-shot expert after its first epoch).
TRAIN_STEPS = """
import faulthandler, sys, torch
from balanced_experts.models import build_model
faulthandler.enable()
torch.set_num_threads(2)
model = build_model({"name": "resnet_cifar8", "width": 4, "embed_dim": 16}, 3)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
for step in range(int(sys.argv[1])):
    n = (5, 3)[step % 2]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(n, 3, 12, 12)), torch.randint(0, 3, (n,)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("trained")
"""


def test_multithreaded_cpu_training_of_a_narrow_resnet_survives_odd_batches():
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run([sys.executable, "-c", TRAIN_STEPS, "40"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="2"), timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "trained", (result.returncode, result.stderr[-3000:])
