"""A fine-grained image set for the benchmarks, built from a PyPI package: ELPV.

    python bench/elpv_data.py OUT [--per-class TRAIN,VALID] [--seed 0]

The wheel of ``elpv-dataset`` 1.0.0.post1 ships the 2,624 images of the ELPV benchmark
(Deitsch et al., "A Benchmark for Visual Identification of Defective Solar Cells in
Electroluminescence Imagery"): 300x300 greyscale electroluminescence photographs of single
solar cells, labelled by experts with a defect probability of 0, 1/3, 2/3 or 1. The four
levels are the classes; they differ only in small cracks and dark patches on otherwise
alike cells, and the middle two are hard to tell apart. Data licence CC-BY-NC-SA-4.0 (the
wheel's metadata): the images are never committed, this script builds them where you say.

The wheel comes through ``pip download`` (a package registry, not a hub). Each class is
split 80/20 with a seeded shuffle (the package has no split) into
``OUT/train/<class>/*.jpg`` and ``OUT/valid/<class>/*.jpg``, saved as RGB JPEGs (quality 95).
``--per-class 100,40`` keeps at most that many per class and split (for a checklist that
fits a benchmark's time; classes smaller than that stay whole). About 20 s.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

PACKAGE = "elpv-dataset==1.0.0.post1"
CLASSES = {
    "0.0": "p000_functional",
    "0.3333333333333333": "p033_possibly_defective",
    "0.6666666666666666": "p067_likely_defective",
    "1.0": "p100_defective",
}
VALID_SHARE = 0.2


def download_wheel(folder: Path) -> Path:
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:"]
    subprocess.run([*pip, PACKAGE, "-d", str(folder)], check=True)
    wheels = sorted(folder.glob("elpv_dataset-*.whl"))
    if not wheels:
        sys.exit(f"pip download of {PACKAGE} gave no wheel")
    return wheels[0]


def labels(wheel: zipfile.ZipFile) -> dict[str, list[str]]:
    """Class name -> the image paths in the wheel (``images/cell0001.png``), sorted."""
    by_class: dict[str, list[str]] = {}
    for line in wheel.read("elpv_dataset/data/labels.csv").decode().splitlines():
        parts = line.split()
        if len(parts) == 3:
            path, probability, cell_type = parts
            by_class.setdefault(CLASSES[probability], []).append(f"{path}|{cell_type}")
    return {name: sorted(items) for name, items in by_class.items()}


def build(out: Path, wheel_path: Path, *, seed: int, caps: tuple[int, int] | None) -> None:
    for split in ("train", "valid"):
        shutil.rmtree(out / split, ignore_errors=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        for name, items in sorted(labels(wheel).items()):
            random.Random(f"{seed}:{name}").shuffle(items)
            n_valid = max(1, round(len(items) * VALID_SHARE))
            splits = {"valid": items[:n_valid], "train": items[n_valid:]}
            if caps is not None:
                splits = {"train": splits["train"][: caps[0]], "valid": splits["valid"][: caps[1]]}
            for split, chosen in splits.items():
                folder = out / split / name
                folder.mkdir(parents=True)
                for item in chosen:
                    path, cell_type = item.split("|")
                    with Image.open(io.BytesIO(wheel.read(f"elpv_dataset/data/{path}"))) as im:
                        name_out = f"{Path(path).stem}_{cell_type}.jpg"
                        im.convert("RGB").save(folder / name_out, quality=95)
            print(f"{name:26s} train {len(splits['train']):5d}  valid {len(splits['valid']):4d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", help="TRAIN,VALID: at most this many per class and split")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    caps = None
    if args.per_class:
        train, _, valid = args.per_class.partition(",")
        caps = (int(train), int(valid))
    with tempfile.TemporaryDirectory() as tmp:
        build(args.out, download_wheel(Path(tmp)), seed=args.seed, caps=caps)
    print(f"-> {args.out.resolve()}")


if __name__ == "__main__":
    main()
