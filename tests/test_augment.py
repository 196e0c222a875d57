"""The augmentation recipes (balanced_experts.images.augment): the device path draws its
parameters from the distributions torchvision's transforms draw them from (the CPU path's),
and, given the same parameters, computes what the CPU path computes.

Tolerance of the distribution tests. Two samplers are compared by the largest distance
between the empirical CDFs of n draws from each (the two-sample Kolmogorov-Smirnov
statistic; for a probability, the difference of the two frequencies). By the DKW inequality
(Massart 1990), P(sup |F_n - F| > e) <= 2 exp(-2 n e^2) for each sample, so two samples of
one distribution lie further apart than 2 e with probability at most 4 exp(-2 n e^2). With
e = sqrt(ln(4 m / alpha) / (2 n)) for m comparisons, a correct sampler fails any of them with
probability at most alpha = 1e-6, whatever the seeds; no large-sample approximation is
involved. At n = 20,000 and m = 15 the tolerance is 0.042 (the statistics measured are near
0.01): a plausible slip, such as a crop scale from 0.16 instead of 0.08, lies 0.14 off
(checked below), a fixed jitter order 0.83.
"""

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from balanced_experts.images.augment import (AUGMENTATIONS, JITTER, crop_flip, draw_crop_flip, draw_flip_and_jitter,
                                             _jitter_batch, draw_jitter, flip_and_jitter, jitter,
                                             random_resized_crop_box)
from balanced_experts.images.batches import worker_generator
from balanced_experts.images.source import ImageSource
from balanced_experts.images.spec import InputSpec
from balanced_experts.lists import ImageList

N = 20_000
ALPHA = 1e-6
SHAPES = [(30, 50), (50, 30), (12, 100)]  # (h, w); 12 x 100 often ends in RandomResizedCrop's fallback


def tolerance(n: int, comparisons: int) -> float:
    """The largest distance two samplers of one distribution keep with probability 1 - ALPHA."""
    return 2 * math.sqrt(math.log(4 * comparisons / ALPHA) / (2 * n))


def ks(a, b) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest distance of the empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    values = np.union1d(a, b)
    return float(np.abs(np.searchsorted(a, values, "right") / len(a)
                        - np.searchsorted(b, values, "right") / len(b)).max())


def _of_type(transforms, kind):
    return next(t for t in transforms if isinstance(t, kind))


def _spec(augment: str) -> InputSpec:
    return InputSpec(size=24, resize=28, augment=augment, pad=3, mean=(0.0,) * 3, std=(1.0,) * 3)


# -- the draws: the same distributions as torchvision's --------------------------------------

def test_the_resized_crop_box_is_drawn_as_torchvision_draws_it():
    crop = _of_type(AUGMENTATIONS["imagenet"].train_transform(_spec("imagenet")), v2.RandomResizedCrop)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    limit = tolerance(N, 5 * len(SHAPES))
    theirs = {}
    for h, w in SHAPES:
        image = Image.new("RGB", (w, h))
        # top, left, height, width
        theirs[h, w] = np.array([list(crop.make_params([image]).values()) for _ in range(N)])
        ours = np.array([random_resized_crop_box(h, w, generator) for _ in range(N)])
        for column, name in enumerate(("top", "left", "height", "width")):
            assert ks(ours[:, column], theirs[h, w][:, column]) < limit, (h, w, name)
        assert ks(ours[:, 2] * ours[:, 3], theirs[h, w][:, 2] * theirs[h, w][:, 3]) < limit, (h, w, "area")
    # The test's power: a crop scale drawn from 0.16 instead of 0.08 is told apart.
    h, w = SHAPES[0]
    slipped = np.array([random_resized_crop_box(h, w, generator, scale=(0.16, 1.0)) for _ in range(N)])
    assert ks(slipped[:, 2] * slipped[:, 3], theirs[h, w][:, 2] * theirs[h, w][:, 3]) > 1.5 * limit


