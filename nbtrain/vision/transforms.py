"""Image transforms: eval (resize + center crop), training augmentation, TTA views.

The eval and training transforms call PIL directly, doing what torchvision's v2
``Resize``, ``CenterCrop``, ``RandomResizedCrop``, ``RandomHorizontalFlip``,
``RandomRotation``, ``ColorJitter``, ``ToImage``, ``ToDtype`` and ``Normalize`` do on a PIL
image, without their per-call dispatch: on a 2-core CPU the loader workers take their time
from the model's forward pass, and the dispatch was a third of their work (per 500x375
photo, one core: training 2.98 -> 1.81 ms, eval 1.73 -> 1.06 ms, plus ~1.1 ms of JPEG
decode). The eval output is bit-for-bit the v2 pipeline's (a test checks it), so cached
activations keyed by ``eval_signature`` stay valid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageEnhance
from torchvision.transforms import v2

from nbtrain.imaging import EvalTransform, Normalize, resize_size

TRAIN_MIN_SCALE = 0.35  # smallest RandomResizedCrop area, as a fraction of the image
TRAIN_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect ratios
TRAIN_DEGREES = 10.0
TRAIN_JITTER = 0.2  # brightness and contrast factors in [0.8, 1.2]


class TrainTransform:
    """A random crop of 35-100% of the area (aspect 3/4-4/3) resized to ``size``, a
    horizontal flip half the time, a rotation by up to ±10° (corners filled with the mean
    colour, so they normalize to zeros), brightness and contrast jitter of 0.2 in random
    order, then normalization. Random numbers come from torch's generator, which
    DataLoader seeds per worker."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size = size
        self.fill = tuple(round(255 * m) for m in mean)
        self.normalize = Normalize(mean, std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        left, top, width, height = _random_crop_box(*img.size)
        box = (left, top, left + width, top + height)
        img = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if _uniform(0, 1) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        angle = _uniform(-TRAIN_DEGREES, TRAIN_DEGREES)
        img = img.rotate(angle, Image.Resampling.BILINEAR, fillcolor=self.fill)
        factors = [_uniform(1 - TRAIN_JITTER, 1 + TRAIN_JITTER) for _ in range(2)]
        for i in torch.randperm(2).tolist():
            enhance = ImageEnhance.Brightness if i == 0 else ImageEnhance.Contrast
            img = enhance(img).enhance(factors[i])
        return self.normalize(img)

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, scale=({TRAIN_MIN_SCALE}, 1.0))"


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> EvalTransform:
    """Resize the shorter side to ``round(size / 0.875)``, center-crop ``size``, normalize."""
    return EvalTransform(size, mean, std)


def train_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> TrainTransform:
    """Random crop of 35-100% of the area resized to ``size``, flip, rotate ±10°, jitter 0.2."""
    return TrainTransform(size, mean, std)


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high))


def _random_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` as torchvision's RandomResizedCrop.get_params picks it:
    ten tries at a random area and aspect, then the largest central crop in range."""
    area = width * height
    log_ratio = (math.log(TRAIN_RATIO[0]), math.log(TRAIN_RATIO[1]))
    for _ in range(10):
        target = area * _uniform(TRAIN_MIN_SCALE, 1.0)
        aspect = math.exp(_uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)))
            left = int(torch.randint(0, width - w + 1, size=(1,)))
            return left, top, w, h
    ratio = width / height
    if ratio < TRAIN_RATIO[0]:
        w, h = width, round(width / TRAIN_RATIO[0])
    elif ratio > TRAIN_RATIO[1]:
        w, h = round(height * TRAIN_RATIO[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


TTA_VIEWS = ("center", "flip", "top-left", "top-right", "bottom-left", "bottom-right")


class _TTACrop:
    """One deterministic test-time view: resize the shorter side as the eval transform does,
    then the center crop (plain or mirrored) or one corner crop. A class, not a lambda, so
    DataLoader workers can pickle it."""

    def __init__(self, size: int, view: str):
        if view not in TTA_VIEWS:
            raise ValueError(f"TTA view must be one of {TTA_VIEWS}, got {view!r}")
        self.size, self.view = size, view

    def __call__(self, img):
        img = v2.functional.resize(img, resize_size(self.size), antialias=True)
        if self.view in ("center", "flip"):
            img = v2.functional.center_crop(img, [self.size, self.size])
            return v2.functional.horizontal_flip(img) if self.view == "flip" else img
        corners = v2.functional.five_crop(img, [self.size, self.size])[:4]
        return corners[TTA_VIEWS.index(self.view) - 2]


def tta_transform(size: int, mean: Sequence[float], std: Sequence[float], view: str) -> v2.Compose:
    """The eval transform with the crop of one test-time view (see ``TTA_VIEWS``)."""
    return v2.Compose([_TTACrop(size, view), *_to_normalized_tensor(mean, std)])


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]


def train_draft_size(size: int) -> int:
    # The smallest crop is sqrt(0.35 * 3/4) ~ 0.51 of a side; keep it at least `size` px.
    return 2 * size
