"""The checklist's head on cached activations: two one-epoch cycles against training to
convergence (``patience``), side by side, for several seeds.

EfficientNet-Lite0 at 224 px (or ``--arch``/``--size``), a head started at random, the
range test's valley rate; each seed trains both ways from the same start. Prints the
epochs, the seconds (with the kernel-time share), the validation loss and the accuracy.

    python bench/head_convergence.py [--data FOLDER] [--seeds 3] [--patience 3] [--cap 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

from cputime import fmt, timed

REPO = Path(__file__).resolve().parent.parent
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("NBTRAIN_DATA", HYMENOPTERA)))
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--cap", type=int, default=50)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no image folder at {args.data}; give one with --data")
    from nbtrain import Learner
    from nbtrain.core import Stage
    from nbtrain.core.features import FeatureCache
    from nbtrain.vision import ImageData

    warnings.simplefilter("ignore")  # the GIF in the photos; precompute's note
    data = ImageData.from_folder(args.data, size=args.size, bs=32, seed=0)
    cache = FeatureCache(tempfile.mkdtemp())
    print(f"{args.arch} at {args.size} px on {args.data.name}: {len(data.train_items)} + "
          f"{len(data.valid_items)} images")  # fmt: skip
    ways = {
        "2 one-epoch cycles": lambda lr, seed: Stage(lr, cycles=2, seed=seed),
        f"patience={args.patience}, at most {args.cap}": lambda lr, seed: Stage(
            lr, cycles=args.cap, patience=args.patience, seed=seed
        ),
    }
    for seed in range(args.seeds):
        for name, stage in ways.items():
            learn = Learner.pretrained(
                data, args.arch, precompute=True, head_init="random", seed=seed,
                path=tempfile.mkdtemp(),
            )  # fmt: skip
            learn.checkpoint_dir = False
            learn.feature_cache = cache
            learn.features()  # built once, then from memory: not in the times below
            lr = learn.lr_find(seed=seed).suggestion
            with timed() as t:
                state = learn.fit_stages([stage(lr, seed)])[0]
            scores = learn.evaluate()
            print(
                f"seed {seed}, {name:24s}: lr {lr:.1e}, {len(state.history):2d} epochs in "
                f"{fmt(t)}, valid loss {scores['loss']:.4f}, accuracy {scores['accuracy']:.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