def _torchvision_flips(n: int) -> np.ndarray:
    flip = v2.RandomHorizontalFlip()
    pixels = torch.tensor([[[0, 1]]])
    return np.array([bool(flip(pixels)[0, 0, 0] == 1) for _ in range(n)])


def _permutation_code(order) -> int:
    """One of 0..5 for each order of brightness (0), contrast (1) and saturation (2)."""
    return [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]].index(list(order))


def test_flip_and_colour_jitter_are_drawn_as_torchvision_draws_them():
    """RandomHorizontalFlip's coin; ColorJitter's three factors and the random order it
    applies them in (its hue, unset, takes no part)."""
    jitter = _of_type(AUGMENTATIONS["imagenet"].train_transform(_spec("imagenet")), v2.ColorJitter)
    ranges = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    assert ranges == ((1 - JITTER, 1 + JITTER),) * 3 + (None,)
    torch.manual_seed(0)
    flips, factors, orders = draw_flip_and_jitter(N, torch.Generator().manual_seed(1))
    drawn = [jitter.make_params([]) for _ in range(N)]
    their_factors = np.array([[p["brightness_factor"], p["contrast_factor"], p["saturation_factor"]] for p in drawn])
    their_orders = [[int(i) for i in p["fn_idx"] if i < 3] for p in drawn]
    limit = tolerance(N, 1 + 3 + 6)
    assert abs(flips.float().mean().item() - _torchvision_flips(N).mean()) < limit
    for column in range(3):
        assert ks(factors[:, column].numpy(), their_factors[:, column]) < limit, column
    ours = np.bincount([_permutation_code(order) for order in orders.tolist()], minlength=6) / N
    theirs = np.bincount([_permutation_code(order) for order in their_orders], minlength=6) / N
    assert np.abs(ours - theirs).max() < limit
    assert np.abs(theirs - 1 / 6).max() < limit / 2  # every order equally likely: a fixed one would be 5/6 off


