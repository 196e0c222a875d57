"""The CUDA path's safeguards, on the CPU: what can run here runs the same code; where only
CUDA would take a branch, a small seam stands in for the GPU call and records it.

No line of this file needs a GPU; tests/test_cuda.py compares the real CUDA path with the CPU.
"""

import io
import re

import numpy as np
import pytest
import torch
import torchvision.io
import yaml
from PIL import Image
from torch import nn

from conftest import REPO

from balanced_experts.device import resolve_device, setup_torch
from balanced_experts.distributed import sync_batchnorm_layers
from balanced_experts.images.decoding import decode_images, ImageFileError
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import read_list
from balanced_experts.models import build_model, set_learnable, train_mode

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
BACKBONE = {"name": "resnet_cifar8", "width": 4, "embed_dim": 16}


def _ramp(height=40, width=50):
    """A smooth image: decoders differ on it by rounding only."""
    return (np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3)) * [1.0, 0.6, 0.3]).astype(np.uint8)


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


GOOD = _jpeg(Image.fromarray(_ramp()))
CMYK = _jpeg(Image.fromarray(_ramp(36, 44)).convert("CMYK"))  # nvJPEG rejects these; libjpeg reads them
TRUNCATED = GOOD[: len(GOOD) // 2]


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _pil_rgb(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1).copy())


# -- 1. a device decode waits for the caller's stream ---------------------------------------

def test_a_device_decode_first_waits_for_the_current_stream(monkeypatch):
    """torchvision's CUDA decode_jpeg writes from a private stream that does not wait for
    the caller's (pytorch/vision#9606): every device decode must come after a sync of the
    current stream. The seam: CUDA's current stream and decode_jpeg record their calls (the
    decode itself runs on the CPU, this machine has no GPU)."""
    events = []

    class Stream:
        def synchronize(self):
            events.append("synchronize")

    def current_stream(device=None):
        events.append(("current_stream", device))
        return Stream()

    real_decode = torchvision.io.decode_jpeg

    def decode_jpeg(data, mode, device):
        events.append(("decode", torch.device(device)))
        return real_decode(data, mode=mode)

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)
    for _ in range(2):  # every batch, not the first alone
        images = decode_images([_tensor(GOOD), _tensor(GOOD)], CUDA)
        assert [image.shape for image in images] == [(3, 40, 50)] * 2
    assert events == [("current_stream", CUDA), "synchronize", ("decode", CUDA)] * 2
    events.clear()
    decode_images([_tensor(GOOD)], CPU)
    assert events == [("decode", CPU)]  # nothing to wait for on the CPU


# -- 2. a batch that fails on the device is decoded image by image on the CPU -----------------

def test_a_batch_the_device_decoder_rejects_is_decoded_image_by_image_on_the_cpu(monkeypatch):
    """nvJPEG fails a whole batch on one CMYK file, naming none; the batch is then decoded one
    by one by the CPU decoder, which reads CMYK as PIL does. The seam: a batch decoder that,
    like nvJPEG, refuses any batch holding the CMYK file."""
    real_decode = torchvision.io.decode_jpeg
    batches = []

    def nvjpeg_like(data, mode, device):
        batches.append(len(data))
        if any(item.numel() == len(CMYK) and bytes(item.numpy()) == CMYK for item in data):
            raise RuntimeError("nvjpegDecodeBatchedPhaseOne failed: 6")
        return real_decode(data, mode=mode, device=device)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", nvjpeg_like)
    png = io.BytesIO()
    Image.fromarray(_ramp(20, 30)).save(png, "PNG")
    encoded = [_tensor(GOOD), _tensor(CMYK), _tensor(png.getvalue()), _tensor(GOOD)]
    images = decode_images(encoded, CPU)
    assert batches == [3]  # the three JPEGs in one batch, refused
    assert [image.shape for image in images] == [(3, 40, 50), (3, 36, 44), (3, 20, 30), (3, 40, 50)]
    assert all(image.dtype == torch.uint8 for image in images)
    assert torch.equal(images[1], _pil_rgb(CMYK))  # libjpeg's CMYK conversion is PIL's
    assert torch.equal(images[0], real_decode(_tensor(GOOD), mode=torchvision.io.ImageReadMode.RGB))
    assert torch.equal(images[2], _pil_rgb(png.getvalue()))


