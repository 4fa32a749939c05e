"""What resumable checkpoints cost a fit on the user's path: %fit_cycles in a real kernel.

The checklist's two image stages at 224 px, batch 32, EfficientNet-Lite0: an augmented
epoch with the body frozen, and an epoch with every group training. Each runs as
``%fit_cycles learn --lr lr --cycles 2`` (two one-epoch cycles: the first epoch end
writes a checkpoint, the fit's end another) in a real Jupyter kernel, with checkpoints
on and with ``learn.checkpoint_dir = False``, alternating; and once through the API in
this process's main thread. Printed per fit: seconds per epoch, the kernel-time share,
the checkpoints written, their seconds, and their share of the fit (target <= 2%).

    python bench/checkpoint_cost.py [--data FOLDER | --data photos:N] [--rounds 2]

On 2 000 + 2 000 photos (``photos:2000``) an epoch takes minutes; the default is the
hymenoptera photos (244 + 153), where it takes seconds and the share is largest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from checklist import resolve_data
from cputime import timed
from notebook_path import KERNEL_HELPERS, Kernel

REPO = Path(__file__).resolve().parent.parent
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"
LR = {"frozen": 1e-2, "unfrozen": 1e-3}
SETUP = """
data = ImageData.from_folder({folder!r}, size=224, bs=32, seed=0)
learn = Learner.pretrained(data, seed=0)
learn.checkpoint_dir = {checkpoints}
"""
STAGE = {"frozen": "learn.freeze(); learn.precompute = False", "unfrozen": "learn.unfreeze()"}
REPORT = """
print("CKPT=" + json.dumps({"writes": learn.checkpoint_writes,
                            "seconds": learn.checkpoint_seconds,
                            "epochs": len(learn.fits[-1].history)}))
"""


def kernel_fit(kernel: Kernel, stage: str) -> dict[str, float]:
    kernel.run(f"{STAGE[stage]}\nlr = {LR[stage]}")
    result = kernel.epoch("%fit_cycles learn --lr lr --cycles 2")
    text = kernel.run(REPORT)
    line = next(x for x in text.splitlines() if x.startswith("CKPT="))
    return {**result, **json.loads(line.removeprefix("CKPT="))}


def api_fit(folder: str, stage: str) -> dict[str, float]:
    from nbtrain import Learner
    from nbtrain.vision import ImageData

    learn = Learner.pretrained(ImageData.from_folder(folder, size=224, bs=32, seed=0), seed=0)
    exec(STAGE[stage], {"learn": learn})
    with timed() as t:
        learn.fit_cycles(LR[stage], cycles=2)
    return {
        "wall": t.wall,
        "kernel_share": t.kernel_share,
        "writes": learn.checkpoint_writes,
        "seconds": learn.checkpoint_seconds,
        "epochs": 2,
    }


def line(label: str, r: dict[str, float]) -> str:
    per_epoch = r["wall"] / r["epochs"]
    share = r["seconds"] / r["wall"] if r["wall"] else 0.0
    return (
        f"  {label:34s} {per_epoch:7.2f} s/epoch (kernel {r['kernel_share']:5.1%})  "
        f"{int(r['writes'])} checkpoints, {r['seconds'] * 1e3:6.1f} ms = {share:6.2%} of the fit"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("NBTRAIN_DATA", str(HYMENOPTERA)))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    folder = resolve_data(args.data)
    if not Path(folder).is_dir():
        sys.exit(f"no image folder at {folder}; give one with --data")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"data: {folder}"
    )
    kernels = {}
    for on in (True, False):
        kernel = Kernel({})
        kernel.run(KERNEL_HELPERS)
        kernel.run(SETUP.format(folder=folder, checkpoints="None" if on else "False"))
        kernels[on] = kernel
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for stage in ("frozen", "unfrozen"):
            for r in range(args.rounds):
                for on in (True, False) if r % 2 == 0 else (False, True):
                    key = (stage, "kernel, checkpoints " + ("on" if on else "off"))
                    result = kernel_fit(kernels[on], stage)
                    results.setdefault(key, []).append(result)
                    print(f"round {r + 1} {stage:8s}" + line(key[1], result), flush=True)
            result = api_fit(folder, stage)
            results.setdefault((stage, "API main thread, checkpoints on"), []).append(result)
            print(f"        {stage:8s}" + line("API main thread, checkpoints on", result))
    finally:
        for kernel in kernels.values():
            kernel.close()
    print("\nmedians:")
    for (stage, label), rs in results.items():
        median = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"{stage:8s}" + line(label, median))
    for stage in ("frozen", "unfrozen"):
        on = statistics.median(r["wall"] for r in results[(stage, "kernel, checkpoints on")])
        off = statistics.median(r["wall"] for r in results[(stage, "kernel, checkpoints off")])
        print(f"{stage}: kernel fit with / without checkpoints: {on / off:.3f}")


if __name__ == "__main__":
    main()
