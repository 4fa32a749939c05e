"""Image transforms: eval (resize + center crop), training augmentation, TTA views."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

CROP_FRACTION = 0.875  # eval resizes the shorter side to size / 0.875 (224 -> 256), as ImageNet
TRAIN_MIN_SCALE = 0.35  # smallest RandomResizedCrop area, as a fraction of the image


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize the shorter side to ``round(size / 0.875)``, center-crop ``size``, normalize."""
    return v2.Compose(
        [
            v2.Resize(_resize_size(size), antialias=True),
            v2.CenterCrop(size),
            *_to_normalized_tensor(mean, std),
        ]
    )


def train_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Random crop of 35-100% of the area resized to ``size``, flip, rotate ±10°, jitter 0.2."""
    # Rotated-in corners get the mean colour, so they become zeros after normalization.
    fill = [round(255 * m) for m in mean]
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(TRAIN_MIN_SCALE, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(10, interpolation=v2.InterpolationMode.BILINEAR, fill=fill),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            *_to_normalized_tensor(mean, std),
        ]
    )


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
        img = v2.functional.resize(img, _resize_size(self.size), antialias=True)
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


def _resize_size(size: int) -> int:
    return round(size / CROP_FRACTION)


def _train_draft_size(size: int) -> int:
    # The smallest crop is sqrt(0.35 * 3/4) ~ 0.51 of a side; keep it at least `size` px.
    return 2 * size
