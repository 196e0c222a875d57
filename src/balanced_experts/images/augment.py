"""The augmentation recipes that ``input.augment`` names, each defined once.

A recipe knows every form of itself that a batch path needs (:mod:`.batches`):

- :meth:`Recipe.train_transform`, :meth:`Recipe.eval_transform`: torchvision's per-image
  transforms of PIL images: the recipe's definition, which the other forms are tested against;
- :meth:`Recipe.worker_train`, :meth:`Recipe.worker_eval`, :meth:`Recipe.augment_loaded`: the
  file path's form: the DataLoader workers crop (and flip) each decoded image to the input
  size in uint8 (RGBX: PIL's 4 bytes a pixel), the training process does the rest batch-wise
  on its device;
- :meth:`Recipe.train_crop`, :meth:`Recipe.eval_crop`, :meth:`Recipe.augment_batch`: the
  device path's form (files decoded on the job's device): one crop per image to the input
  size, then the rest batch-wise;
- :meth:`Recipe.augment_preloaded`: batch-wise, on preloaded images already at the input size.

The batch-wise forms draw from the same distributions as torchvision's transforms (each
draw function below says which; tests/test_augment.py compares them over many draws), but
from seeded CPU generators rather than torch's global one, so that their batches are the
same on every device and for any number of workers.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .spec import InputSpec

# torchvision is imported where a per-image transform needs it, not here: importing it
# costs 1.5 s per job (it pulls in torch._dynamo), and the preloaded datasets never use it.

JITTER = 0.4
"""The ImageNet recipe's ColorJitter strength, of brightness, contrast and saturation alike."""


class Recipe:
    """No augmentation (``none``): a training image is prepared as an evaluation image."""

    name = "none"

    def train_transform(self, spec: InputSpec) -> list:
        """The per-image training transforms (torchvision v2) of a PIL image, before it becomes a tensor."""
        return self.eval_transform(spec)

    def eval_transform(self, spec: InputSpec) -> list:
        """Every recipe's evaluation transforms: Resize(resize) + CenterCrop(size)."""
        from torchvision.transforms import v2

        return [v2.Resize(spec.eval_resize, antialias=True), v2.CenterCrop(spec.size)]

    def train_crop(self, image: torch.Tensor, spec: InputSpec, generator) -> torch.Tensor:
        """The device path's :meth:`train_transform` up to the input size, of one decoded
        3 x H x W image: float 3 x size x size (0..255). The rest: :meth:`augment_batch`."""
        return self.eval_crop(image, spec)

    def eval_crop(self, image: torch.Tensor, spec: InputSpec) -> torch.Tensor:
        """:meth:`eval_transform` on the device, of one decoded 3 x H x W image."""
        return resize_and_center_crop(image, spec.eval_resize, spec.size)

    def augment_batch(self, x: torch.Tensor, spec: InputSpec, generator) -> torch.Tensor:
        """The rest of the training transform, batch-wise, on :meth:`train_crop`'s images
        stacked and scaled to [0, 1]."""
        return x

    def worker_train(self, image: torch.Tensor, spec: InputSpec, generator, out: torch.Tensor) -> None:
        """The file path's per-image part of :meth:`train_transform`, in a DataLoader worker,
        of one decoded image, 4 x H x W uint8 channels-last (RGBX, :func:`~.batches.rgbx_pixels`),
        written into ``out``, 4 x size x size uint8 channels-last (a slot of the worker's
        batch). The rest: :meth:`augment_loaded`."""
        self.worker_eval(image, spec, out)

    def worker_eval(self, image: torch.Tensor, spec: InputSpec, out: torch.Tensor) -> None:
        """:meth:`eval_transform` in a worker, of one decoded 4 x H x W uint8 image (RGBX),
        into ``out``."""
        resize_and_center_crop(image, spec.eval_resize, spec.size, uint8=True, out=out)

    def augment_loaded(self, x: torch.Tensor, spec: InputSpec, generator) -> torch.Tensor:
        """The rest of the training transform, batch-wise on the job's device, of
        :meth:`worker_train`'s images as N x 3 x size x size uint8 (their RGB of RGBX): uint8,
        or float in [0, 1]."""
        return x

    def augment_preloaded(self, x: torch.Tensor, spec: InputSpec, generator) -> torch.Tensor:
        """The training augmentation, batch-wise, of preloaded N x 3 x size x size uint8 images."""
        return x


