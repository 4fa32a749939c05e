"""What precompute buys: cache build, cached head epochs and a disk hit, against images.

On an image folder (default ../shared/data/hymenoptera, or NBTRAIN_DATA / --data) at
224 px, with the offline EfficientNet-Lite0 body frozen:

1. one frozen-body epoch over images (augmented, train + validation pass);
2. building the activation cache (train set with the eval transform + validation set), once
   cold (its loader's workers start, as in a notebook) and once more warm (the cache
   cleared, memory and disk), each against the frozen epoch in the same state: the first
   frozen epoch also starts its workers, the later ones are warm;
3. a head-only epoch on the cache (median of several);
4. a fresh learner on the same data: the cache comes from disk with no body forward pass.

    python bench/precompute.py [--data PATH] [--size 224] [--bs 64] [--epochs 2]

Every time is printed with its kernel-time share (system over user + system CPU time, loader
workers included); for an epoch, the share of the ``fit_cycles`` call around it.
Targets: cached head epoch >= 300x faster than the frozen epoch over images; building
the cache costs no more than one frozen epoch; the second run does no body pass.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import torch

from nbtrain import Learner
from nbtrain.core.features import FeatureCache
from nbtrain.vision import ImageData

from cputime import Timing, fmt, median, timed

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("NBTRAIN_DATA", str(DEFAULT)))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="frozen epochs over images to time")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # the GIF in hymenoptera, precompute + augmentation
    cache_dir = Path(tempfile.mkdtemp(prefix="nbtrain-bench-cache-"))

    def learner() -> Learner:
        data = ImageData.from_folder(args.data, size=args.size, bs=args.bs)
        learn = Learner.pretrained(data, path=cache_dir)
        learn.feature_cache = FeatureCache(cache_dir)
        return learn

    learn = learner()
    n_train, n_valid = len(learn.data.train_items), len(learn.data.valid_items)
    print(
        f"data: {args.data}: {n_train} train / {n_valid} valid images at {args.size} px, "
        f"batch {args.bs}, {torch.get_num_threads()} threads, device {learn.device}"
    )

    def epoch(lr: float) -> Timing:
        """The epoch's own seconds, beside the share of the whole call."""
        with timed() as t:
            state = learn.fit_cycles(lr)
        return Timing(state.history[-1].seconds, t.kernel_share)

    frozen = [epoch(1e-3) for _ in range(args.epochs)]
    best = min(frozen, key=lambda t: t.wall)
    frozen_s = best.wall
    print(
        f"frozen-body epoch over images (train + valid): {', '.join(fmt(t) for t in frozen)}"
        f" -> {fmt(best)}"
    )

    learn.precompute = True
    builds = []
    for _ in range(2):
        learn.feature_cache.clear(disk=True)
        with timed() as t:
            feats = learn.features()
        builds.append(t)
        assert feats.source == "computed"
    cold, warm = builds
    cold_s, warm_s = cold.wall, warm.wall
    print(
        f"cache build ({feats.train_x.shape[0]} + {feats.valid_x.shape[0]} images, "
        f"{feats.nbytes / 1e6:.1f} MB): cold {fmt(cold)} = {cold_s / frozen[0].wall:.2f} of the "
        f"first frozen epoch; warm {fmt(warm)} = {warm_s / frozen_s:.2f} of a warm one"
    )

    learn.fit_cycles(1e-2)  # warm-up
    cached = median(epoch(1e-2) for _ in range(20))
    cached_s = cached.wall
    print(f"head-only epoch on the cache (train + valid): {fmt(cached, unit='ms')} (median of 20)")
    print(f"accuracy after {1 + 1 + 20} cached head epochs: {learn.evaluate()['accuracy']:.4f}")

    fresh = learner()
    fresh.precompute = True
    calls = []
    hook = fresh.model.body.register_forward_hook(lambda *a: calls.append(1))
    with timed() as t:
        again = fresh.features()
    hook.remove()
    print(
        f"second learner: features from {again.source} in {fmt(t, '.3f')}, "
        f"{len(calls)} body forward passes"
    )
    print(
        f"cached head epoch is {frozen_s / cached_s:.0f}x faster than a frozen epoch over "
        f"images (target >= 300x); cache build = {cold_s / frozen[0].wall:.2f} frozen epochs cold, "
        f"{warm_s / frozen_s:.2f} warm (target <= 1)"
    )


if __name__ == "__main__":
    main()
