"""Looking at the data as the model sees it: a grid of training images, after the
training transform (or the eval one), de-normalised, with their labels.

Plots are drawn on a ``matplotlib.figure.Figure`` (no pyplot state; matplotlib is imported
when a figure is made). Drawing the augmented images uses its own random stream
(``seed``), so looking never moves the training's random state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from nbtrain.core.checks import whole_number
from nbtrain.imaging import to_rgb

if TYPE_CHECKING:
    from nbtrain.vision.data import ImageData


def batch_images(
    data: ImageData, n: int = 16, *, augmented: bool = True, seed: int | None = None
) -> tuple[torch.Tensor, list[str], int]:
    """``n`` training images as the model sees them: ``(n, H, W, 3)`` floats in [0, 1]
    (de-normalised), their class names, and the seed that drew them (None: a new one)."""
    n = whole_number("n", n, minimum=1)
    if seed is None:  # a new draw each time, without touching any random state
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    seed = whole_number("seed", seed)
    transform = data.train_transform() if augmented else data.eval_transform()
    mean = torch.tensor(data.mean).view(3, 1, 1)
    std = torch.tensor(data.std).view(3, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(data.train_items), generator=generator)[:n].tolist()
    images, labels = [], []
    with torch.random.fork_rng(devices=[]):  # the transform draws from torch's RNG
        torch.manual_seed(seed)
        for index in picks:
            path, label = data.train_items[index]
            with Image.open(path) as img:
                x = transform(to_rgb(img))
            images.append((x * std + mean).clamp(0, 1).permute(1, 2, 0))
            labels.append(data.classes[label])
    return torch.stack(images), labels, seed


def image_grid(
    images: Sequence[Any], titles: Sequence[str], *, cols: int | None = None, title: str = ""
) -> Any:
    """A Figure with ``images`` (HWC arrays or tensors in [0, 1], PIL images, or paths) in
    a grid, each under its title."""
    from matplotlib.figure import Figure

    count = len(images)
    if count == 0:
        raise ValueError("no images to show")
    cols = cols or min(count, 4 if count <= 8 else 6)
    rows = (count + cols - 1) // cols
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows + (0.3 if title else 0)))
    for i, (image, text) in enumerate(zip(images, titles, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        if isinstance(image, str | Path):
            with Image.open(image) as img:
                ax.imshow(to_rgb(img))
        elif isinstance(image, torch.Tensor):
            ax.imshow(image.numpy())
        else:
            ax.imshow(image)
        ax.set_title(text, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def batch_figure(
    data: ImageData, n: int = 16, *, augmented: bool = True, seed: int | None = None
) -> Any:
    """:func:`batch_images` as a Figure (its title says which transform and seed)."""
    images, labels, seed = batch_images(data, n, augmented=augmented, seed=seed)
    how = "augmented" if augmented and data.augment else "eval transform"
    return image_grid(
        list(images), labels, title=f"{len(labels)} training images, {how}, seed {seed}"
    )