class CropFlip(Recipe):
    """``crop_flip`` (CIFAR's): zero-pad by ``pad``, crop back at a random offset, flip half."""

    name = "crop_flip"

    def train_transform(self, spec):
        from torchvision.transforms import v2

        return [v2.Resize(spec.size, antialias=True), v2.CenterCrop(spec.size),
                v2.RandomCrop(spec.size, padding=spec.pad), v2.RandomHorizontalFlip()]

    def train_crop(self, image, spec, generator):
        return resize_and_center_crop(image, spec.size, spec.size)

    def augment_batch(self, x, spec, generator):
        return _pad_crop_flip(x, spec, generator)

    def augment_preloaded(self, x, spec, generator):
        return _pad_crop_flip(x, spec, generator)

    def worker_train(self, image, spec, generator, out):
        resize_and_center_crop(image, spec.size, spec.size, uint8=True, out=out)

    def augment_loaded(self, x, spec, generator):
        return _pad_crop_flip(x, spec, generator)


class ImageNet(Recipe):
    """``imagenet``: RandomResizedCrop, flip half, ColorJitter(0.4, 0.4, 0.4)."""

    name = "imagenet"

    def train_transform(self, spec):
        from torchvision.transforms import v2

        return [v2.RandomResizedCrop(spec.size, antialias=True), v2.RandomHorizontalFlip(),
                v2.ColorJitter(JITTER, JITTER, JITTER)]

    def train_crop(self, image, spec, generator):
        top, left, height, width = random_resized_crop_box(*image.shape[-2:], generator)
        return resize(image[:, top:top + height, left:left + width], (spec.size, spec.size))

    def augment_batch(self, x, spec, generator):
        return flip_and_jitter(x, *draw_flip_and_jitter(len(x), generator))

    def worker_train(self, image, spec, generator, out):
        top, left, height, width = random_resized_crop_box(*image.shape[-2:], generator)
        crop = image[:, top:top + height, left:left + width]
        if torch.rand(1, generator=generator).item() < 0.5:
            # Flipped before the resize, which commutes with it: the flip's copy is the one
            # the resize would make of the crop (a strided view) anyway.
            crop = crop.flip(2)
        resize(crop, (spec.size, spec.size), uint8=True, out=out)

    def augment_loaded(self, x, spec, generator):
        # The jitter's parameters come from the job's generator, one set per image.
        return jitter(x, *draw_jitter(len(x), generator))

    def augment_preloaded(self, x, spec, generator):
        # Preloaded images are already at the input size, with no room for a resized crop:
        # they are padded, cropped and flipped as crop_flip's are.
        return _pad_crop_flip(x, spec, generator)


AUGMENTATIONS: dict[str, Recipe] = {recipe.name: recipe for recipe in (ImageNet(), CropFlip(), Recipe())}
"""The recipes ``input.augment`` may name, by name (the schema's enum; a test holds them equal)."""


# -- resizing on the device ----------------------------------------------------------------

