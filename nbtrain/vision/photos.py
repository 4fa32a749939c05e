"""A generated photo-sized image-folder data set: JPEGs like real photos, of any size, cached.

The shapes set (:mod:`nbtrain.vision.shapes`) is tiny PNGs; scale effects (JPEG decode of
500x375 photos, loader workers, memory per epoch) only show with files of the size users
train on. :func:`make_photo_dataset` writes such files once and keeps them in nbtrain's
cache folder, keyed by its arguments, so tests and benchmarks reuse them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nbtrain.core.checks import is_whole, whole_number
from nbtrain.core.features import default_cache_dir

SPLITS = ("train", "valid")
TEXTURES = ("stripes", "spots", "checks", "rings", "waves", "grid")
VERSION = "make_photo_dataset v1"
MARKER = "photos.txt"
_GRAIN = 1024  # side of the shared film-grain tile; each image crops it at a random offset


def make_photo_dataset(
    path: str | os.PathLike | None = None,
    *,
    n_train: int = 2000,
    n_valid: int = 2000,
    classes: int = 2,
    size: tuple[int, int] = (500, 375),
    seed: int = 0,
) -> Path:
    """Write (once) an image-folder data set of photo-sized JPEGs with learnable classes.

    Each image is a ``size`` JPEG (quality 75-90, like the dogs-vs-cats photos, ~500x375 px)
    of a smooth colour field with clutter and film grain, showing one large textured object
    and a few plain distractors. The class is the object's texture (``stripes``, ``spots``,
    ``checks``, ``rings``, ``waves``, ``grid``; past six classes the textures repeat with a
    class-specific hue range); colours, scale, position and rotation are random, so a
    pretrained body separates the classes without them being trivial. Image ``i`` of a class
    and split depends only on ``(seed, split, class, i)``. About 5 ms per image on one core
    (4,000 images of 500x375 in 19 s, ~44 KB each).

    Parameters
    ----------
    path : path-like, optional
        Root to write ``train/<class>/*.jpg`` and ``valid/<class>/*.jpg`` into. Default: a
        folder named by the arguments under ``default_cache_dir()/datasets``, so a second
        call with the same arguments returns at once. An explicit ``path`` must be missing,
        empty, or a set written earlier by this function (which is replaced if it differs).
    n_train, n_valid : int
        Training and validation images in all, spread evenly over the classes (the first
        classes get one more when it does not divide).
    classes : int
        Number of classes (at least 2).
    size : (int, int)
        Width and height of every image in pixels (each at least 32).
    seed : int
        Seed of the drawing.

    Returns
    -------
    Path
        The root, ready for :meth:`ImageData.from_folder`.
    """
    n_train = whole_number("n_train", n_train, minimum=1)
    n_valid = whole_number("n_valid", n_valid, minimum=1)
    classes = whole_number("classes", classes, minimum=2)
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(is_whole(s) and s >= 32 for s in size)
    ):
        raise ValueError(f"size must be (width, height), each an int >= 32, got {size!r}")
    width, height = int(size[0]), int(size[1])
    params = f"{VERSION} {n_train} {n_valid} {int(classes)} {width}x{height} {int(seed)}\n"
    if path is None:
        key = hashlib.sha256(params.encode()).hexdigest()[:16]
        root = default_cache_dir() / "datasets" / f"photos-{width}x{height}-{key}"
    else:
        root = Path(path).expanduser()
    marker = root / MARKER
    if marker.is_file() and marker.read_text() == params:
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise ValueError(f"'{root}' is not empty and was not written by make_photo_dataset")
    names = class_names(int(classes))
    # Written into a sibling folder and renamed into place: an interrupted run leaves no
    # half-written set behind the marker.
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        grain = _grain_tile(int(seed))
        for s, (split, total) in enumerate(((SPLITS[0], n_train), (SPLITS[1], n_valid))):
            for c, name in enumerate(names):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(total // len(names) + (c < total % len(names))):
                    rng = np.random.default_rng([int(seed), s, c, i])
                    img = draw_photo(c, width, height, rng, grain)
                    quality = int(rng.integers(75, 91))
                    img.save(folder / f"{name}_{i:05d}.jpg", quality=quality)
        (tmp / MARKER).write_text(params)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def class_names(classes: int) -> list[str]:
    """``stripes``, ``spots``, ... and, past six, ``stripes_1``, ``spots_1``, ..."""
    return [
        TEXTURES[c % len(TEXTURES)] + (f"_{c // len(TEXTURES)}" if c >= len(TEXTURES) else "")
        for c in range(classes)
    ]


def draw_photo(
    label: int, width: int, height: int, rng: np.random.Generator, grain: np.ndarray
) -> Image.Image:
    """One image of class ``label``: background, distractors, the textured object, grain."""
    img = _background(width, height, rng)
    draw = ImageDraw.Draw(img)
    short = min(width, height)
    for _ in range(int(rng.integers(1, 4))):  # plain shapes: objects without the texture
        r = rng.uniform(0.05, 0.15) * short
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        box = [cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r * rng.uniform(0.5, 1.5)]
        draw.ellipse(box, fill=_colour(rng))
    _paste_object(img, label, rng)
    if height > len(grain) or width > len(grain[0]):  # bigger than the tile: repeat it
        grain = np.tile(grain, (-(-height // len(grain)), -(-width // len(grain[0])), 1))
    y0 = int(rng.integers(0, len(grain) - height + 1))
    x0 = int(rng.integers(0, len(grain[0]) - width + 1))
    noise = grain[y0 : y0 + height, x0 : x0 + width]
    pixels = np.asarray(img, dtype=np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def _background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    # A smooth colour field (a few random colours, upsampled bicubically), like a scene out
    # of focus, with large dim rectangles for furniture and walls.
    field = rng.integers(30, 226, (int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3))
    img = Image.fromarray(field.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * width)
        y0, y1 = sorted(rng.uniform(-0.2, 1.2, 2) * height)
        draw.rectangle([x0, y0, x1, y1], fill=_colour(rng, dim=True))
    return img


def _paste_object(img: Image.Image, label: int, rng: np.random.Generator) -> None:
    # The class's texture inside a random ellipse 40-80% of the short side across.
    width, height = img.size
    rx, ry = (max(8, int(r)) for r in rng.uniform(0.2, 0.4, 2) * min(width, height))
    cx = int(rng.uniform(rx * 0.6, max(rx * 0.6 + 1, width - rx * 0.6)))
    cy = int(rng.uniform(ry * 0.6, max(ry * 0.6 + 1, height - ry * 0.6)))
    box = (cx - rx, cy - ry, cx + rx, cy + ry)
    mask = Image.new("L", (2 * rx, 2 * ry), 0)
    ImageDraw.Draw(mask).ellipse([0, 0, 2 * rx - 1, 2 * ry - 1], fill=255)
    img.paste(_texture(label, 2 * rx, 2 * ry, rng), box, mask)


def _texture(label: int, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    kind = TEXTURES[label % len(TEXTURES)]
    period = rng.uniform(10, 26)
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    if kind == "stripes":
        on = np.sin(2 * np.pi * u / period) > 0
    elif kind == "spots":
        du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        on = du * du + dv * dv < 0.09
    elif kind == "checks":
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    elif kind == "rings":
        r = np.hypot(x - width * rng.uniform(0.3, 0.7), y - height * rng.uniform(0.3, 0.7))
        on = np.sin(2 * np.pi * r / period) > 0
    elif kind == "waves":
        bend = 0.35 * period * np.sin(np.pi * v / period)
        on = np.sin(2 * np.pi * (u + bend) / period) > 0
    else:  # grid: thin lines both ways
        on = ((u / period) % 1 < 0.22) | ((v / period) % 1 < 0.22)
    hue_shift = (label // len(TEXTURES)) * 0.37  # repeated textures: another hue range
    a, b = _colour(rng, hue_shift=hue_shift), _colour(rng, hue_shift=hue_shift)
    while sum(abs(i - j) for i, j in zip(a, b, strict=True)) < 120:  # keep the texture visible
        b = _colour(rng, hue_shift=hue_shift)
    pixels = np.where(on[..., None], np.array(a, np.uint8), np.array(b, np.uint8))
    return Image.fromarray(pixels)


def _colour(
    rng: np.random.Generator, *, dim: bool = False, hue_shift: float = 0.0
) -> tuple[int, int, int]:
    rgb: np.ndarray
    if hue_shift:
        base = (np.cos(2 * np.pi * (hue_shift + np.array([0, 1 / 3, 2 / 3]))) + 1) * 100
        rgb = np.clip(base + rng.integers(-50, 51, 3), 0, 255)
    else:
        rgb = rng.integers(0, 256, 3)
    if dim:
        rgb = 40 + rgb * 0.6
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def _grain_tile(seed: int) -> np.ndarray:
    # Gaussian film grain (sigma 8 levels), drawn once per set: a per-image draw at 500x375
    # would cost 5-7 ms, twice the rest of the image.
    rng = np.random.default_rng([seed, 7919])
    return np.clip(rng.normal(0, 8, (_GRAIN, _GRAIN, 3)), -127, 127).astype(np.int16)
