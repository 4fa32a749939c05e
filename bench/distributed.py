"""One process against N: images per second of the same fit with ``procs=N``.

    python bench/distributed.py [--data FOLDER] [--size 160] [--bs 32] [--epochs 2]
                                [--procs 1,2] [--unfrozen]

EfficientNet-Lite0 on a photo folder (hymenoptera by default), batch ``bs`` per process,
body frozen (``--unfrozen``: the whole network), no precompute, no augmentation (the same
pixels for every contender). Each run is a fresh learner; ``procs=1`` trains in this
process with every core, ``procs=N`` on N worker processes sharing the cores (CPU: gloo,
``cores / N`` threads each) or one GPU each (CUDA: NCCL).

For each: the seconds of the last epoch (rank 0's clock: training and validation, after
the first epoch paid for start-up), training images per second over it, the start-up
(spawning the workers, sending the learner, the first epoch's extra), the whole wall time
with its kernel-time share, and, for N > 1, the scaling efficiency:
``images/s(N) / (N x images/s(1))`` (the target on GPUs: >= 0.9 per added GPU at a batch
that fills the device).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from cputime import fmt, timed

REPO = Path(__file__).resolve().parent.parent
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("NBTRAIN_DATA", HYMENOPTERA)))
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--procs", default=None, help="comma-separated (default: 1,2 or 1..GPUs)")
    ap.add_argument("--unfrozen", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no image folder at {args.data}; give one with --data")
    gpus = torch.cuda.device_count()
    counts = (
        [int(n) for n in args.procs.split(",")]
        if args.procs
        else list(range(1, gpus + 1)) if gpus > 1 else [1, 2]
    )  # fmt: skip
    from nbtrain import Learner, Stage
    from nbtrain.vision import ImageData

    warnings.simplefilter("ignore")
    device = "cuda" if gpus else "cpu"
    what = "unfrozen" if args.unfrozen else "frozen body"
    print(
        f"{args.data.name}, {args.size} px, batch {args.bs} per process, {args.epochs} epochs, "
        f"{what}, {device}, {os.cpu_count()} cores"
    )
    base = None
    for n in counts:
        data = ImageData.from_folder(args.data, size=args.size, bs=args.bs, augment=False, seed=0)
        learn = Learner.pretrained(data, head_init="random", path=tempfile.mkdtemp())
        learn.checkpoint_dir = False
        if args.unfrozen:
            learn.unfreeze()
        stage = Stage(1e-3, cycles=args.epochs, seed=0)
        with timed() as t:
            learn.fit_stages([stage], procs=n)
        last = learn.history[-1].seconds
        images = len(data.train_items) // (args.bs * n) * args.bs * n  # whole global batches
        rate = images / last
        base = rate if n == 1 else base
        startup = t.wall - sum(r.seconds for r in learn.history)
        scaling = f", scaling {rate / (n * base):.2f}" if n > 1 and base else ""
        print(f"procs={n}: last epoch {last:.1f} s, {rate:.1f} train images/s{scaling}; "
              f"start-up {startup:.1f} s; whole fit {fmt(t)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