def test_the_file_paths_per_image_draws_are_torchvisions():
    """The file path draws each image's crop box and flip in a worker from the image's own
    generator (:func:`worker_generator`: the pass's seed and the position), and the jitter's
    factors and order batch-wise from the job's generator, 64 images a batch: each image's
    parameters independent, from torchvision's distributions."""
    h, w = SHAPES[0]
    crop = _of_type(AUGMENTATIONS["imagenet"].train_transform(_spec("imagenet")), v2.RandomResizedCrop)
    jitter_transform = _of_type(AUGMENTATIONS["imagenet"].train_transform(_spec("imagenet")), v2.ColorJitter)
    torch.manual_seed(0)
    boxes, flips = [], []
    for position in range(N):  # two passes' seeds, as a job's epochs
        generator = worker_generator(12345 + position // (N // 2), position % (N // 2))
        boxes.append(random_resized_crop_box(h, w, generator))
        flips.append(bool(torch.rand(1, generator=generator) < 0.5))
    boxes = np.array(boxes)
    image = Image.new("RGB", (w, h))
    theirs = np.array([list(crop.make_params([image]).values()) for _ in range(N)])
    job = torch.Generator().manual_seed(1)
    factors, orders = (torch.cat(parts) for parts in zip(*(draw_jitter(64, job) for _ in range(N // 64))))
    drawn = [jitter_transform.make_params([]) for _ in range(len(factors))]
    their_factors = np.array([[p["brightness_factor"], p["contrast_factor"], p["saturation_factor"]] for p in drawn])
    limit = tolerance(N, 5 + 1 + 3 + 6 + 1)
    for column, name in enumerate(("top", "left", "height", "width")):
        assert ks(boxes[:, column], theirs[:, column]) < limit, name
    assert ks(boxes[:, 2] * boxes[:, 3], theirs[:, 2] * theirs[:, 3]) < limit, "area"
    assert abs(np.mean(flips) - _torchvision_flips(N).mean()) < limit
    for column in range(3):
        assert ks(factors[:, column].numpy(), their_factors[:, column]) < limit, column
    ours = np.bincount([_permutation_code(order) for order in orders.tolist()], minlength=6) / len(orders)
    theirs = np.bincount([_permutation_code([int(i) for i in p["fn_idx"] if i < 3]) for p in drawn],
                         minlength=6) / len(drawn)
    assert np.abs(ours - theirs).max() < limit
    # Independent per image: neighbours in a batch are uncorrelated (not one draw per batch).
    assert abs(np.corrcoef(factors[:-1, 0], factors[1:, 0])[0, 1]) < limit


def test_the_padded_crop_and_flip_are_drawn_as_torchvision_draws_them():
    spec = _spec("crop_flip")
    crop = _of_type(AUGMENTATIONS["crop_flip"].train_transform(spec), v2.RandomCrop)
    torch.manual_seed(0)
    offsets, flips = draw_crop_flip(N, spec.pad, torch.Generator().manual_seed(1))
    image = Image.new("RGB", (spec.size, spec.size))
    theirs = np.array([[p["top"], p["left"]] for p in (crop.make_params([image]) for _ in range(N))])
    limit = tolerance(N, 3)
    assert ks(offsets[:, 0].numpy(), theirs[:, 0]) < limit and ks(offsets[:, 1].numpy(), theirs[:, 1]) < limit
    assert abs(flips.float().mean().item() - _torchvision_flips(N).mean()) < limit


# -- given the same parameters, the same images ---------------------------------------------

def _replay_imagenet(spec, sizes, generator):
    """The device path's draws, in its order (a box per image as it is cropped, then the
    batch's flips and jitter), as torchvision's parameters of each random transform."""
    boxes = [random_resized_crop_box(h, w, generator) for h, w in sizes]
    flips, factors, orders = draw_flip_and_jitter(len(sizes), generator)
    return [{v2.RandomResizedCrop: dict(zip(("top", "left", "height", "width"), box)),
             v2.RandomHorizontalFlip: bool(flip),
             v2.ColorJitter: dict(fn_idx=torch.tensor([*order, 3]), brightness_factor=float(f[0]),
                                  contrast_factor=float(f[1]), saturation_factor=float(f[2]), hue_factor=None)}
            for box, flip, f, order in zip(boxes, flips, factors, orders.tolist())]


def _replay_crop_flip(spec, sizes, generator):
    offsets, flips = draw_crop_flip(len(sizes), spec.pad, generator)
    return [{v2.RandomCrop: dict(needs_crop=True, top=int(top), left=int(left), height=spec.size, width=spec.size,
                                 needs_pad=True, padding=[spec.pad] * 4),
             v2.RandomHorizontalFlip: bool(flip)}
            for (top, left), flip in zip(offsets.tolist(), flips)]


REPLAYS = {"imagenet": _replay_imagenet, "crop_flip": _replay_crop_flip,
           "none": lambda spec, sizes, generator: [{}] * len(sizes)}  # nothing drawn


def test_every_recipe_has_its_replay():
    assert list(REPLAYS) == list(AUGMENTATIONS)


def _cpu_transform(transforms, image, params):
    """The CPU path's per-image transforms, each random one with the given parameters."""
    for transform in transforms:
        chosen = params.get(type(transform))
        if isinstance(transform, v2.RandomHorizontalFlip):
            image = transform.transform(image, {}) if chosen else image
        elif chosen is not None:
            image = transform.transform(image, chosen)
        else:
            image = transform(image)  # Resize, CenterCrop: nothing drawn
    return image


def _smooth_jpegs(root, count=24):
    """JPEGs of several sizes and shapes, of smooth content (upsampled 6 x 6 noise)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(30, 80, 2))
        noise = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8))
        noise.resize((w, h), Image.BICUBIC).save(root / f"{i}.jpg", quality=95)
    return ImageList(paths=[f"{i}.jpg" for i in range(count)], labels=np.arange(count) % 3)


# The largest and the mean difference (in levels of 255) of the device path's batch from the
# CPU path's, by what the CPU path does: each from rounding only (see the test below).
RESIZE_LEVELS = (1.5, 0.5)
JITTER_LEVELS = (6.0, 2.0)


def _assert_the_cpu_transforms(x, pils, augment, train, replay, resize_levels):
    """``x`` (a path's batch of ``pils``, seeded with 5, with mean 0 and std 1) is the recipe's
    torchvision transforms of each PIL image with the parameters ``replay`` draws from that
    seed (eval: its eval transforms), within rounding: ``resize_levels``, or JITTER_LEVELS
    where the colours are jittered."""
    spec, recipe = _spec(augment), AUGMENTATIONS[augment]
    if train:
        replayed = replay(spec, [(p.height, p.width) for p in pils], torch.Generator().manual_seed(5))
        expected = [_cpu_transform(recipe.train_transform(spec), p, params) for p, params in zip(pils, replayed)]
    else:
        expected = [v2.Compose(recipe.eval_transform(spec))(p) for p in pils]
    expected = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in expected]) / 255
    levels = (x - expected).abs() * 255  # mean 0, std 1: x is in [0, 1]
    jitters = train and any(isinstance(t, v2.ColorJitter) for t in recipe.train_transform(spec))
    largest, mean = JITTER_LEVELS if jitters else resize_levels
    assert levels.max() < largest and levels.mean() < mean, (train, levels.max().item(), levels.mean().item())


@pytest.mark.parametrize("augment", list(AUGMENTATIONS))
def test_the_device_path_computes_the_cpu_transform_with_the_parameters_it_drew(tmp_path, augment):
    """The device path's training batch (seeded, unshuffled) against the recipe's own
    torchvision transforms of the PIL images, with the parameters the same seed draws; its
    eval batch against the eval transforms.

    Tolerance: the two paths differ by rounding only. PIL resamples uint8 images in fixed
    point and rounds, within 1 level (of 255) of torch's antialiased float resize (1.0
    measured, 0.29 on average): RESIZE_LEVELS. Each of PIL's three ColorJitter steps
    truncates to uint8 (0 to 1 level low, 0.5 on average, measured), which the later steps
    carry on: the mean difference stays under 2 levels, the largest under 6 (1.4 and 3.7
    measured): JITTER_LEVELS. A wrong parameter lies far off: jitter steps in the reverse
    order differ by up to 49 levels, a crop shifted by one pixel or a missed flip by tens,
    and Resize's long side rounded instead of floored by 38.
    """
    spec = _spec(augment)
    image_list = _smooth_jpegs(tmp_path)
    pils = [Image.open(tmp_path / path).convert("RGB") for path in image_list.paths]
    source = ImageSource.open(tmp_path, image_list, spec, decode_on_device=True)
    positions, cpu = np.arange(len(pils)), torch.device("cpu")
    for train in (True, False):
        (x, _), = source.batches(positions, image_list.labels, len(pils), train, cpu,
                                 torch.Generator().manual_seed(5), shuffle=False)
        _assert_the_cpu_transforms(x, pils, augment, train, REPLAYS[augment], RESIZE_LEVELS)


def _replay_file_imagenet(spec, sizes, generator):
    """The file path's draws, in its order: the pass's seed from the job's generator, each
    image's box and flip from its worker generator, then the batch's jitter from the job's."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    boxes, flips = [], []
    for position, (h, w) in enumerate(sizes):
        image_generator = worker_generator(seed, position)
        boxes.append(random_resized_crop_box(h, w, image_generator))
        flips.append(bool(torch.rand(1, generator=image_generator) < 0.5))
    factors, orders = draw_jitter(len(sizes), generator)
    return [{v2.RandomResizedCrop: dict(zip(("top", "left", "height", "width"), box)),
             v2.RandomHorizontalFlip: flip, v2.ColorJitter: _jitter_params(f, order)}
            for box, flip, f, order in zip(boxes, flips, factors, orders.tolist())]


def _jitter_params(factors, order) -> dict:
    return dict(fn_idx=torch.tensor([*order, 3]), brightness_factor=float(factors[0]),
                contrast_factor=float(factors[1]), saturation_factor=float(factors[2]), hue_factor=None)


def _replay_file_crop_flip(spec, sizes, generator):
    torch.randint(0, 2**31 - 1, (1,), generator=generator)  # the pass's seed: the workers draw nothing
    return _replay_crop_flip(spec, sizes, generator)


FILE_REPLAYS = {"imagenet": _replay_file_imagenet, "crop_flip": _replay_file_crop_flip,
                "none": lambda spec, sizes, generator: [{}] * len(sizes)}

# The file path's workers resize uint8 images with torch's uint8 kernel, which rounds its
# own fixed-point result; PIL rounds its: 1 level apart at most on these images (0.03 on
# average, most pixels equal; 2 at most on JPEGs of noise).
FILE_RESIZE_LEVELS = (1.5, 0.1)


def test_every_recipe_has_its_file_replay():
    assert list(FILE_REPLAYS) == list(AUGMENTATIONS)


@pytest.mark.parametrize("augment", list(AUGMENTATIONS))
def test_the_file_path_computes_the_cpu_transform_with_the_parameters_it_drew(tmp_path, augment):
    """The file path's training batch (seeded, unshuffled, 2 real DataLoader workers) against
    the recipe's own torchvision transforms of the PIL images, with the parameters the same
    seed draws; its eval batch against the eval transforms.

    Tolerance: rounding only. The crop: FILE_RESIZE_LEVELS. The jitter: PIL's three steps
    each truncate to uint8 (0 to 1 level low), the batched jitter works on floats and rounds
    nowhere: JITTER_LEVELS, as the device path (whose crops are floats). A wrong parameter
    lies tens of levels off (see the device path's test).
    """
    from balanced_experts.images.batches import file_batches

    spec = dataclasses.replace(_spec(augment), workers=2)
    image_list = _smooth_jpegs(tmp_path)
    pils = [Image.open(tmp_path / path).convert("RGB") for path in image_list.paths]
    positions, cpu = torch.arange(len(pils)), torch.device("cpu")
    for train in (True, False):
        (x, _), = file_batches(tmp_path, image_list, spec, positions, torch.as_tensor(image_list.labels), len(pils),
                               train, cpu, torch.Generator().manual_seed(5))
        _assert_the_cpu_transforms(x, pils, augment, train, FILE_REPLAYS[augment], FILE_RESIZE_LEVELS)


def test_the_batched_jitter_is_torchvisions_colorjitter_per_image():
    """:func:`jitter` of a batch (uint8 in, an image at a time on the CPU) against
    torchvision's ColorJitter of each float image alone with that image's drawn factors and
    order, and against :func:`flip_and_jitter` (the device path's, whole batch at once).

    Tolerance: on floats both compute the same blends; torchvision's gray weighs red 0.2989,
    PIL's (and ours) 0.299, which moves a pixel by at most 0.0001 x 255 x 1.4^2 levels per
    gray step: under 0.02 levels, well under one level of rounding. flip_and_jitter is the
    same arithmetic in another order: float32 rounding (1e-5)."""
    colorjitter = _of_type(AUGMENTATIONS["imagenet"].train_transform(_spec("imagenet")), v2.ColorJitter)
    x = (torch.rand(10, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    x = torch.nn.functional.interpolate(x.float(), size=(20, 30), mode="bilinear").round().to(torch.uint8)
    factors, orders = draw_jitter(len(x), torch.Generator().manual_seed(1))
    ours = jitter(x, factors, orders)
    assert ours.is_contiguous(memory_format=torch.channels_last) and ours.dtype == torch.float32
    for image, mine, f, order in zip(x, ours, factors, orders.tolist()):
        theirs = colorjitter.transform(image.float() / 255, _jitter_params(f, order))
        assert (mine - theirs).abs().max() * 255 < 0.05
    device_form = flip_and_jitter(x.float() / 255, torch.zeros(len(x), dtype=torch.bool), factors, orders)
    assert (ours - device_form).abs().max() < 1e-5
    # The whole-batch form, which a GPU runs; float images in too.
    assert (_jitter_batch(x, factors, orders) - ours).abs().max() < 1e-5
    assert torch.equal(jitter(x.float() / 255, factors, orders), ours)


def test_crop_flip_on_preloaded_images_is_torchvisions_exactly():
    """Pad, crop and flip move pixels only: with the same parameters, the batch-wise form on
    uint8 images equals the CPU path's per-image transforms bit for bit."""
    spec = _spec("crop_flip")
    x = torch.randint(0, 256, (16, 3, spec.size, spec.size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    ours = AUGMENTATIONS["crop_flip"].augment_preloaded(x, spec, torch.Generator().manual_seed(1))
    replayed = _replay_crop_flip(spec, [(spec.size, spec.size)] * len(x), torch.Generator().manual_seed(1))
    transforms = AUGMENTATIONS["crop_flip"].train_transform(spec)
    for image, mine, params in zip(x, ours, replayed):
        theirs = _cpu_transform(transforms, Image.fromarray(image.permute(1, 2, 0).numpy()), params)
        assert torch.equal(mine, torch.from_numpy(np.array(theirs)).permute(2, 0, 1))
    draws = draw_crop_flip(len(x), spec.pad, torch.Generator().manual_seed(1))
    assert torch.equal(ours, crop_flip(x, spec.pad, *draws))


def test_preloaded_images_of_the_imagenet_recipe_are_padded_cropped_and_flipped():
    """Preloaded images are at the input size already: the ImageNet recipe pads, crops and
    flips them as crop_flip does (what preloading has always done)."""
    x = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    results = [AUGMENTATIONS[name].augment_preloaded(x, _spec(name), torch.Generator().manual_seed(1))
               for name in ("imagenet", "crop_flip", "none")]
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], x)
    assert torch.equal(results[2], x)


def test_an_unknown_recipe_names_the_key():
    with pytest.raises(ValueError, match=r"^input.augment: 'autoaugment' is none of imagenet, crop_flip, none$"):
        InputSpec(augment="autoaugment")
    assert InputSpec(augment="crop_flip").recipe is AUGMENTATIONS["crop_flip"]
    assert InputSpec(size=224).eval_resize == 256 and InputSpec(size=224, resize=232).eval_resize == 232


def test_the_jpeg_decoders_of_the_two_paths_agree():
    """The comparisons above start from the same pixels: torchvision's CPU decoder and PIL's."""
    from balanced_experts.images.decoding import decode_images

    data = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(data, "JPEG")
    decoded, = decode_images([torch.frombuffer(bytearray(data.getvalue()), dtype=torch.uint8)], torch.device("cpu"))
    assert torch.equal(decoded, torch.from_numpy(np.array(Image.open(data).convert("RGB"))).permute(2, 0, 1))


def test_a_workers_resize_into_its_batch_is_interpolates_and_flipping_first_changes_nothing():
    """A worker resizes a crop straight into its batch's row (interpolate's own operator with
    ``out``), of RGBX pixels, and flips a crop before resizing it: bit for bit the uint8
    interpolate of the flipped-after RGB crop, up-, down- and mixed-scaled."""
    from balanced_experts.images.augment import resize

    image = torch.randint(0, 256, (1, 37, 53, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rgbx = image.permute(0, 3, 1, 2)[0]  # 4 x H x W, channels-last, as a decoded image's
    for crop, size in (((slice(3, 30), slice(5, 50)), (20, 20)), ((slice(0, 37), slice(0, 53)), (45, 64)),
                       ((slice(2, 12), slice(1, 40)), (24, 16))):
        window = rgbx[:, crop[0], crop[1]]
        rgb = window[:3][None].contiguous(memory_format=torch.channels_last)
        expected = torch.nn.functional.interpolate(rgb, size=size, mode="bilinear", antialias=True)[0]
        row = torch.zeros(size + (4,), dtype=torch.uint8).permute(2, 0, 1)
        assert resize(window, size, uint8=True, out=row) is row
        assert torch.equal(row[:3], expected)
        resize(window.flip(2), size, uint8=True, out=row)
        assert torch.equal(row[:3], expected.flip(2))
