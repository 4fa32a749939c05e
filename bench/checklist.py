"""The fast.ai checklist, by hand, through nbtrain's Python API, on an image folder.

    python bench/checklist.py [--data PATH] [--size 224] [--bs 32] [--seed 0]

Stages (lesson 1 of the 2018 course, "easy steps to train a world-class image
classifier"):

1. precompute=True (augmentation configured);
2. lr_find on the cached activations;
3. train the head on cached activations for 2 epochs;
4. augmentation on (precompute off), cycle_len=1;
5. unfreeze;
6. earlier groups 3x lower per group;
7. lr_find again (with those ratios);
8. SGDR with cycle_mult=2;
9. progressive resizing (lesson 2): one more cycle at a larger size, then TTA.

The head starts from the pretrained classifier's rows when the classes are ImageNet
classes (``head_init="auto"``: hymenoptera's ``ants`` and ``bees`` are), so step 1 already
reports the ImageNet classifier's accuracy; ``--head-init random`` starts it at random.

Once unfrozen, BatchNorm statistics stay fixed (``learn.bn_freeze()``): measured here,
one epoch of updating them from batches of 32 augmented photos cost 10 points of
accuracy before any weight changed.

Prints the validation accuracy and wall time after each stage; the last line is the
final accuracy (target on hymenoptera at 224 px: >= 98%).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from nbtrain import Learner, spread_lrs
from nbtrain.vision import ImageData

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("NBTRAIN_DATA", str(DEFAULT)))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--unfrozen-iters",
        type=int,
        default=40,
        help="lr_find steps once unfrozen (each is a full training step)",
    )
    ap.add_argument(
        "--unfrozen-cycles",
        type=int,
        default=2,
        help="SGDR cycles with cycle_mult=2 once unfrozen (2 = 1 + 2 epochs)",
    )
    ap.add_argument(
        "--final-size",
        type=int,
        default=288,
        help="progressive resizing: the last cycle's image size (0: skip)",
    )
    ap.add_argument("--head-init", default="auto", choices=("auto", "pretrained", "random"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # hymenoptera's GIF; precompute + augmentation (stage 1)

    t_start = time.perf_counter()
    data = ImageData.from_folder(args.data, size=args.size, bs=args.bs, seed=args.seed)
    learn = Learner.pretrained(data, precompute=True, head_init=args.head_init)
    print(
        f"data: {args.data}: {len(data.train_items)} train / {len(data.valid_items)} valid, "
        f"{args.size} px, batch {args.bs}; model {learn.model.arch} on {learn.device}; "
        f"head: {learn.model.head_init}"
    )
    rows = []

    def stage(name: str, t0: float) -> None:
        acc = learn.evaluate()["accuracy"]
        rows.append((name, acc, time.perf_counter() - t0))
        print(f"{len(rows)}. {name:48s} accuracy {acc:.4f}  {rows[-1][2]:7.1f} s", flush=True)

    t0 = time.perf_counter()
    learn.features()
    stage("precompute (build the activation cache)", t0)

    t0 = time.perf_counter()
    found = learn.lr_find(seed=args.seed)
    lr = found.suggestion
    print(
        f"   lr_find: {len(found.lrs)} steps ({found.stop_reason}); "
        + ", ".join(f"{k} {v:.1e}" for k, v in found.suggestions.items() if v)
        + f" -> lr {lr:.1e}"
    )
    stage("lr_find on cached activations", t0)

    t0 = time.perf_counter()
    learn.fit_cycles(lr, cycles=2, seed=args.seed)
    stage("head on cached activations, 2 epochs", t0)

    t0 = time.perf_counter()
    learn.precompute = False
    learn.fit_cycles(lr, cycles=2, cycle_len=1, seed=args.seed)
    stage("head with augmentation, cycle_len=1, 2 cycles", t0)

    t0 = time.perf_counter()
    learn.unfreeze()
    learn.bn_freeze()
    ratios = spread_lrs(1.0, learn.n_groups, factor=3)
    found = learn.lr_find(
        start=[1e-7 * r for r in ratios], iters=args.unfrozen_iters, seed=args.seed
    )
    # The unfrozen range test measures the whole network; the course's advice caps the
    # body's fine-tuning rate at a tenth of the head's: the lower of the two.
    lr_unfrozen = min(found.suggestion or lr / 10, lr / 10)
    rates = spread_lrs(lr_unfrozen, learn.n_groups, factor=3)
    print(
        "   lr_find (unfrozen): "
        + ", ".join(f"{k} {v:.1e}" for k, v in found.suggestions.items() if v)
        + " -> rates "
        + ", ".join(f"{r:.1e}" for r in rates)
    )
    stage("unfreeze, 3x lower per earlier group, lr_find", t0)

    t0 = time.perf_counter()
    learn.fit_cycles(rates, cycles=args.unfrozen_cycles, cycle_mult=2, seed=args.seed)
    stage(f"SGDR cycle_mult=2, {args.unfrozen_cycles} cycles", t0)

    if args.final_size:
        t0 = time.perf_counter()
        learn.set_size(args.final_size)
        learn.fit_cycles(rates, cycles=1, seed=args.seed)
        stage(f"progressive resizing: {args.final_size} px, 1 cycle", t0)

    tta = learn.evaluate(tta=True)["accuracy"]
    total = time.perf_counter() - t_start
    print(f"with TTA (6 views): accuracy {tta:.4f}; total wall time {total:.0f} s")
    print(f"final validation accuracy: {rows[-1][1]:.4f} (target >= 0.98)")


if __name__ == "__main__":
    main()