def test_the_cpu_decoder_reads_a_real_cmyk_jpeg_in_a_batch():
    images = decode_images([_tensor(GOOD), _tensor(CMYK)], CPU)
    assert torch.equal(images[1], _pil_rgb(CMYK))


def test_a_truncated_jpeg_is_named_with_its_list_line_as_the_pil_path_names_it(tmp_path):
    """A truncated file fails the batch decode (on the CPU too); decoded one by one, the good
    and CMYK files pass and the truncated one is reported by path and list line."""
    for name, data in (("0.jpg", GOOD), ("1.jpg", CMYK), ("2.jpg", TRUNCATED), ("3.jpg", GOOD)):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "train.txt").write_text("".join(f"{i}.jpg {i % 2}\n" for i in range(4)))
    image_list = read_list(tmp_path / "train.txt")
    spec = InputSpec(size=16, resize=18, augment="imagenet", mean=(0.5,) * 3, std=(0.25,) * 3)
    positions = np.arange(len(image_list))
    messages = {}
    for on_device in (True, False):
        source = ImageSource.open(tmp_path, image_list, spec, decode_on_device=on_device)
        with pytest.raises(ImageFileError) as error:
            list(source.batches(positions, image_list.labels, 4, False, CPU))
        messages[on_device] = str(error.value)
    where = f"cannot read image {tmp_path / '2.jpg'} ({tmp_path / 'train.txt'}, line 3): "
    assert messages[True].startswith(where) and messages[False].startswith(where)
    assert messages[True] == where + "Image is incomplete or truncated"  # no C++ source location
    # Without the truncated file, the device path reads the batch, CMYK file included.
    (tmp_path / "2.jpg").write_bytes(GOOD)
    source = ImageSource.open(tmp_path, image_list, spec, decode_on_device=True)
    (x, y), = source.batches(positions, image_list.labels, 4, False, CPU)
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all()


# -- 3. the file path's batch is pinned as a copy of its slot --------------------------------

