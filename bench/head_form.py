"""Head form x body x optimizer, measured: the linear head against fastai's mlp head, on
EfficientNet-Lite0/1/2, with SGD (momentum 0.9) or AdamW, for several seeds.

    python bench/head_form.py [--data FOLDER ...] [--bodies lite0,lite1,lite2]
                              [--heads linear,mlp] [--opts sgd,adamw] [--seeds 3]
                              [--checklist] [--markdown FILE]

Each row starts from a fresh pretrained learner at the body's own size (224, 240, 260 px),
batch 32, precompute on. ``linear`` starts from the pretrained classifier's rows where the
classes are ImageNet classes (``head_init="auto"``), ``linear-random`` always at random,
``mlp`` always at random (it has no pretrained rows).

- Without ``--checklist``: the checklist's step 2-3 alone: the range test on cached
  activations, then the head trained on them to convergence (patience 3). Seconds.
- With ``--checklist``: the whole checklist (:class:`nbtrain.recipes.Checklist`, as the
  notebook runs it: head to convergence, 2 augmented epochs, unfreeze, 3x lower per earlier
  group, lr_find, SGDR 1 + 2 + 4 epochs, one epoch at 9/7 the size), then TTA.

The activation cache is built once per data, body and pooling (linear: average; mlp:
average and max) and shared by the rows that need it; its seconds are printed apart and
added to the wall time of the first row that used it. Each row prints its accuracy, epochs,
wall time with the kernel-time share (``resource.getrusage``); each configuration prints
the mean and spread (min-max) over seeds. ``--markdown FILE`` appends the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cputime import fmt, timed

REPO = Path(__file__).resolve().parent.parent
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"
BODIES = {"lite0": "tf_efficientnet_lite0", "lite1": "tf_efficientnet_lite1",
          "lite2": "tf_efficientnet_lite2"}  # fmt: skip


@dataclass
class Config:
    data: Path
    body: str
    head: str
    opt: str
    accuracies: list[float] = field(default_factory=list)
    tta: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

    def row(self, checklist: bool) -> str:
        acc = self.accuracies
        spread = f"{min(acc):.1%}-{max(acc):.1%}" if len(acc) > 1 else "-"
        tta = f"{statistics.mean(self.tta):.1%}" if self.tta else "-"
        what = "checklist" if checklist else "head to convergence"
        return (
            f"| {self.data.name} | {self.body} | {self.head} | {self.opt} | {what} | "
            f"{statistics.mean(acc):.1%} | {spread} | {tta} | {statistics.mean(self.epochs):.1f} | "
            f"{statistics.mean(self.walls):.1f} | {len(acc)} |"
        )


HEADER = (
    "| data | body | head | optimizer | run | accuracy (mean) | spread (min-max) | TTA | "
    "head epochs | wall s (mean) | seeds |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("NBTRAIN_DATA", str(HYMENOPTERA))
    ap.add_argument("--data", type=Path, nargs="+", default=[Path(default)])
    ap.add_argument("--bodies", default="lite0,lite1,lite2")
    ap.add_argument("--heads", default="linear,mlp")
    ap.add_argument("--opts", default="sgd,adamw")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--checklist", action="store_true", help="the whole checklist per row")
    ap.add_argument("--markdown", type=Path, help="append the summary table to this file")
    args = ap.parse_args()
    for folder in args.data:
        if not folder.is_dir():
            sys.exit(f"no image folder at {folder}; give one with --data")
    bodies = [b.strip() for b in args.bodies.split(",")]
    unknown = [b for b in bodies if b not in BODIES]
    if unknown:
        sys.exit(f"unknown bodies {unknown}; choose from {', '.join(BODIES)}")
    from nbtrain.core.features import FeatureCache

    warnings.simplefilter("ignore")  # the GIF in the photos; precompute's note in step 1
    configs: list[Config] = []
    for folder in args.data:
        for body in bodies:
            caches: dict[str, Cache] = {}
            for head in args.heads.split(","):
                for opt in args.opts.split(","):
                    config = Config(folder, body, head, opt)
                    configs.append(config)
                    for seed in range(args.first_seed, args.first_seed + args.seeds):
                        pooling = head.partition("-")[0]  # linear-random pools as linear
                        cache = caches.setdefault(pooling, Cache(FeatureCache(None)))
                        run_one(config, seed, cache, args.checklist)
                    print(config.row(args.checklist), flush=True)
    table = "\n".join([HEADER, *(c.row(args.checklist) for c in configs)])
    print("\n" + table)
    if args.markdown:
        stamp = time.strftime("%Y-%m-%d %H:%M")
        command = "python bench/head_form.py " + " ".join(sys.argv[1:])
        with args.markdown.open("a") as out:
            out.write(f"\n`{command}` ({stamp}):\n\n{table}\n")


@dataclass
class Cache:
    """One activation cache, and its build seconds until a row has counted them."""

    cache: Any
    built: bool = False
    unpaid: float = 0.0


def run_one(config: Config, seed: int, cache: Cache, checklist: bool) -> None:
    """One seed of one configuration."""
    from nbtrain import Learner
    from nbtrain.recipes import Checklist, head_rate, larger_size
    from nbtrain.vision import ImageData
    from nbtrain.vision.models import OFFLINE_ARCHS

    arch = BODIES[config.body]
    size = OFFLINE_ARCHS[arch][1]
    data = ImageData.from_folder(config.data, size=size, bs=32, seed=0)
    head, _, start = config.head.partition("-")
    learn = Learner.pretrained(
        data, arch, head=head, head_init=start or "auto", precompute=True, seed=seed,
        opt_func=config.opt, path=tempfile.mkdtemp(),
    )  # fmt: skip
    learn.checkpoint_dir = False
    learn.feature_cache = cache.cache
    with timed() as built:
        learn.features()  # computed once per data, body and pooling; then from memory
    if not cache.built:
        cache.built, cache.unpaid = True, built.wall
        print(f"  activation cache for {config.body}, {head} head: {fmt(built)}", flush=True)
    recipe = Checklist(seed=seed, final_size=larger_size(size))
    with timed() as t:
        if checklist:
            run = recipe.run(learn)
            tta = learn.evaluate(tta=True)["accuracy"]
            config.tta.append(tta)
        else:
            lr = head_rate(learn.lr_find(seed=seed))
            run_states = learn.fit_stages(recipe.head_stages(lr)[:1])
    wall, cache.unpaid = t.wall + cache.unpaid, 0.0  # later rows read it from memory
    states = run.states if checklist else run_states
    accuracy = learn.evaluate()["accuracy"]
    config.accuracies.append(accuracy)
    config.walls.append(wall)
    config.epochs.append(len(states[0].history))
    extra = f", TTA {config.tta[-1]:.1%}" if checklist else ""
    print(
        f"  {config.data.name} {config.body} {config.head} ({learn.model.head_init}) "
        f"{config.opt} seed {seed}: accuracy {accuracy:.1%}{extra}, head {config.epochs[-1]} "
        f"epochs, {wall:.1f} s ({fmt(t)} without the cache build)",
        flush=True,
    )


if __name__ == "__main__":
    main()
