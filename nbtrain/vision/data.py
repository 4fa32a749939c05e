"""Labelled images from folders or a CSV: checked once, transformed, served in batches."""

# Loading speed on the 2-core CPU machine (no GPU), 224 px, bs=32, the default 2 workers,
# best of alternating runs: ~450 images/s through `.train` (augmented) and ~570 through
# `.valid` on 500x375 photos (`make_photo_dataset`); per photo a worker spends ~1.1 ms on JPEG
# decode, 1.8 ms on the augmentation (1.1 ms for the eval transform) and 0.3 ms on collation.
# The frozen EfficientNet-Lite0 step takes ~105 images/s, so the model bounds an epoch; what
# the loader costs is the cores it takes from the model: hence workers at idle priority and
# started from a fork server (see `ImageData.idle_workers`, `ImageData.start_method`). Measured
# with `python bench/checklist.py --data photos:2000 --frozen-only`, which prints the frozen
# epoch beside the loader alone and the frozen step alone.

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from nbtrain.core.checks import whole_number
from nbtrain.core.stepper import default_device
from nbtrain.imaging import open_rgb, to_rgb
from nbtrain.vision.files import (
    IMAGE_EXTENSIONS,
    BadImagesWarning,
    Item,
    check_items,
    check_normalization,
    checked_items,
    class_dirs,
    existing_dir,
    find_valid_dir,
    first_few,
    image_candidates,
    read_label_csv,
    warn_bad,
)
from nbtrain.vision.shapes import make_shapes_dataset
from nbtrain.vision.transforms import (
    TTA_VIEWS,
    EvalTransform,
    TrainTransform,
    eval_transform,
    resize_size,
    train_draft_size,
    train_transform,
    tta_transform,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImagesWarning",
    "ImageData",
    "ImageDataset",
    "make_shapes_dataset",
]

SPLITS = ("train", "valid")


class ImageDataset(Dataset):
    """Items ``(path, label)`` read as RGB images and transformed to ``(CHW float tensor, label)``.

    Parameters
    ----------
    items : sequence of (Path, int)
        Image files and their class indices.
    transform : callable
        Applied to the PIL image; must return a CHW float tensor.
    draft_size : int, optional
        JPEGs are decoded at the smallest power-of-two reduction whose sides stay at least this
        large (PIL's draft mode), which makes big photos much cheaper to load.
    """

    def __init__(self, items: Sequence[Item], transform, *, draft_size: int | None = None):
        self.items = list(items)
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(path) as img:
            if self.draft_size:
                img.draft("RGB", (self.draft_size, self.draft_size))
            rgb = to_rgb(img)
        return self.transform(rgb).as_subclass(torch.Tensor), label


def _default_start_method() -> str | None:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None


