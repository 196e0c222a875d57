"""The batch paths (balanced_experts.images.batches) and the split cache's rows
(balanced_experts.images.cache), called directly: real files, real DataLoader workers."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from balanced_experts.faults import ArtifactError
from balanced_experts.images.batches import device_batches, file_batches, normalizer, preloaded_batches
from balanced_experts.images.cache import cached_pixels, write_image_cache
from balanced_experts.images.decoding import ImageFileError, decode_all
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import read_list, write_list

CPU = torch.device("cpu")


@pytest.fixture
def jpegs(tmp_path):
    """Eight 20 x 20 JPEGs behind a list file."""
    rng = np.random.default_rng(0)
    paths = [f"images/{i}.jpg" for i in range(8)]
    (tmp_path / "images").mkdir()
    for path in paths:
        Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / path, quality=90)
    write_list(tmp_path / "train.txt", paths, np.arange(8) % 2)
    return tmp_path, read_list(tmp_path / "train.txt")


def _all(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


def _error_of(batches) -> str:
    with pytest.raises(ImageFileError) as caught:
        _all(batches)
    return str(caught.value)


@pytest.mark.parametrize("train", [True, False])
def test_a_corrupt_jpeg_read_by_a_worker_is_the_line_the_main_process_gives(jpegs, train):
    """A worker's ImageFileError reaches the caller as the error itself, its one line, as
    without workers: not torch's re-raise, whose message is the worker's traceback."""
    root, image_list = jpegs
    path = root / image_list.paths[5]
    path.write_bytes(path.read_bytes()[:300])  # cut short
    with pytest.raises(OSError) as pil:
        Image.open(path).convert("RGB")
    expected = f"cannot read image {path} ({root / 'train.txt'}, line 6): {pil.value}"
    indices, targets = torch.arange(8), torch.as_tensor(image_list.labels)
    messages = {}
    for workers in (0, 2):
        spec = InputSpec(size=16, resize=18, augment="imagenet", workers=workers)
        messages[workers] = _error_of(file_batches(root, image_list, spec, indices, targets, 4, train, CPU,
                                                   torch.Generator().manual_seed(0)))
    assert messages == {0: expected, 2: expected}


def test_a_file_gone_when_a_device_path_worker_reads_it_is_its_one_line(jpegs):
    root, image_list = jpegs
    (root / image_list.paths[2]).unlink()
    expected = (f"cannot read image {root / image_list.paths[2]} ({root / 'train.txt'}, line 3): "
                f"[Errno 2] No such file or directory: '{root / image_list.paths[2]}'")
    indices, targets = torch.arange(8), torch.as_tensor(image_list.labels)
    for workers in (0, 2):
        spec = InputSpec(size=16, resize=18, augment="imagenet", workers=workers)
        assert _error_of(device_batches(root, image_list, spec, indices, targets, 4, True, CPU,
                                        torch.Generator().manual_seed(0))) == expected


def test_workers_give_the_batches_the_main_process_gives(jpegs):
    """Every batch path yields the images of ``indices`` in their order, normalised,
    channels-last; the file path's workers the same batches as the main process."""
    root, image_list = jpegs
    indices, targets = torch.tensor([7, 0, 3, 5, 1]), torch.tensor([1, 0, 1, 1, 0])
    spec = InputSpec(size=16, resize=18, augment="crop_flip", workers=0)
    alone = _all(file_batches(root, image_list, spec, indices, targets, 2, False, CPU, None))
    with_workers = _all(file_batches(root, image_list, dataclasses.replace(spec, workers=2), indices, targets, 2,
                                     False, CPU, None))
    assert [len(y) for _, y in alone] == [2, 2, 1]
    for (x, y), (x2, y2) in zip(alone, with_workers):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(torch.cat([y for _, y in alone]), targets)
    pixels = decode_all(root, image_list, 16, np.empty((8, 3, 16, 16), np.uint8))
    (x, y), = preloaded_batches(pixels, spec, indices, targets, 8, False, CPU, None)
    assert torch.equal(x, normalizer(spec, CPU, 255.0)(torch.from_numpy(pixels[indices.numpy()])))


