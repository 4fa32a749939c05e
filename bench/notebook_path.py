"""The same fit on every path a user takes, side by side in one run, with kernel-time shares.

One epoch of EfficientNet-Lite0, whole network trainable, SGD with momentum and a cosine
rate, batch 32 at 224 px, over an image folder (the hymenoptera photos by default), with a
validation pass; each path in turn, every round, in rotating order:

- ``hand-written``: a plain PyTorch loop in this process's main thread;
- ``API, main thread``: ``learn.fit_cycles(...)`` in this process's main thread;
- ``API, user thread``: the same call from a ``threading.Thread`` of the user's;
- ``kernel %fit_cycles``: the magic as a cell in a real Jupyter kernel (jupyter_client),
  which nbtrain rewrites into an awaited fit in a worker thread, under the live display;
- the last two again with ``NBTRAIN_TRAIN_IN_PLACE=1`` (``--before``): how they ran before
  nbtrain moved heavy calls to a thread on glibc's main arena (``nbtrain/core/cpu.py``).

Each path has its own model (same initial weights) and its own loaders. Every time is
printed with the share of CPU time spent in the kernel (system time over user + system,
from ``resource.getrusage`` and, for loader workers that are still alive, psutil: see
``cputime.py``), so that an allocator regression shows at once.

    python bench/notebook_path.py [--data FOLDER] [--rounds 3] [--before] [--size 224]

The last lines are medians per path and their ratio to the hand-written loop; the target
for the kernel path is <= 1.03.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
from pathlib import Path

import torch
from torch import nn

from cputime import measure

REPO = Path(__file__).resolve().parent.parent
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"
LR = 0.01


# ------------------------------------------------------------------- in this process
def make_data(folder: Path, size: int, bs: int):
    from nbtrain.vision import ImageData

    return ImageData.from_folder(folder, size=size, bs=bs, augment=False, seed=0)


def make_learner(folder: Path, size: int, bs: int):
    from nbtrain import Learner

    learn = Learner.pretrained(make_data(folder, size, bs), seed=0)
    learn.unfreeze()
    return learn


def hand_written(folder: Path, size: int, bs: int):
    """A plain loop over the same model, data and schedule as ``fit_cycles(LR)``."""
    learn = make_learner(folder, size, bs)  # the model as nbtrain builds it; its loop unused
    model, data = learn.model, learn.data
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        n = len(data.train)
        model.train()
        for i, (xb, yb) in enumerate(data.train):
            for group in opt.param_groups:
                group["lr"] = LR / 2 * (1 + math.cos(math.pi * i / n))
            loss = loss_fn(model(xb.contiguous(memory_format=torch.channels_last)), yb)
            loss.item()  # the one sync per step nbtrain also makes
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        with torch.inference_mode():
            for xb, yb in data.valid:
                loss_fn(model(xb.contiguous(memory_format=torch.channels_last)), yb).item()

    return epoch


def in_user_thread(fn) -> None:
    error: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="user-thread")
    thread.start()
    thread.join()
    if error:
        raise error[0]


def api(folder: Path, size: int, bs: int, *, thread: bool, in_place: bool = False):
    learn = make_learner(folder, size, bs)

    def epoch() -> None:
        previous = os.environ.pop("NBTRAIN_TRAIN_IN_PLACE", None)
        if in_place:
            os.environ["NBTRAIN_TRAIN_IN_PLACE"] = "1"
        try:
            fit = lambda: learn.fit_cycles(LR)  # noqa: E731
            in_user_thread(fit) if thread else fit()
        finally:
            os.environ.pop("NBTRAIN_TRAIN_IN_PLACE", None)
            if previous is not None:
                os.environ["NBTRAIN_TRAIN_IN_PLACE"] = previous

    return epoch


# ------------------------------------------------------------------- in a real kernel
KERNEL_HELPERS = """
%load_ext nbtrain
import json, resource, time
import psutil
from nbtrain import Learner
from nbtrain.vision import ImageData

def _cpu_times():
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = own.ru_utime + reaped.ru_utime, own.ru_stime + reaped.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        user, system = user + t.user, system + t.system
    return user, system
"""
KERNEL_SETUP = (
    KERNEL_HELPERS
    + """
