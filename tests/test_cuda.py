"""The CUDA paths against the CPU ones. Skipped where torch sees no GPU (CI never has one);
``bench/gpu.sh`` runs them on a GPU machine.

With ``BALANCED_EXPERTS_GPU_STAND_IN=cpu`` (``bench/gpu.sh --cpu``) the CPU stands in for
the GPU: the tests then compare the CPU with itself, which proves their plumbing, not CUDA.
"""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from balanced_experts.calibration import CalibrationObjective, ExpertOutputs, JointCalibration
from balanced_experts.images.decoding import decode_images, ImageFileError
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import ImageList
from balanced_experts.logits import predict
from balanced_experts.models import build_model
from balanced_experts.training import TrainSettings, fit

STAND_IN = os.environ.get("BALANCED_EXPERTS_GPU_STAND_IN")
pytestmark = pytest.mark.skipif(not (STAND_IN or torch.cuda.is_available()), reason="no CUDA device")
CPU, CUDA = torch.device("cpu"), torch.device(STAND_IN or "cuda")


def jpeg_root(tmp_path, count=12):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        # Smooth images: nvJPEG and libjpeg differ by rounding only.
        ramp = np.linspace(0, 255, 90)[None, :, None] * np.ones((60 + 4 * i, 1, 3)) * rng.random(3)
        Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / f"{i}.jpg", quality=95)
        paths.append(f"{i}.jpg")
    return tmp_path, ImageList(paths=paths, labels=np.arange(count) % 3)


def test_nvjpeg_batches_match_the_cpu_decoder(tmp_path):
    root, image_list = jpeg_root(tmp_path)
    spec = InputSpec(size=32, resize=36, augment="imagenet", mean=(0.5,) * 3, std=(0.25,) * 3, workers=2)
    source = ImageSource.open(root, image_list, spec, decode_on_device=True)
    positions = np.arange(len(image_list))
    for train in (False, True):
        on_gpu = list(source.batches(positions, image_list.labels, 5, train, CUDA, torch.Generator().manual_seed(3)))
        on_cpu = list(source.batches(positions, image_list.labels, 5, train, CPU, torch.Generator().manual_seed(3)))
        for (x, y), (x_cpu, y_cpu) in zip(on_gpu, on_cpu):
            assert x.device.type == CUDA.type and x.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(y.cpu(), y_cpu)  # the same order and, drawn on the CPU, the same crops
            assert (x.cpu() - x_cpu).abs().mean() < 0.05


def test_file_batches_jittered_on_cuda_are_the_cpus(tmp_path):
    """The file path: the workers' crops are the same bytes for either device; the jitter
    (the whole batch at once on CUDA, an image at a time on the CPU) and the normalisation
    differ by float rounding only."""
    root, image_list = jpeg_root(tmp_path)
    spec = InputSpec(size=32, resize=36, augment="imagenet", mean=(0.5,) * 3, std=(0.25,) * 3, workers=2)
    source = ImageSource.open(root, image_list, spec)
    positions = np.arange(len(image_list))
    for train in (False, True):
        on_gpu = list(source.batches(positions, image_list.labels, 5, train, CUDA, torch.Generator().manual_seed(3)))
        on_cpu = list(source.batches(positions, image_list.labels, 5, train, CPU, torch.Generator().manual_seed(3)))
        for (x, y), (x_cpu, y_cpu) in zip(on_gpu, on_cpu):
            assert x.device.type == CUDA.type and x.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(y.cpu(), y_cpu)
            assert torch.allclose(x.cpu(), x_cpu, atol=1e-4)


