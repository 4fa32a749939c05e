"""Tiny image folders drawn on the fly, and the hymenoptera photos when they are present."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("cats", "dogs", "owls")


def write_image(path: Path, *, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """A small random RGB image; the format follows the suffix."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_folder(
    root: Path,
    *,
    classes: Sequence[str] = CLASSES,
    n_train: int = 5,
    n_valid: int = 2,
    train: str = "train",
    valid: str = "valid",
) -> Path:
    """``root/train/<class>/<class>_<i>.jpg`` and ``root/<valid>/<class>/...``."""
    for s, (split, n) in enumerate(((train, n_train), (valid, n_valid))):
        for c, name in enumerate(classes):
            for i in range(n):
                write_image(root / split / name / f"{name}_{i}.jpg", seed=10_000 * s + 100 * c + i)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes x (5 train + 2 valid) JPEGs of 40x30 px."""
    return write_folder(tmp_path / "data")


@pytest.fixture
def folder_factory(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(**kwargs) -> Path:
        return write_folder(tmp_path / f"data{next(counter)}", **kwargs)

    return make


@pytest.fixture
def csv_folder(tmp_path: Path) -> Path:
    """``labels.csv`` naming 20 PNGs in ``images/``, labels a, b (alternating)."""
    root = tmp_path / "csvdata"
    rows = ["name,label"]
    for i in range(20):
        write_image(root / "images" / f"img{i:02d}.png", seed=i)
        rows.append(f"img{i:02d}.png,{'ab'[i % 2]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The hymenoptera ants/bees photos (train 245 incl. one GIF, val 153)."""
    default = REPO.parent / "shared" / "data" / "hymenoptera"
    path = Path(os.environ.get("NBTRAIN_HYMENOPTERA", default))
    if not (path / "val").is_dir():
        pytest.skip(f"hymenoptera photos not found at {path}; set NBTRAIN_HYMENOPTERA")
    return path
