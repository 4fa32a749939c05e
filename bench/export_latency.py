"""An exported model against the learner it came from: one image, and batches of 64.

EfficientNet-Lite0 at 224 px on the hymenoptera photos (or ``--data``): ``learn.export()``
is loaded with ``nbtrain.load_model`` and timed beside ``learn.predict`` (one image: the
median of ``--repeats`` calls, file decoding and transform included) and beside
``learn.get_preds`` on a loader of the same images (batches of 64: images per second, the
model's forward alone, inputs prepared beforehand for both). Every time is printed with its
kernel-time share.

    python bench/export_latency.py [--data FOLDER] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from cputime import fmt, timed

REPO = Path(__file__).resolve().parent.parent
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("NBTRAIN_DATA", HYMENOPTERA)))
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no image folder at {args.data}; give one with --data")
    from nbtrain import Learner, load_model
    from nbtrain.vision import ImageData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the GIF in the photos, the head's ImageNet rows
        data = ImageData.from_folder(args.data, size=224, bs=64, augment=False, seed=0)
        learn = Learner.pretrained(data, seed=0)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {len(data.valid_files)} validation images"
    )
    path = Path(tempfile.mkdtemp()) / "export.pt2"
    with timed() as t:
        learn.export(path)
    print(f"export: {fmt(t)}, {path.stat().st_size / 1e6:.1f} MB")
    with timed() as t:
        model = load_model(path)
    print(f"load_model: {fmt(t)}")

    file = data.valid_files[0]
    model.predict(file), learn.predict(file)  # warm-up
    for name, fn in (
        ("export", lambda: model.predict(file)),
        ("learn", lambda: learn.predict(file)),
    ):
        with timed() as t:
            seconds = median_seconds(fn, args.repeats)
        print(
            f"one image, {name:7s}: {seconds * 1e3:7.1f} ms median of {args.repeats} "
            f"({fmt(t)} in all)"
        )

    batch = torch.stack([data.prepare(f) for f in data.valid_files[:64]])
    loader = [(batch, torch.zeros(len(batch), dtype=torch.long))]
    model.probabilities(batch), learn.get_preds(loader)  # warm-up
    rates = {}
    for name, fn in (
        ("export", lambda: model.probabilities(batch)),
        ("learn", lambda: learn.get_preds(loader)),
    ):
        with timed() as t:
            seconds = median_seconds(fn, max(3, args.repeats // 4))
        rates[name] = len(batch) / seconds
        print(f"batch of {len(batch)}, {name:7s}: {rates[name]:7.1f} images/s ({fmt(t)} in all)")
    print(f"export / learn, batch throughput: {rates['export'] / rates['learn']:.3f}")


if __name__ == "__main__":
    main()