def test_a_file_batch_pinned_for_cuda_is_a_copy_of_its_slot_made_where_dataloader_pins(tmp_path, monkeypatch):
    """For CUDA, DataLoader's pinning thread pins what a worker returns: a file batch names a
    slot of the pass's shared pool, which a worker writes again a few batches later, so
    the pinned batch must be a copy of the slot's images (and targets), made by that call.
    The seam: Tensor.pin_memory, which needs a GPU, stands in as a recorded clone."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from balanced_experts.images import batches

    for i in range(3):
        Image.fromarray(_ramp(20 + i, 24)).save(tmp_path / f"{i}.jpg", quality=95)
    (tmp_path / "train.txt").write_text("".join(f"{i}.jpg {i}\n" for i in range(3)))
    image_list = read_list(tmp_path / "train.txt")
    spec = InputSpec(size=16, resize=18, augment="none")
    pool = torch.zeros((1, 3, 16, 16, 4), dtype=torch.uint8)
    monkeypatch.setitem(batches._POOLS, -1, pool)
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self) or self.clone())
    filled = batches._Batches(tmp_path, image_list, np.arange(3), np.arange(3), spec, False, 0, 3, pool, -1)[0]
    images, targets = pin_memory(filled).tensors()  # what DataLoader's pinning thread calls
    assert len(pinned) == 2 and pinned[0].data_ptr() == pool.data_ptr()
    expected = pool[0].clone()
    assert expected[..., :3].float().std() > 0 and torch.equal(targets, torch.arange(3))
    pool.fill_(0)  # a worker writes the slot again
    assert torch.equal(images, expected)


# -- 4. SyncBatchNorm under DDP on CUDA ----------------------------------------------------

def _batchnorms(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_sync_batchnorm_converts_on_cuda_only_and_keeps_parameters_modes_and_names():
    """The conversion itself needs no GPU; training with it does (torch's SyncBatchNorm
    refuses CPU tensors), so CPU processes keep plain BatchNorm."""
    model = build_model(BACKBONE, 5)
    parameters = set_learnable(model, 3)  # classifier, fc and the last stage learn; the rest is frozen
    names = list(model.state_dict())
    by_name = dict(model.named_parameters())
    assert sync_batchnorm_layers(model, CPU) == 0
    assert sync_batchnorm_layers(model, CUDA, enabled=False) == 0
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())

    count = len(_batchnorms(model))
    assert sync_batchnorm_layers(model, CUDA) == count > 0
    assert all(isinstance(m, nn.SyncBatchNorm) for m in _batchnorms(model))
    # The optimizer's parameters are still the model's, frozen ones still frozen.
    assert all(p is by_name[name] for name, p in model.named_parameters())
    assert [p for p in model.parameters() if p.requires_grad] == parameters
    # frozen_bn: eval keeps frozen layers in eval mode (running statistics, nothing to
    # synchronise); train (the default) trains them all, synchronised over the global batch.
    frozen = _batchnorms(model.trunk.stem) + _batchnorms(model.trunk.layer1) + _batchnorms(model.trunk.layer2)
    train_mode(model, "eval")
    assert frozen and not any(m.training for m in frozen)
    assert _batchnorms(model.trunk.layer3) and all(m.training for m in _batchnorms(model.trunk.layer3))
    train_mode(model, "train")
    assert all(m.training for m in _batchnorms(model))
    # The weights file is the same: it loads into a plain model.
    assert list(model.state_dict()) == names
    plain = build_model(BACKBONE, 5)
    plain.load_state_dict(model.state_dict())
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), plain.eval()(x))


# -- 5. the classifier head in float32 under bf16 autocast ------------------------------------

def test_the_head_runs_in_float32_under_bf16_autocast():
    """CPU bf16 autocast stands in for CUDA's: the trunk's convolutions run in bf16, the
    pool, fc and classifier in float32 on the trunk's output."""
    torch.manual_seed(0)
    model = build_model(BACKBONE, 7).eval()
    x = torch.randn(6, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        trunk = model.trunk(x)
        features, logits = model.features(x), model(x)
    assert trunk.dtype == torch.bfloat16  # autocast is on
    assert features.dtype == logits.dtype == torch.float32
    with torch.no_grad():
        head = model.relu(model.fc(torch.flatten(model.pool(trunk.float()), 1)))
        assert torch.equal(features, head)
        assert torch.equal(logits, model.classifier(head))
    assert not torch.equal(logits, logits.bfloat16().float())  # not bf16 values stored as float32


# -- 6. cuda:N becomes the current device --------------------------------------------------

def test_cuda_n_is_checked_and_becomes_the_current_device(monkeypatch):
    """The seam: torch reports 2 GPUs and records set_device; the CUDA settings setup_torch
    changes are restored after the test."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    flags = [(torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "allow_tf32"),
             (torch.backends.cuda.matmul, "allow_tf32")]
    saved = [getattr(owner, name) for owner, name in flags]
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            device = resolve_device("cuda:1")
            assert device == torch.device("cuda", 1)
            setup_torch(threads, 0, device)
            assert current == [torch.device("cuda", 1)]
            setup_torch(threads, 0, resolve_device("cuda"))  # no index: the current device stays
            assert current == [torch.device("cuda", 1)]
    finally:
        for (owner, name), value in zip(flags, saved):
            setattr(owner, name, value)
    with pytest.raises(RuntimeError, match=r"'cuda:2' was asked for, but torch sees 2 CUDA device\(s\): "
                                           r"cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="'cuda:0' was asked for, but torch sees no CUDA device"):
        resolve_device("cuda:0")


# -- 7. the Slurm profile's multi-GPU example ----------------------------------------------

def test_the_slurm_multi_gpu_example_asks_for_one_node_and_one_task():
    """The example in profiles/slurm (a comment there) and in docs/cluster.md: torchrun runs on
    one node, and the stage starts its processes itself, so one Slurm task."""
    profile = (REPO / "profiles/slurm/config.yaml").read_text()
    example = re.search(r"^#\s+(train_base: \{gpu: 4\b.*\})$", profile, re.M).group(1)
    assert f"  {example}\n" in (REPO / "docs/cluster.md").read_text()
    resources = yaml.safe_load(example)["train_base"]
    assert resources["nodes"] == 1 and resources["tasks_per_gpu"] == 0
