"""The command-line main job: the fast.ai checklist on an image folder, offline by default.

    python -m nbtrain.demo                       # generated shapes data set, offline
    python -m nbtrain.demo --data PATH           # PATH/train/<class>/*, PATH/valid/<class>/*
    NBTRAIN_DATA=PATH python -m nbtrain.demo

Prints the planned schedules, the LR finder's suggestion, one line per epoch, and the
validation accuracy after each stage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from nbtrain.core.features import default_cache_dir
from nbtrain.core.learner import Learner
from nbtrain.core.schedules import spread_lrs
from nbtrain.core.state import TrainState


class EpochPrinter:
    """One line per epoch, for terminals and logs (listens to the fit loop's events)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_fit_start(self, state: TrainState) -> None:
        s = state.schedule
        cycles = " + ".join(str(e) for e in s.epochs_per_cycle)
        rates = ", ".join(f"{lr:.2e}" for lr in s.lrs)
        print(
            f"[{self.stage}] SGDR: {s.cycles} cycle(s) of {cycles} epoch(s) = {s.epochs} "
            f"epochs, {s.total_iters} iterations; max rate per group: {rates}",
            flush=True,
        )

    def on_epoch_end(self, state: TrainState) -> None:
        r = state.history[-1]
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
        valid = f"{r.valid_loss:.4f}" if r.valid_loss is not None else "-"
        print(
            f"  epoch {r.epoch + 1}/{state.epochs}  cycle {r.cycle + 1}  "
            f"train_loss {r.train_loss:.4f}  valid_loss {valid}  {metrics}  "
            f"({r.seconds:.1f} s)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m nbtrain.demo",
        description="Run the fast.ai checklist (precompute, lr_find, head, augment, "
        "unfreeze with differential rates, SGDR with cycle_mult=2) on an image folder.",
    )
    ap.add_argument(
        "--data",
        default=os.environ.get("NBTRAIN_DATA"),
        help="image folder with train/ and valid/ (or val/); default: a generated "
        "shapes data set (offline)",
    )
    ap.add_argument(
        "--size", type=int, default=None, help="image size in px (default 128; 224 for --data)"
    )
    ap.add_argument("--bs", type=int, default=32, help="batch size (default 32)")
    ap.add_argument(
        "--full",
        action="store_true",
        help="also unfreeze and train the whole network (slow on a CPU)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from nbtrain.vision import ImageData, make_shapes_dataset  # imports timm, PIL

    if args.data:
        root, size = Path(args.data), args.size or 224
    else:
        root = make_shapes_dataset(
            default_cache_dir() / "shapes",
            n_per_class=60,
            n_valid_per_class=30,
            size=96,
            seed=args.seed,
        )
        size = args.size or 128
        print(f"offline data: a generated shapes set in {root}")
    try:
        data = ImageData.from_folder(root, size=size, bs=args.bs, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"data: {data}")
    t_all = time.perf_counter()
    learn = Learner.pretrained(data, precompute=True)
    print(
        f"model: {learn.model.arch}, layer groups: "
        + ", ".join(f"{g.name} ({g.n_params:,} params)" for g in learn.groups)
    )
    print(f"untrained head: accuracy {learn.evaluate()['accuracy']:.4f}")

    def stage(name: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        acc = learn.evaluate()["accuracy"]
        print(f"== {name}: accuracy {acc:.4f}  ({time.perf_counter() - t0:.1f} s)", flush=True)

    # 1-2: precompute on, find the rate
    found = learn.lr_find(seed=args.seed)
    lr = found.suggestion or 1e-2
    print(
        f"lr_find: {len(found.lrs)} steps, stopped ({found.stop_reason}); suggestions: "
        + ", ".join(f"{k} {v:.2e}" for k, v in found.suggestions.items() if v)
        + f"; using {lr:.2e}"
    )
    # 3: head on cached activations
    stage(
        "head on cached activations",
        lambda: learn.fit_cycles(lr, cycles=2, seed=args.seed, listeners=[EpochPrinter("head")]),
    )
    # 4: augmentation, precompute off, cycle_len=1
    learn.precompute = False
    stage(
        "head with augmentation",
        lambda: learn.fit_cycles(
            lr, cycles=1, cycle_len=1, seed=args.seed, listeners=[EpochPrinter("augment")]
        ),
    )
    if args.full:
        # 5-8: unfreeze, differential rates, lr_find again, cycle_mult=2
        learn.unfreeze()
        found = learn.lr_find(start=spread_lrs(1e-7, 3), seed=args.seed)
        lr2 = min(found.suggestion or lr, lr) / 2
        rates = spread_lrs(lr2, learn.n_groups, factor=3)
        print(
            "lr_find (unfrozen): suggestion "
            f"{found.suggestion:.2e}; rates {', '.join(f'{r:.1e}' for r in rates)}"
        )
        stage(
            "unfrozen, SGDR cycle_mult=2",
            lambda: learn.fit_cycles(
                rates, cycles=2, cycle_mult=2, seed=args.seed, listeners=[EpochPrinter("unfrozen")]
            ),
        )
    final = learn.evaluate()
    path = learn.save("demo")
    print(
        f"final validation accuracy: {final['accuracy']:.4f} (loss {final['loss']:.4f}); "
        f"weights in {path}; total {time.perf_counter() - t_all:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
