"""Where the new head starts: the pretrained classifier's rows against a random head.

On an image folder whose classes are ImageNet classes (default ../shared/data/hymenoptera:
``ants`` -> 310 'ant', ``bees`` -> 309 'bee'), with the offline EfficientNet-Lite0 body frozen
and precompute on, for each seed and peak rate: the validation accuracy before training, after
``--epochs`` SGDR epochs on the cached activations at ``--size``, and of that same head on
features of ``--eval-size`` images (a larger size at test time; the head does not change).

    python bench/head_init.py [--data PATH] [--seeds 3] [--epochs 3] [--lrs 3e-3,1e-2,3e-2]

The seed moves the random head's initial weights, dropout and the batch order; the
pretrained rows are the same on every seed. The bench's wall time is printed with its
kernel-time share (system over user + system CPU time, loader workers included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings
from pathlib import Path

from nbtrain import Learner
from nbtrain.vision import ImageData

from cputime import fmt, timed

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("NBTRAIN_DATA", str(DEFAULT)))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--eval-size", type=int, default=288)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lrs", default="3e-3,1e-2,3e-2")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # hymenoptera's GIF
    with timed() as total:
        run(args)
    print(f"bench wall time {fmt(total, '.0f')}")


def run(args) -> None:
    lrs = [float(x) for x in args.lrs.split(",")]
    data = ImageData.from_folder(args.data, size=args.size, bs=args.bs)
    print(
        f"data: {args.data}: {len(data.train_items)} train / {len(data.valid_items)} valid, "
        f"{args.size} px (eval also at {args.eval_size} px), batch {args.bs}, "
        f"{args.epochs} epochs on cached activations"
    )
    print(
        f"{'head':10s} {'lr':>7s} {'seed':>4s} {'before':>7s} {'trained':>8s} "
        f"{f'@{args.eval_size}px':>8s}"
    )
    summary: dict[tuple[str, float], list[float]] = {}
    for head_init in ("pretrained", "random"):
        for lr in lrs:
            for seed in range(args.seeds):
                data.set_size(args.size)
                learn = Learner.pretrained(data, precompute=True, head_init=head_init, seed=seed)
                before = learn.evaluate()["accuracy"]
                learn.fit_cycles(lr, cycles=args.epochs, seed=seed)
                trained = learn.evaluate()["accuracy"]
                learn.set_size(args.eval_size)  # the cache follows the size
                larger = learn.evaluate()["accuracy"]
                summary.setdefault((head_init, lr), []).append(trained)
                print(
                    f"{head_init:10s} {lr:7.0e} {seed:4d} {before:7.4f} {trained:8.4f} "
                    f"{larger:8.4f}",
                    flush=True,
                )
    print(f"summary (accuracy after training at {args.size} px, min / median over seeds):")
    for (head_init, lr), accs in summary.items():
        print(f"  {head_init:10s} lr {lr:.0e}: {min(accs):.4f} / {statistics.median(accs):.4f}")


if __name__ == "__main__":
    main()