def _idle_priority(_worker_id: int) -> None:
    """A DataLoader worker's start: run at idle CPU priority (see ``ImageData.idle_workers``)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        with contextlib.suppress(AttributeError, OSError):
            os.nice(19)


class ImageData:
    """Train and valid image sets with their transforms and DataLoaders.

    Build one with :meth:`from_folder` or :meth:`from_csv`. Every file is checked once, when the
    data is built: a file is used when its extension is one of ``.jpg .jpeg .png .bmp .webp .tif
    .tiff`` (any case) *and* PIL decodes it completely. Anything else found in a class folder or
    named in the CSV (a ``.gif``, an empty, truncated or non-image file) is skipped and reported
    in one :class:`BadImagesWarning`, and listed in :attr:`bad_files`. GIFs are refused on
    purpose: in scraped photo sets they are usually placeholders or animations (hymenoptera's
    ``train/ants/imageNotFound.gif`` is a "we're sorry, this image could not be found" card).
    Names starting with ``.`` (``.DS_Store``, ``.ipynb_checkpoints``) are ignored silently; class
    folders are searched recursively; files are kept in sorted order.

    The eval transform resizes the shorter side to ``round(size / 0.875)`` (224 -> 256),
    center-crops ``size`` and normalizes with ``mean`` and ``std``. With ``augment`` the train
    loader instead takes a random crop of 35-100% of the area resized to ``size``, flips it
    horizontally, rotates it by up to ±10° and jitters brightness and contrast by 0.2.

    Parameters
    ----------
    train_items, valid_items : sequence of (Path, int)
        Image files and class indices, already checked.
    classes : sequence of str
        Class names; a label is an index into it.
    path : path-like, optional
        The data set's root, used to make names in :meth:`file_signature` relative.
    size : int
        Side of the square images the loaders yield.
    bs : int
        Batch size of all three loaders.
    num_workers : int, optional
        DataLoader worker processes. ``None`` means ``min(2, CPUs)`` without CUDA and
        ``min(8, CPUs)`` with it. On a CPU the model is the bottleneck (a frozen EfficientNet-Lite0
        forward takes ~50-100 images/s at 224 px on 2 cores, two workers serve 220-400), and
        workers whose prefetch queue is full sleep; a GPU needs more workers to be kept busy.
        When the model trains on the CPU, workers run at idle priority
        (:attr:`idle_workers`); they are started by a fork server (:attr:`start_method`).
    augment : bool
        Augment the train loader; ``False`` uses the eval transform for training too.
    mean, std : sequence of 3 floats
        Per-channel normalization, matching the pretrained body (0.5 for EfficientNet-Lite0).
    seed : int
        Seeds the train loader's shuffling (and its workers' augmentation).
    bad_files : sequence of Path
        Files skipped while building, for :attr:`bad_files`.
    """

    def __init__(
        self,
        train_items: Sequence[Item],
        valid_items: Sequence[Item],
        classes: Sequence[str],
        *,
        path: str | os.PathLike | None = None,
        size: int = 224,
        bs: int = 64,
        num_workers: int | None = None,
        augment: bool = True,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        seed: int = 0,
        bad_files: Sequence[Path] = (),
    ):
        self.classes = [str(name) for name in classes]
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be non-empty and unique, got {list(classes)!r}")
        self.train_items = checked_items(train_items, len(self.classes), "train_items")
        self.valid_items = checked_items(valid_items, len(self.classes), "valid_items")
        if not self.train_items:
            raise ValueError("train_items is empty")
        self.path = Path(path) if path is not None else None
        self._size = whole_number("size", size, minimum=1)
        self._bs = whole_number("bs", bs, minimum=1)
        if num_workers is not None:
            num_workers = whole_number("num_workers", num_workers, minimum=0)
        self._num_workers = num_workers
        self._augment = bool(augment)
        self._mean, self._std = check_normalization(mean, std)
        self.seed = int(seed)
        self.bad_files = [Path(p) for p in bad_files]
        # How to read this data again (set by from_folder / from_csv): what a checkpoint
        # keeps so that Learner.resume(path) can rebuild a learner after a kernel restart.
        self.source: dict[str, Any] | None = None
        self._idle_workers = default_device().type == "cpu"
        self._start_method = _default_start_method()
        self._loaders: dict[str, DataLoader] = {}

    # ----------------------------------------------------------------- building
    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike,
        *,
        size: int = 224,
        bs: int = 64,
        train: str = "train",
        valid: str | None = None,
        num_workers: int | None = None,
        augment: bool = True,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        seed: int = 0,
        valid_pct: float = 0.2,
    ) -> ImageData:
        """Read ``path/train/<class>/*`` and ``path/valid/<class>/*``; or, when ``path``
        has no ``train`` folder, ``path/<class>/*`` split into training and validation
        images (``valid_pct`` of each class, drawn with ``seed``: the same split every time).

        Parameters
        ----------
        path : path-like
            The data set's root folder.
        train : str
            Name of the training folder under ``path``.
        valid : str, optional
            Name of the validation folder; ``None`` accepts ``valid`` or ``val``.
        size, bs, num_workers, augment, mean, std, seed
            As for :class:`ImageData`.

        Returns
        -------
        ImageData
            Classes are the train folder's sub-folder names, sorted; the valid folder's classes
            must be among them.

        Raises
        ------
        FileNotFoundError
            ``path`` or one of its split folders is missing.
        ValueError
            No class folders, an empty class folder, or no usable image at all.
        """
        root = existing_dir(path, "data folder")
        if not (root / train).is_dir() and valid is None and train == "train":
            return cls._from_class_folders(
                root, valid_pct, seed=seed, size=size, bs=bs, num_workers=num_workers,
                augment=augment, mean=mean, std=std,
            )  # fmt: skip
        train_dir = existing_dir(root / train, "training folder")
        valid_dir = find_valid_dir(root, valid)
        classes = class_dirs(train_dir)
        valid_classes = class_dirs(valid_dir)
        unknown = sorted(set(valid_classes) - set(classes))
        if unknown:
            raise ValueError(f"classes in '{valid_dir}' but not in '{train_dir}': {unknown}")
        folders = [("train", train_dir / name, classes.index(name)) for name in classes]
        folders += [("valid", valid_dir / name, classes.index(name)) for name in valid_classes]
        candidates: dict[str, list[Item]] = {split: [] for split in SPLITS}
        files = {}
        for split, class_dir, label in folders:
            files[class_dir] = image_candidates(class_dir)
            if not files[class_dir]:
                raise ValueError(f"empty class folder: '{class_dir}'")
            candidates[split] += [(p, label) for p in files[class_dir]]
        items, bad = check_items(candidates, root)
        for class_dir, found in files.items():
            if bad.keys() >= set(found):
                raise ValueError(f"class folder '{class_dir}' has no usable images (all skipped)")
        warn_bad(bad, root)
        data = cls(
            items["train"],
            items["valid"],
            classes,
            path=root,
            size=size,
            bs=bs,
            num_workers=num_workers,
            augment=augment,
            mean=mean,
            std=std,
            seed=seed,
            bad_files=list(bad),
        )
        data.source = {
            "from": "folder",
            "path": str(root.resolve()),
            "train": train,
            "valid": valid,
            "seed": seed,
        }
        return data

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        *,
        csv: str = "labels.csv",
        folder: str = "images",
        valid_pct: float = 0.2,
        seed: int = 0,
        size: int = 224,
        bs: int = 64,
        num_workers: int | None = None,
        augment: bool = True,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> ImageData:
        """Read ``path/csv`` (header, then ``file,label`` rows) naming files in ``path/folder``.

        Parameters
        ----------
        csv : str
            The CSV file under ``path``; file names are exact names relative to ``folder``.
        folder : str
            The image folder under ``path``.
        valid_pct : float
            Fraction of rows (at least one) held out for validation, strictly between 0 and 1.
        seed : int
            Seeds the split (a private generator: the same seed gives the same split whatever
            the global RNG state) and the train loader's shuffling.
        size, bs, num_workers, augment, mean, std
            As for :class:`ImageData`.

        Raises
        ------
        FileNotFoundError
            ``path``, the CSV, the folder, or files the CSV names are missing.
        ValueError
            A malformed or empty CSV, a bad ``valid_pct``, or no usable image at all.
        """
        if not 0 < valid_pct < 1:
            raise ValueError(f"valid_pct must be between 0 and 1 (exclusive), got {valid_pct!r}")
        root = existing_dir(path, "data folder")
        csv_path = root / csv
        if not csv_path.is_file():
            raise FileNotFoundError(f"label file not found: '{csv_path}'")
        image_dir = existing_dir(root / folder, "image folder")
        rows = sorted(read_label_csv(csv_path))
        missing = [name for name, _ in rows if not (image_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(rows)} files named in '{csv_path}' are missing from "
                f"'{image_dir}': {first_few(missing)}"
            )
        classes = sorted({label for _, label in rows})
        n_valid = max(1, round(len(rows) * valid_pct))
        if n_valid >= len(rows):
            raise ValueError(f"valid_pct={valid_pct} leaves no training rows of {len(rows)}")
        is_valid = np.zeros(len(rows), dtype=bool)
        is_valid[np.random.default_rng(seed).permutation(len(rows))[:n_valid]] = True
        candidates: dict[str, list[Item]] = {split: [] for split in SPLITS}
        for (name, label), held_out in zip(rows, is_valid, strict=True):
            split = "valid" if held_out else "train"
            candidates[split].append((image_dir / name, classes.index(label)))
        items, bad = check_items(candidates, root)
        if not items["train"]:
            raise ValueError(f"no usable training images in '{image_dir}'")
        warn_bad(bad, root)
        data = cls(
            items["train"],
            items["valid"],
            classes,
            path=root,
            size=size,
            bs=bs,
            num_workers=num_workers,
            augment=augment,
            mean=mean,
            std=std,
            seed=seed,
            bad_files=list(bad),
        )
        data.source = {
            "from": "csv",
            "path": str(root.resolve()),
            "csv": csv,
            "folder": folder,
            "valid_pct": valid_pct,
            "seed": seed,
        }
        return data

    @classmethod
    def _from_class_folders(
        cls, root: Path, valid_pct: float, *, seed: int, **settings: Any
    ) -> ImageData:
        """``root/<class>/*`` split per class: ``valid_pct`` of each (at least one image
        where a class has two or more) to validation, drawn with ``seed``."""
        if not 0 < valid_pct < 1:
            raise ValueError(f"valid_pct must be between 0 and 1 (exclusive), got {valid_pct!r}")
        classes = class_dirs(root)
        candidates: dict[str, list[Item]] = {split: [] for split in SPLITS}
        rng = np.random.default_rng(seed)
        for label, name in enumerate(classes):
            files = image_candidates(root / name)
            if not files:
                raise ValueError(f"empty class folder: '{root / name}'")
            n_valid = min(max(1, round(len(files) * valid_pct)), len(files) - 1)
            held = set(rng.permutation(len(files))[:n_valid].tolist()) if len(files) > 1 else set()
            for i, file in enumerate(files):
                candidates["valid" if i in held else "train"].append((file, label))
        items, bad = check_items(candidates, root)
        if not items["train"]:
            raise ValueError(f"no usable training images in '{root}'")
        warn_bad(bad, root)
        data = cls(items["train"], items["valid"], classes, path=root, seed=seed,
                   bad_files=list(bad), **settings)  # fmt: skip
        data.source = {"from": "folder", "path": str(root.resolve()), "seed": seed,
                       "valid_pct": valid_pct}  # fmt: skip
        return data

    @classmethod
    def from_path(cls, path: str | os.PathLike, **settings: Any) -> ImageData:
        """Whatever ``path`` is: a folder with ``train/`` and ``valid/`` (or ``val/``), a
        folder of class folders to split (``valid_pct``, ``seed``), or a CSV of file names
        and labels (the names relative to the CSV's folder, or to its ``images/``)."""
        path = Path(path).expanduser()
        if path.suffix.lower() == ".csv":
            if not path.is_file():
                raise FileNotFoundError(f"label file not found: '{path}'")
            rows = read_label_csv(path)
            first = rows[0][0] if rows else ""
            folder = "." if (path.parent / first).is_file() else "images"
            csv_settings = {k: v for k, v in settings.items() if k not in ("train", "valid")}
            return cls.from_csv(path.parent, csv=path.name, folder=folder, **csv_settings)
        return cls.from_folder(path, **settings)

    @classmethod
    def from_source(cls, source: dict[str, Any], **settings: Any) -> ImageData:
        """The data :attr:`source` describes, read again (``settings``: ``size``,
        ``bs``, ``num_workers``, ``augment``...). FileNotFoundError, in one line, when
        its folder is not there any more."""
        args = {k: v for k, v in source.items() if k not in ("from", "path")}
        if source.get("from") == "folder":
            return cls.from_folder(source["path"], **args, **settings)
        if source.get("from") == "csv":
            return cls.from_csv(source["path"], **args, **settings)
        raise ValueError(f"cannot read data again from {source!r}")

    # ---------------------------------------------------------------- settings
    @property
    def c(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def size(self) -> int:
        """Side of the square images; setting it rebuilds the loaders."""
        return self._size

    @size.setter
    def size(self, size: int) -> None:
        self.set_size(size)

    @property
    def bs(self) -> int:
        """Batch size; setting it rebuilds the loaders."""
        return self._bs

    @bs.setter
    def bs(self, bs: int) -> None:
        self._bs = whole_number("bs", bs, minimum=1)
        self._loaders.clear()

    @property
    def augment(self) -> bool:
        """Whether the train loader augments; setting it rebuilds the loaders."""
        return self._augment

    @augment.setter
    def augment(self, augment: bool) -> None:
        self._augment = bool(augment)
        self._loaders.clear()

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel normalization mean; see :meth:`set_normalization`."""
        return self._mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel normalization std; see :meth:`set_normalization`."""
        return self._std

    @property
    def num_workers(self) -> int:
        """DataLoader worker processes in use (the resolved default when built with ``None``)."""
        if self._num_workers is not None:
            return self._num_workers
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return min(8 if torch.cuda.is_available() else 2, cpus or 1)

    @property
    def idle_workers(self) -> bool:
        """Whether loader workers run at idle CPU priority (Linux ``SCHED_IDLE``, else nice
        19); default: when the model trains on the CPU. Setting it rebuilds the loaders.

        On a CPU the model's forward pass keeps every core busy with torch's threads, and a
        worker at normal priority that takes a core stalls them all at the next barrier.
        At idle priority workers decode when a core would idle. Measured on 2 cores, body
        frozen, 224 px, photos of 500x375: training batches went from 0.73 to 0.80 of the
        slower of loader and model measured alone, validation 0.75 to 0.80. The price: a
        program that never sleeps, at normal priority, on the same cores starves them;
        set this to False then.
        """
        return self._idle_workers

    @idle_workers.setter
    def idle_workers(self, idle: bool) -> None:
        self._idle_workers = bool(idle)
        self._loaders.clear()

    @property
    def start_method(self) -> str | None:
        """How loader workers start: ``"forkserver"`` where the platform has it, else its
        default (None). Setting it (e.g. to ``"fork"``) rebuilds the loaders.

        A worker forked from the training process shares its memory copy-on-write, so the
        next epoch copies, page by page, all the memory the model writes: measured, 176,000
        page faults and 47% of the main process's CPU time in the kernel, 7.0 s instead of
        3.7 s for 320 photos at 224 px with the body frozen, after every fit with a seed
        (which restarts the workers) and after the first validation pass. Workers forked
        from the small fork server leave that memory alone; the server starts once per
        process (~3 s). As with ``"spawn"``, a *script* must then guard its top level with
        ``if __name__ == "__main__":`` (notebooks need nothing), or use ``"fork"``.
        """
        return self._start_method

    @start_method.setter
    def start_method(self, method: str | None) -> None:
        if method is not None and method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method must be None or one of "
                f"{multiprocessing.get_all_start_methods()}, got {method!r}"
            )
        self._start_method = method
        self._loaders.clear()

    def set_size(self, size: int) -> ImageData:
        """Change the image size in place (progressive resizing); returns ``self``."""
        self._size = whole_number("size", size, minimum=1)
        self._loaders.clear()
        return self

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> ImageData:
        """Normalize as a pretrained body expects (its ``BodySpec.mean``/``std``), in place;
        rebuilds the loaders and changes :meth:`eval_signature`. Returns ``self``."""
        self._mean, self._std = check_normalization(mean, std)
        self._loaders.clear()
        return self

    def with_size(self, size: int) -> ImageData:
        """A copy at another size, sharing everything else (files are not checked again)."""
        copy = ImageData(
            self.train_items,
            self.valid_items,
            self.classes,
            path=self.path,
            size=size,
            bs=self.bs,
            num_workers=self._num_workers,
            augment=self.augment,
            mean=self.mean,
            std=self.std,
            seed=self.seed,
            bad_files=self.bad_files,
        )
        copy.idle_workers, copy.start_method = self.idle_workers, self.start_method
        return copy

    # ------------------------------------------------------------------- items
    @property
    def train_files(self) -> list[Path]:
        return [p for p, _ in self.train_items]

    @property
    def train_labels(self) -> list[int]:
        return [y for _, y in self.train_items]

    @property
    def valid_files(self) -> list[Path]:
        return [p for p, _ in self.valid_items]

    @property
    def valid_labels(self) -> list[int]:
        return [y for _, y in self.valid_items]

    # --------------------------------------------------- transforms, datasets
    def eval_transform(self) -> EvalTransform:
        """Resize to ``round(size / 0.875)``, center-crop ``size``, to float, normalize."""
        return eval_transform(self.size, self.mean, self.std)

    def train_transform(self) -> EvalTransform | TrainTransform:
        """The augmenting transform, or the eval transform when ``augment`` is off."""
        if not self.augment:
            return self.eval_transform()
        return train_transform(self.size, self.mean, self.std)

    @property
    def train_ds(self) -> ImageDataset:
        """Training images through :meth:`train_transform`."""
        draft = train_draft_size(self.size) if self.augment else resize_size(self.size)
        return ImageDataset(self.train_items, self.train_transform(), draft_size=draft)

    @property
    def valid_ds(self) -> ImageDataset:
        """Validation images through :meth:`eval_transform`."""
        draft = resize_size(self.size)
        return ImageDataset(self.valid_items, self.eval_transform(), draft_size=draft)

    @property
    def fix_ds(self) -> ImageDataset:
        """Training images through :meth:`eval_transform` (for precomputing activations)."""
        draft = resize_size(self.size)
        return ImageDataset(self.train_items, self.eval_transform(), draft_size=draft)

    def tta_loaders(self) -> list[DataLoader]:
        """Validation loaders for test-time augmentation, one per view in ``TTA_VIEWS``:
        center, mirrored center, and the four corner crops, each in file order."""
        draft = resize_size(self.size)
        return [
            self._plain_loader(
                ImageDataset(
                    self.valid_items,
                    tta_transform(self.size, self.mean, self.std, v),
                    draft_size=draft,
                )
            )
            for v in TTA_VIEWS
        ]

    def show_batch(self, n: int = 16, *, augmented: bool = True, seed: int | None = None) -> Any:
        """A grid of ``n`` training images as the model sees them (after the training
        transform, or the eval one with ``augmented=False``; de-normalised), with their
        labels: a matplotlib Figure. Each call draws anew unless ``seed`` is given; the
        training's random state is left alone. ``%show_batch learn`` shows it with a
        "draw again" button."""
        from nbtrain.vision.look import batch_figure

        return batch_figure(self, n, augmented=augmented, seed=seed)

    def inference_spec(self) -> dict[str, Any]:
        """The eval transform as plain values, for an export (:mod:`nbtrain.imaging`
        applies it again at inference)."""
        return {
            "size": self.size,
            "resize": resize_size(self.size),
            "crop": "center",
            "interpolation": "bilinear, antialiased",
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def prepare(self, item) -> torch.Tensor:
        """One image (a path, a PIL image, or an HWC uint8 array) as the model's input: RGB,
        eval transform, ``(3, size, size)`` float tensor."""
        rgb = open_rgb(item)
        return self.eval_transform()(rgb).as_subclass(torch.Tensor)

    def reseed(self, seed: int) -> ImageData:
        """Restart shuffling and augmentation from ``seed`` (the loaders are rebuilt, so
        their workers' random streams restart too). Returns ``self``."""
        self.seed = int(seed)
        self._loaders.clear()
        return self

    def __getstate__(self) -> dict:
        """Pickled (for a distributed fit's ranks) without its loaders, whose workers
        belong to this process; the training loader's shuffling goes on where it was."""
        values = dict(self.__dict__)
        train = self._loaders.get("train")
        values["_loaders"] = {}
        values["_train_generator"] = train.generator.get_state() if train is not None else None
        return values

    def __setstate__(self, values: dict) -> None:
        generator = values.pop("_train_generator", None)
        self.__dict__.update(values)
        if generator is not None:
            self.train.generator.set_state(generator)

    # ----------------------------------------------------------------- loaders
    @property
    def train(self) -> DataLoader:
        """Shuffled, augmented training batches ``(x, y)``: ``x`` is ``(bs, 3, size, size)``.

        The last batch is kept, unless it would hold one image: BatchNorm cannot train on it.
        """
        return self._loader("train")

    @property
    def valid(self) -> DataLoader:
        """Validation batches in file order, eval transform."""
        return self._loader("valid")

    @property
    def fix(self) -> DataLoader:
        """Training images in file order through the eval transform (for precompute)."""
        return self._loader("fix")

    def _loader(self, name: str) -> DataLoader:
        if name not in self._loaders:
            self._loaders[name] = self._make_loader(name)
        return self._loaders[name]

    def _plain_loader(self, dataset: Dataset) -> DataLoader:
        """An ordered, non-persistent loader (for one-off passes such as TTA views)."""
        return DataLoader(
            dataset,
            batch_size=self.bs,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            **self._worker_options(),
        )

    def _worker_options(self) -> dict:
        if self.num_workers == 0:
            return {}
        context = None
        if self.start_method is not None:
            context = multiprocessing.get_context(self.start_method)
            if self.start_method == "forkserver":  # the server imports torch and us once
                context.set_forkserver_preload(["nbtrain.vision.data"])
        return {
            "worker_init_fn": _idle_priority if self.idle_workers else None,
            "multiprocessing_context": context,
        }

    def _make_loader(self, name: str) -> DataLoader:
        dataset = {"train": self.train_ds, "valid": self.valid_ds, "fix": self.fix_ds}[name]
        workers = self.num_workers
        shuffle = name == "train"
        return DataLoader(
            dataset,
            batch_size=self.bs,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) % self.bs == 1 and len(dataset) > 1,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            **self._worker_options(),
        )

    # -------------------------------------------------------------- signatures
    def eval_signature(self) -> str:
        """A key that changes whenever eval-transformed pixels could change (for caches)."""
        return (
            f"eval-v1 size={self.size} resize={resize_size(self.size)} center-crop "
            f"bilinear-antialias jpeg-draft rgb mean={list(self.mean)} std={list(self.std)} "
            f"torchvision={torchvision.__version__} pillow={PIL.__version__}"
        )

    def file_signature(self, split: str) -> str:
        """SHA-256 of a split's classes, file names (relative to :attr:`path`), sizes, mtimes and
        labels, so that adding, removing, relabelling or touching a file changes it."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        digest = hashlib.sha256(repr(self.classes).encode())
        for file, label in self.train_items if split == "train" else self.valid_items:
            stat = file.stat()
            name = file.relative_to(self.path) if self.path and self.path in file.parents else file
            digest.update(
                f"{name.as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode()
            )
        return digest.hexdigest()

    def __repr__(self) -> str:
        return (
            f"ImageData(classes={self.classes!r}, train={len(self.train_items)}, "
            f"valid={len(self.valid_items)}, size={self.size}, bs={self.bs}, "
            f"augment={self.augment}, num_workers={self.num_workers}, "
            f"bad_files={len(self.bad_files)})"
        )
