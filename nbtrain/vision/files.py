"""Finding and checking image files: class folders, label CSVs, unreadable files."""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import PIL
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

Item = tuple[Path, int]
SPLITS = ("train", "valid")


class BadImagesWarning(UserWarning):
    """Files in an image data set were skipped because they are not usable images."""


# ------------------------------------------------------------------- checks
_CHECK_THREADS = 4  # decoding releases the GIL: ~400 small photos in ~0.2 s on 2 cores
_CHECK_DRAFT = 32  # JPEGs are checked at 1/8 scale; every byte is still read and decoded


def _check_file(path: Path) -> str | None:
    """Return why ``path`` is unusable, or None when it is a readable image."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return f"unsupported type {suffix or '(no extension)'}"
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            img.draft("RGB", (_CHECK_DRAFT, _CHECK_DRAFT))
            img.load()
    except PIL.UnidentifiedImageError:
        return "not an image"
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error... on bad data
        return f"unreadable: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}"
    return None


def check_items(
    candidates: dict[str, list[Item]], root: Path
) -> tuple[dict[str, list[Item]], dict[Path, str]]:
    """Split each split's items into readable ones and ``{bad path: reason}``."""
    paths = [p for split in SPLITS for p, _ in candidates[split]]
    with ThreadPoolExecutor(_CHECK_THREADS) as pool:
        reasons = dict(zip(paths, pool.map(_check_file, paths), strict=True))
    items = {s: [(p, y) for p, y in candidates[s] if reasons[p] is None] for s in SPLITS}
    bad = {p: reason for p, reason in reasons.items() if reason is not None}
    if not any(items.values()):
        raise ValueError(f"no usable images in '{root}' ({len(bad)} files skipped as bad)")
    return items, bad


def warn_bad(bad: dict[Path, str], root: Path) -> None:
    """One warning listing the skipped files (the first 20) and why."""
    if not bad:
        return
    shown = [f"{_relative(p, root)} ({reason})" for p, reason in list(bad.items())[:20]]
    more = f"; and {len(bad) - 20} more (see .bad_files)" if len(bad) > 20 else ""
    warnings.warn(
        f"skipped {len(bad)} bad image file(s) in '{root}': {'; '.join(shown)}{more}",
        BadImagesWarning,
        stacklevel=3,
    )


# -------------------------------------------------------------- file system
def existing_dir(path: str | os.PathLike, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: '{folder}'")
    return folder


def find_valid_dir(root: Path, valid: str | None) -> Path:
    if valid is not None:
        return existing_dir(root / valid, "validation folder")
    found = [root / name for name in ("valid", "val") if (root / name).is_dir()]
    if not found:
        raise FileNotFoundError(
            f"no validation folder in '{root}': expected 'valid' or 'val' (or pass valid=...)"
        )
    if len(found) > 1:
        raise ValueError(f"both 'valid' and 'val' exist in '{root}'; pass valid='valid' or 'val'")
    return found[0]


def class_dirs(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"no class folders in '{folder}' (expected {folder}/<class>/<image>)")
    return names


def image_candidates(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, recursively, sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file()
    )


def read_label_csv(csv_path: Path) -> list[tuple[str, str]]:
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        lines = list(csv.reader(handle))
    rows: list[tuple[str, str]] = []
    for number, row in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"{csv_path}, line {number}: expected 'file,label', got {row!r}")
        rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise ValueError(f"no rows after the header in '{csv_path}'")
    repeated = sorted(name for name, n in Counter(name for name, _ in rows).items() if n > 1)
    if repeated:
        raise ValueError(f"files named more than once in '{csv_path}': {first_few(repeated)}")
    return rows


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if root in path.parents else str(path)


def first_few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


# --------------------------------------------------------------- validation
def _channel_triple(values, name: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3:
        raise ValueError(f"{name} must be 3 numbers (R, G, B), got {values!r}")
    return triple


def check_normalization(mean, std) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    triples = _channel_triple(mean, "mean"), _channel_triple(std, "std")
    if min(triples[1]) <= 0:
        raise ValueError(f"std must be positive, got {std!r}")
    return triples


def checked_items(items: Sequence[Item], n_classes: int, name: str) -> list[Item]:
    checked = [(Path(p), int(y)) for p, y in items]
    bad = [y for _, y in checked if not 0 <= y < n_classes]
    if bad:
        raise ValueError(f"{name} has labels outside 0..{n_classes - 1}: {sorted(set(bad))[:5]}")
    return checked
