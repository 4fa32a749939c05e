"""The command-line main job: the fast.ai checklist on an image folder, offline by default.

    python -m nbtrain.demo                       # generated shapes data set, offline
    python -m nbtrain.demo --data PATH           # PATH/train/<class>/*, PATH/valid/<class>/*
    NBTRAIN_DATA=PATH python -m nbtrain.demo

Runs :class:`nbtrain.recipes.Checklist`, the checklist notebook's recipe: steps 1-4
(the head) by default, all eight with ``--full``. Prints the range tests' suggestions,
each stage's schedule, one line per epoch and the final validation accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from nbtrain.core.features import default_cache_dir
from nbtrain.core.learner import Learner
from nbtrain.core.state import TrainState
from nbtrain.recipes import Checklist, larger_size


class EpochPrinter:
    """One line per epoch, for terminals and logs (listens to the fit loop's events)."""

    def on_fit_start(self, state: TrainState) -> None:
        s = state.schedule
        where = f"stage {state.stage + 1}/{len(state.plan)}" if state.plan else "fit"
        patience = state.plan.stages[state.stage].patience if state.plan else None
        cycles = " + ".join(str(e) for e in s.epochs_per_cycle)
        rates = ", ".join(f"{lr:.2e}" for lr in s.lrs)
        length = (
            f"up to {s.cycles} one-epoch cycle(s), until the validation loss has not fallen "
            f"for {patience} epochs"
            if patience is not None
            else f"{s.cycles} cycle(s) of {cycles} epoch(s) = {s.epochs} epochs, "
            f"{s.total_iters} iterations"
        )
        print(f"[{where}] SGDR: {length}; max rate per group: {rates}", flush=True)

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

    def on_fit_end(self, state: TrainState) -> None:
        print(f"  {state.status}{': ' + state.message if state.message else ''}", flush=True)


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
    learn = Learner.pretrained(data, precompute=True, seed=args.seed)
    print(
        f"model: {learn.model.arch}, layer groups: "
        + ", ".join(f"{g.name} ({g.n_params:,} params)" for g in learn.groups)
    )
    print(f"untrained head: accuracy {learn.evaluate()['accuracy']:.4f}")
    recipe = Checklist(final_size=larger_size(size) if args.full else None, seed=args.seed)
    try:
        run = recipe.run(
            learn,
            unfreeze=args.full,
            listeners=[EpochPrinter()],
            report=lambda line: print(line, flush=True),
        )
    except ValueError as e:  # e.g. a range test without a suggestion
        print(f"error: {e}", file=sys.stderr)
        return 1
    final = learn.evaluate()
    path = learn.save("demo")
    print(
        f"final validation accuracy: {final['accuracy']:.4f} (loss {final['loss']:.4f}) "
        f"after {len(run.states)} stages; weights in {path}; "
        f"total {time.perf_counter() - t_all:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
