"""What a trained classifier needs to see an image as it saw its validation images:
RGB, the shorter side resized to ``size / 0.875`` (bilinear, antialiased), a centre crop,
normalisation. PIL, numpy and torch only, so that an exported model's
:class:`~nbtrain.predict.Predictor` runs without timm, torchvision's models or IPython;
:mod:`nbtrain.vision` builds its data on the same code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

CROP_FRACTION = 0.875  # eval resizes the shorter side to size / 0.875 (224 -> 256), as ImageNet


class EvalTransform:
    """Resize the shorter side to ``round(size / 0.875)`` (bilinear, antialiased),
    center-crop ``size``, and return a normalized ``(3, size, size)`` float tensor."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size = size
        self.normalize = Normalize(mean, std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        width, height = img.size
        short = resize_size(self.size)
        # torchvision's rounding: the longer side is truncated, the crop offset rounded.
        if width <= height:
            new = (short, int(short * height / width))
        else:
            new = (int(short * width / height), short)
        if new != img.size:
            img = img.resize(new, Image.Resampling.BILINEAR)
        left = round((new[0] - self.size) / 2.0)
        top = round((new[1] - self.size) / 2.0)
        return self.normalize(img.crop((left, top, left + self.size, top + self.size)))

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize={resize_size(self.size)})"


class Normalize:
    """PIL RGB image -> CHW float tensor ``(x / 255 - mean) / std``: v2's ToImage,
    ToDtype(scale=True) and Normalize, operation for operation (so bit for bit)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        return pixels.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)


def resize_size(size: int) -> int:
    return round(size / CROP_FRACTION)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` in RGB (palette images with transparency go through RGBA, quietly)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def open_rgb(item: Any) -> Image.Image:
    """One image as RGB: a path, a PIL image, or an HWC uint8 array; FileNotFoundError or
    ValueError, in one line, for anything else."""
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}")
        with Image.open(path) as img:
            return to_rgb(img)
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        return to_rgb(Image.fromarray(item))
    raise ValueError(f"expected an image path, PIL image or array, got {type(item).__name__}")