def test_training_batches_are_the_same_for_any_number_of_workers(jpegs):
    """A worker draws an image's crop and flip from that image's generator, the main process
    the jitter from the job's: a seed gives the same training batches with no worker or two,
    and on every rerun; another seed other ones."""
    root, image_list = jpegs
    indices, targets = torch.tensor([7, 0, 3, 5, 1, 2]), torch.tensor([1, 0, 1, 1, 0, 0])
    runs = {}
    for workers, seed in ((0, 0), (2, 0), (2, 0), (2, 1)):
        spec = InputSpec(size=16, resize=18, augment="imagenet", workers=workers)
        batches = file_batches(root, image_list, spec, indices, targets, 4, True, CPU,
                               torch.Generator().manual_seed(seed))
        runs.setdefault((workers, seed), []).append(_all(batches))
    (alone,), (first, again), (other,) = runs[0, 0], runs[2, 0], runs[2, 1]
    assert [len(y) for _, y in alone] == [4, 2]
    for (x, y), (x2, y2), (x3, y3) in zip(alone, first, again):
        assert torch.equal(x, x2) and torch.equal(x, x3) and torch.equal(y, y2)
        assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    assert not torch.equal(alone[0][0], other[0][0])


def test_a_pass_longer_than_the_pool_of_slots_gives_every_batch_its_own_images(jpegs):
    """The workers write batch b into slot b % slots of the pass's pool: over 12 batches,
    more than twice its 5 slots, with a consumer slow enough that the workers run as far
    ahead as DataLoader lets them, every batch is still the one the main process alone
    gives (a pool too small for the batches in flight would hand over overwritten slots)."""
    import time

    root, image_list = jpegs
    indices = torch.arange(24) % 8
    targets = torch.as_tensor(image_list.labels)[indices]
    spec = InputSpec(size=16, resize=18, augment="none", workers=0)
    alone = _all(file_batches(root, image_list, spec, indices, targets, 2, False, CPU, None))
    with_workers = []
    for x, y in file_batches(root, image_list, dataclasses.replace(spec, workers=2), indices, targets, 2, False,
                             CPU, None):
        time.sleep(0.02)
        with_workers.append((x.clone(), y.clone()))
    assert len(alone) == len(with_workers) == 12
    for (x, y), (x2, y2) in zip(alone, with_workers):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(alone[0][0], alone[1][0])  # the batches differ: a stale slot would show


def test_a_pool_larger_than_the_free_shared_memory_is_one_line_naming_the_keys(jpegs, monkeypatch):
    """Workers that would run out of shared memory die of SIGBUS mid-pass; the pass checks
    the free space first and names what to change."""
    import os

    from balanced_experts.images import batches

    root, image_list = jpegs
    real = os.statvfs("/")
    monkeypatch.setattr(batches.os, "statvfs", lambda where: os.statvfs_result(
        (4096, 4096, 1000, 1, 1, 1000, 100, 100, 0, 255)) if where == "/dev/shm" else real)
    spec = InputSpec(size=16, resize=18, augment="none", workers=2)
    expected = (r"^the image loader's 2 workers need 0 MiB of shared memory for their batches \(\(2 x input.workers "
                r"\+ 1\) x 4 images x 16 x 16 x 4 bytes\), and /dev/shm has 0 MiB free: lower input.workers or the "
                r"batch size, or give the machine more \(a container: docker run --shm-size\)$")
    with pytest.raises(ImageFileError, match=expected):
        next(file_batches(root, image_list, spec, torch.arange(8), torch.zeros(8, dtype=torch.long), 4, False, CPU,
                          None))
    monkeypatch.setattr(batches.os, "statvfs", lambda where: real)
    assert len(_all(file_batches(root, image_list, spec, torch.arange(8), torch.zeros(8, dtype=torch.long), 4,
                                 False, CPU, None))) == 2


def test_the_normalizer_scales_and_standardises():
    spec = InputSpec(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = (x.float() / 255 - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.allclose(normalizer(spec, CPU, 255.0)(x), expected, atol=1e-6)
    assert torch.allclose(normalizer(spec, CPU, 1.0)(x.float() / 255), expected, atol=1e-6)


def test_cached_pixels_of_some_rows_and_a_cache_too_short_for_them(jpegs, tmp_path):
    root, image_list = jpegs
    cache = tmp_path / "cache" / "train.npy"
    write_image_cache(root, image_list, 16, cache)
    rows = np.array([6, 1, 4])
    full = cached_pixels(cache, image_list, 16)
    assert np.array_equal(cached_pixels(cache, image_list.subset(rows), 16, rows), full[rows])
    with pytest.raises(ArtifactError, match=f"holds 8 images, fewer than {image_list.source} needs"):
        cached_pixels(cache, image_list, 16, np.array([0, 8]))