data = ImageData.from_folder({folder!r}, size={size}, bs={bs}, augment=False, seed=0)
learn = Learner.pretrained(data, seed=0)
learn.unfreeze()
lr = {lr}
"""
)
KERNEL_BEFORE = "_t0 = (time.perf_counter(), _cpu_times())"
KERNEL_FIT = "%fit_cycles learn --lr lr --cycles 1"
KERNEL_AFTER = """
_wall = time.perf_counter() - _t0[0]
_u, _s = (a - b for a, b in zip(_cpu_times(), _t0[1]))
print("RESULT=" + json.dumps({"wall": _wall, "kernel_share": _s / max(_u + _s, 1e-9),
                              "status": learn.fits[-1].status}))
"""


class Kernel:
    """A Jupyter kernel of this environment, driven as a front end would drive it."""

    def __init__(self, env: dict[str, str]) -> None:
        from jupyter_client import KernelManager

        os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")  # this environment's python3
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, **env}, cwd=str(REPO))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, code: str) -> str:
        out: list[str] = []

        def hook(msg: dict) -> None:
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                out.append("\n".join(content["traceback"]))

        reply = self.kc.execute_interactive(code, timeout=None, output_hook=hook)
        text = "".join(out)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the kernel failed on {code.strip()[:60]!r}:\n{text}")
        return text

    def epoch(self, cell: str = KERNEL_FIT) -> dict[str, float]:
        """Run ``cell`` (a fit) timed in the kernel: wall seconds and kernel-time share."""
        self.run(KERNEL_BEFORE)
        self.run(cell)
        text = self.run(KERNEL_AFTER)
        line = next(x for x in text.splitlines() if x.startswith("RESULT="))
        result = json.loads(line.removeprefix("RESULT="))
        if result.pop("status") != "done":
            raise RuntimeError("the kernel's fit did not finish")
        return result

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def kernel_path(folder: Path, size: int, bs: int, *, in_place: bool = False):
    kernel = Kernel({"NBTRAIN_TRAIN_IN_PLACE": "1"} if in_place else {})
    kernel.run(KERNEL_SETUP.format(folder=str(folder), size=size, bs=bs, lr=LR))
    return kernel


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("NBTRAIN_DATA", HYMENOPTERA)),
        help="image folder with train/ and val/ or valid/ (default: hymenoptera)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument(
        "--before",
        action="store_true",
        help="also the thread paths with NBTRAIN_TRAIN_IN_PLACE=1 (as before the fix)",
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no image folder at {args.data}; give one with --data")
    from nbtrain.core.cpu import tune_cpu

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}; allocator: {tune_cpu()['malloc']}"
    )
    data = make_data(args.data, args.size, args.bs)
    print(
        f"data: {args.data}, {len(data.train_ds)} training and {len(data.valid_ds)} "
        f"validation images, {args.size} px, batch {args.bs}; one epoch per path and round"
    )

    paths: dict[str, object] = {
        "hand-written": hand_written(args.data, args.size, args.bs),
        "API, main thread": api(args.data, args.size, args.bs, thread=False),
        "API, user thread": api(args.data, args.size, args.bs, thread=True),
    }
    kernels = {"kernel %fit_cycles": kernel_path(args.data, args.size, args.bs)}
    if args.before:
        paths["API, user thread, in place (before)"] = api(
            args.data, args.size, args.bs, thread=True, in_place=True
        )
        kernels["kernel %fit_cycles, in place (before)"] = kernel_path(
            args.data, args.size, args.bs, in_place=True
        )
    names = [*paths, *kernels]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        for name in names:  # warm-up: loader workers, oneDNN kernels, the heap
            (kernels[name].epoch if name in kernels else paths[name])()
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                result = kernels[name].epoch() if name in kernels else measure(paths[name])
                results[name].append(result)
                print(
                    f"round {r + 1}  {name:40s} {result['wall']:7.2f} s   "
                    f"kernel time {result['kernel_share']:6.1%}",
                    flush=True,
                )
    finally:
        for kernel in kernels.values():
            kernel.close()

    base = statistics.median(x["wall"] for x in results["hand-written"])
    print("\nmedians over rounds (wall s, x hand-written, kernel-time share):")
    for name in names:
        wall = statistics.median(x["wall"] for x in results[name])
        share = statistics.median(x["kernel_share"] for x in results[name])
        print(f"  {name:40s} {wall:7.2f} s  {wall / base:6.3f}x  {share:6.1%}")
    kernel = statistics.median(x["wall"] for x in results["kernel %fit_cycles"])
    print(f"kernel path / hand-written: {kernel / base:.3f} (target <= 1.03)")


if __name__ == "__main__":
    main()