def resize(image: torch.Tensor, size: tuple[int, int], uint8: bool = False,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear, antialiased resize of one C x H x W image to float C x size; ``uint8``: of
    a uint8 image on the CPU to uint8 (torch's vectorised uint8 kernel, rounded: a worker's),
    channels-last, written into ``out`` (C x size, channels-last) if given."""
    if not uint8:
        return torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True,
                                               align_corners=False)[0]
    # The crop copied channels-last first (a crop of a decoded H x W x C array is a strided
    # view of that layout): torch's vectorised uint8 kernel is faster on it, same bytes.
    x = image[None].contiguous(memory_format=torch.channels_last)
    if out is None:
        return torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    # interpolate's own operator, into ``out``: a worker's image then takes no fresh memory
    # and no copy into its batch (tests/test_augment.py holds the two equal).
    torch._C._nn._upsample_bilinear2d_aa(x, list(size), False, None, None, out=out[None])
    return out


def resize_and_center_crop(image: torch.Tensor, short: int, size: int, uint8: bool = False,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Resize(short) + CenterCrop(size) of one C x H x W image, as torchvision's (float C x
    size x size; ``uint8``: as :func:`resize`'s, copied into ``out`` if given)."""
    h, w = image.shape[-2:]
    # Resize(short)'s output size: the long side floored, computed in torchvision's order
    shape = (short, int(short * w / h)) if h < w else (int(short * h / w), short)
    resized = resize(image, shape, uint8, out=None if out is None else _resize_buffer(image.shape[0], shape))
    # CenterCrop's offsets (rounded, not floored), so eval inputs match the PIL path.
    top = int(round((resized.shape[1] - size) / 2))
    left = int(round((resized.shape[2] - size) / 2))
    crop = resized[:, top:top + size, left:left + size]
    return crop if out is None else out.copy_(crop)


_resized = threading.local()


def _resize_buffer(channels: int, shape: tuple[int, int]) -> torch.Tensor:
    """A uint8 channels x shape tensor, channels-last, in this thread's buffer for a whole
    resized image before its crop is copied out: grown as needed, not fresh memory for each
    image; the last one made is given again for an image of its size."""
    key = (channels, *shape)
    if getattr(_resized, "key", None) != key:
        count = channels * shape[0] * shape[1]
        if len(getattr(_resized, "buffer", ())) < count:
            _resized.buffer = torch.empty(count, dtype=torch.uint8)
        _resized.key, _resized.view = key, _resized.buffer[:count].view(*shape, channels).permute(2, 0, 1)
    return _resized.view


# -- the random draws, and the transforms they parameterise ---------------------------------

def random_resized_crop_box(h: int, w: int, generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """``(top, left, height, width)``: RandomResizedCrop's box of an h x w image, by
    torchvision's algorithm (``RandomResizedCrop.make_params``), drawn from ``generator``."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(4, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        cw, ch = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(draws[2] * (h - ch + 1)), int(draws[3] * (w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def draw_flip_and_jitter(n: int, generator, strength: float = JITTER):
    """``(flips, factors, orders)`` of n images: RandomHorizontalFlip's (half of them) and
    :func:`draw_jitter`'s."""
    flips = torch.rand(n, generator=generator) < 0.5
    return (flips, *draw_jitter(n, generator, strength))


def draw_jitter(n: int, generator, strength: float = JITTER):
    """``(factors, orders)`` of n images, ColorJitter's: a brightness, contrast and saturation
    factor each uniform in [1 - strength, 1 + strength], applied in a random order
    (``orders[i]``, a permutation of 0, 1, 2 as ``factors``' columns), as
    ``ColorJitter.make_params`` draws them."""
    factors = 1 + strength * (2 * torch.rand(n, 3, generator=generator) - 1)
    orders = torch.rand(n, 3, generator=generator).argsort(1)
    return factors, orders


def _gray(x: torch.Tensor) -> torch.Tensor:
    # PIL's "L" conversion (ITU-R 601-2), which the CPU path's ColorJitter of PIL images uses
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


# ColorJitter's three steps, in place on N x 3 x H x W images in [0, 1] (a copy the caller owns).

def _brightness(x: torch.Tensor, factor) -> torch.Tensor:
    return x.mul_(factor).clamp_(0, 1)  # a blend with black


def _contrast(x: torch.Tensor, factor) -> torch.Tensor:
    mean = _gray(x).mean((2, 3), keepdim=True)  # a blend with the image's mean gray
    return x.sub_(mean).mul_(factor).add_(mean).clamp_(0, 1)


def _saturation(x: torch.Tensor, factor) -> torch.Tensor:
    gray = _gray(x)  # a blend with the gray image
    return x.sub_(gray).mul_(factor).add_(gray).clamp_(0, 1)


_ADJUSTMENTS = (_brightness, _contrast, _saturation)  # ColorJitter's, as the columns of its factors


def flip_and_jitter(x: torch.Tensor, flips, factors, orders) -> torch.Tensor:
    """Flip images ``flips`` and jitter their colours (:func:`draw_flip_and_jitter`'s
    draws), batch-wise on N x 3 x H x W images in [0, 1]."""
    x = torch.where(flips.to(x.device)[:, None, None, None], x.flip(3), x)
    for step in range(orders.shape[1]):
        for which, adjust in enumerate(_ADJUSTMENTS):
            rows = torch.nonzero(orders[:, step] == which).flatten()  # on the CPU: no device sync
            if len(rows):
                on_device = rows.to(x.device)
                x[on_device] = adjust(x[on_device], factors[rows, which].to(x.device)[:, None, None, None])
    return x


def jitter(x: torch.Tensor, factors: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Jitter the colours of N x 3 x H x W images, uint8 or float in [0, 1], each image by its
    own :func:`draw_jitter` ``factors`` and ``orders`` (CPU tensors): float in [0, 1],
    channels-last; ``x`` is left as it is.

    :func:`flip_and_jitter`'s operations, each a blend ``x * f + base * (1 - f)`` whose base
    is black, the image's mean gray or its gray image, then clamped. On the CPU one image at
    a time (:func:`_jitter_images`), on one thread; elsewhere the whole batch at once
    (:func:`_jitter_batch`).
    """
    if x.device.type != "cpu":
        return _jitter_batch(x, factors, orders)
    with one_thread():
        return _jitter_images(x, factors, orders)


@contextlib.contextmanager
def one_thread():
    """torch's CPU operations on one thread meanwhile: operations on one image gain nothing
    from its threads, which wait on each other at every one while the loader's workers hold
    the other cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _as_unit(x: torch.Tensor) -> torch.Tensor:
    """A float copy of images ``x`` (uint8 or float in [0, 1]) in [0, 1], contiguous: each
    colour a plane, which the steps' per-channel reads of :func:`_gray` want."""
    part = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return part.div_(255) if x.dtype == torch.uint8 else part


def _jitter_images(x: torch.Tensor, factors: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """:func:`jitter` one image at a time, in place: its floats (0.6 MB at 224 px) stay in a
    core's L2 cache through every step, where a pass over a whole batch leaves it at each."""
    out = torch.empty(x.shape, dtype=torch.float32, memory_format=torch.channels_last)
    for i, (row, order) in enumerate(zip(factors.tolist(), orders.tolist())):
        image = _as_unit(x[i:i + 1])
        for which in order:
            _ADJUSTMENTS[which](image, row[which])
        out[i] = image[0]
    return out


def _jitter_batch(x: torch.Tensor, factors: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """:func:`jitter` of the whole batch in each operation: few kernels on a GPU, and no
    rows gathered and scattered (nor the device synchronisations that would take)."""
    # Per step and image: the factor, and whether the base is the mean gray, the gray image.
    steps = torch.stack([factors.gather(1, orders).T, (orders == 1).T.float(), (orders == 2).T.float()], 2)
    if x.device.type == "cuda":
        steps = steps.pin_memory()  # so that the copy below does not wait for the device's queue
    steps = steps.to(x.device, non_blocking=True)
    x = _as_unit(x)
    for step in steps:
        f, contrast, saturation = (step[:, k].view(-1, 1, 1, 1) for k in range(3))
        gray = _gray(x)
        base = torch.lerp(gray.mean((2, 3), keepdim=True) * contrast, gray, saturation)
        x.mul_(f).add_(base.mul_(1 - f)).clamp_(0, 1)
    return x.contiguous(memory_format=torch.channels_last)


def draw_crop_flip(n: int, pad: int, generator):
    """``(offsets, flips)`` of n images: RandomCrop's offsets (row, column) in a ``pad``-padded
    image, each uniform in 0..2 pad, and RandomHorizontalFlip's (half of them)."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def _pad_crop_flip(x: torch.Tensor, spec: InputSpec, generator) -> torch.Tensor:
    return crop_flip(x, spec.pad, *draw_crop_flip(len(x), spec.pad, generator))


def crop_flip(x: torch.Tensor, pad: int, offsets, flips) -> torch.Tensor:
    """Zero-pad by ``pad``, crop back at ``offsets`` and flip images ``flips``
    (:func:`draw_crop_flip`'s draws), batch-wise."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0, None] + torch.arange(h)).to(x.device)  # n x h
    cols = (offsets[:, 1, None] + torch.arange(w)).to(x.device)  # n x w
    cols = torch.where(flips.to(x.device)[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return out.permute(0, 3, 1, 2).contiguous()
