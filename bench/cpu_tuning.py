"""What makes CPU epochs steady and fast: allocator, memory format, inference mode.

Each variant runs in its own process (the allocator setting cannot be undone inside
one), the variants alternate, and each reports the median of several steps:

- ``frozen``: a frozen-body forward at 224 px, batch 64 (what precompute and a frozen
  epoch over images cost), under ``no_grad`` or ``inference_mode``;
- ``train``: a whole-network training step at 128 px, batch 32.

    python bench/cpu_tuning.py [--rounds 2] [--steps 4]

Prints one line per variant and round, then the medians and the speed-ups against
glibc's default allocator. Every time has its kernel-time share beside it (system over user +
system CPU time, measured in the child around each step; the median of the steps' shares).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from cputime import Timing, fmt, from_json, median, timed, to_json

VARIANTS = {
    "glibc default": {"NBTRAIN_KEEP_MALLOC": "1"},
    "mallopt (nbtrain default)": {},
    "mallopt + channels_last": {"BENCH_CHANNELS_LAST": "1"},
}


def child(steps: int) -> None:
    import timm
    import torch

    from nbtrain.core.cpu import tune_cpu

    tune_cpu()
    channels_last = bool(os.environ.get("BENCH_CHANNELS_LAST"))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=2).to(memory_format=fmt)
    out = {}

    x = torch.randn(64, 3, 224, 224).contiguous(memory_format=fmt)
    model.eval()
    for mode in ("no_grad", "inference_mode"):
        ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
        times = []
        for _ in range(steps + 1):
            with timed() as t, ctx():
                model(x)
            times.append(t)
        out[f"frozen 224px fwd ({mode})"] = median(times[1:])

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(32, 3, 128, 128).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (32,))
    times = []
    for _ in range(steps + 1):
        with timed() as t:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        times.append(t)
    out["train step 128px"] = median(times[1:])
    print("RESULT " + to_json(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.steps)
        return
    results: dict[str, dict[str, list[Timing]]] = {v: {} for v in VARIANTS}
    for r in range(args.rounds):
        names = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in names:
            env = {**os.environ, **VARIANTS[name]}
            if not VARIANTS[name]:
                env.pop("NBTRAIN_KEEP_MALLOC", None)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", "--steps", str(args.steps)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            figures = from_json(line[7:])
            for k, v in figures.items():
                results[name].setdefault(k, []).append(v)
            print(
                f"round {r + 1} {name}: "
                + ", ".join(f"{k} {fmt(v, '.3f')}" for k, v in figures.items()),
                flush=True,
            )
    base = {k: median(v) for k, v in results["glibc default"].items()}
    for name, figures in results.items():
        med = {k: median(v) for k, v in figures.items()}
        print(
            f"{name:28s} "
            + "; ".join(
                f"{k} {fmt(med[k], '.3f')} ({base[k].wall / med[k].wall:.2f}x)" for k in med
            )
        )


if __name__ == "__main__":
    main()