def test_preloaded_batches_are_the_same_on_cuda(tmp_path):
    root, image_list = jpeg_root(tmp_path)
    spec = InputSpec(size=24, augment="crop_flip", preload=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    source = ImageSource.open(root, image_list, spec)
    positions = np.arange(len(image_list))
    on_gpu = source.batches(positions, positions, 4, True, CUDA, torch.Generator().manual_seed(0))
    on_cpu = source.batches(positions, positions, 4, True, CPU, torch.Generator().manual_seed(0))
    for (x, y), (x_cpu, y_cpu) in zip(on_gpu, on_cpu):
        assert torch.equal(y.cpu(), y_cpu)
        assert torch.allclose(x.cpu(), x_cpu, atol=1e-6)


def test_calibration_objective_on_cuda_matches_the_cpu():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(30).repeat_interleave(20)
    experts = [ExpertOutputs(torch.randn(len(labels), len(ids) + 1, generator=g) * 3, ids, ratio)
               for ids, ratio in ((torch.arange(0, 12), 16.0), (torch.arange(12, 25), 8.0),
                                  (torch.arange(25, 30), 8.0))]
    values = []
    for device in (CPU, CUDA):
        model = JointCalibration([12, 13, 5], 30).to(device)
        moved = [ExpertOutputs(e.logits.to(device), e.class_ids.to(device), e.open_ratio) for e in experts]
        loss = CalibrationObjective(moved, labels.to(device), True, block_rows=256)(model, weight_decay=1e-3)
        values.append((loss, [p.grad.cpu() for p in model.parameters()]))
    (loss_cpu, grads_cpu), (loss_gpu, grads_gpu) = values
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-5)
    for a, b in zip(grads_gpu, grads_cpu):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True])
def test_training_on_cuda_learns_and_predicts(tmp_path, amp):
    """A few epochs on an easy problem (the class is the mean colour) with bf16 autocast or
    without; the GPU model's logits agree with the same weights on the CPU."""
    g = torch.Generator().manual_seed(0)
    n = 96
    labels = np.arange(n) % 3
    pixels = torch.randint(0, 60, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    pixels[np.arange(n), labels] += 150  # class c: channel c bright
    spec = InputSpec(size=16, augment="none", preload=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    source = ImageSource(tmp_path, ImageList(paths=[f"{i}.png" for i in range(n)], labels=labels), spec)
    source.pixels = pixels
    positions = np.arange(n)
    torch.manual_seed(0)
    model = build_model({"name": "resnet_cifar8", "width": 8, "embed_dim": 16}, 3).to(CUDA)
    settings = TrainSettings(epochs=6, batch_size=16, lr=0.05, seed=0, scheduler="constant")
    result = fit(model, list(model.parameters()),
                 train_batches=lambda gen: source.batches(positions, labels, 16, True, CUDA, gen),
                 val_batches=lambda: source.batches(positions, labels, 32, False, CUDA),
                 steps_per_epoch=n // 16, settings=settings, name="cuda",
                 metrics_path=tmp_path / "metrics.csv", log=lambda _: None, amp=amp)
    # The best epoch's weights, as the training stage keeps: at this constant lr the last
    # epoch's BatchNorm statistics sometimes lag weights that grew, and its eval accuracy drops.
    model.load_state_dict(result["state_dict"])
    logits = predict(model, source.batches(positions, labels, 32, False, CUDA), n, 3, amp=amp)
    assert (logits.argmax(1) == labels).mean() > 0.9
    if amp:  # the head runs in float32: logits are not bf16 values stored as float32
        assert not np.array_equal(logits, torch.from_numpy(logits).bfloat16().float().numpy())
    cpu_logits = predict(model.cpu(), source.batches(positions, labels, 32, False, CPU), n, 3)
    tolerance = 0.1 if amp else 1e-3  # bf16 keeps 8 bits of mantissa; TF32 10
    assert np.abs(logits - cpu_logits).max() < tolerance * max(1.0, np.abs(cpu_logits).max())


def test_nvjpeg_batch_with_a_cmyk_jpeg_falls_back_to_the_cpu_and_names_a_truncated_one():
    """nvJPEG refuses CMYK JPEGs: the batch is decoded one by one on the CPU (which reads
    them as PIL does); a truncated file is named."""
    def jpeg(image):
        out = io.BytesIO()
        image.save(out, "JPEG", quality=95)
        return torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)

    ramp = (np.linspace(0, 255, 50)[None, :, None] * np.ones((40, 1, 3)) * [1.0, 0.6, 0.3]).astype(np.uint8)
    good, cmyk = jpeg(Image.fromarray(ramp)), jpeg(Image.fromarray(ramp).convert("CMYK"))
    images = decode_images([good, cmyk, good], CUDA)
    assert [(image.device.type, tuple(image.shape)) for image in images] == [(CUDA.type, (3, 40, 50))] * 3
    pil = np.asarray(Image.open(io.BytesIO(cmyk.numpy().tobytes())).convert("RGB")).transpose(2, 0, 1)
    assert np.abs(images[1].cpu().numpy().astype(int) - pil).mean() < 2
    with pytest.raises(ImageFileError, match="cannot read image #1 of the batch: "):
        decode_images([good, good[: len(good) // 2]], CUDA)
