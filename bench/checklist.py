"""The fast.ai checklist through nbtrain's Python API, step by step, on an image folder.

    python bench/checklist.py [--data PATH | --data photos:N] [--size 224] [--bs 32] [--seed 0]
                              [--frozen-only]

Stages (lesson 1 of the 2018 course, "easy steps to train a world-class image
classifier"), as :class:`nbtrain.recipes.Checklist` says them (the checklist notebook's
recipe), each timed on its own:

1. precompute=True (augmentation configured);
2. lr_find on the cached activations;
3. train the head on cached activations (2 one-epoch cycles);
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

Prints the validation accuracy, wall time (with the kernel's share of the CPU time of this
process and of its loader workers) and images per second after each stage: every row the
model saw, from files or from the activation cache, and how many of them the body ran on.
The last line is the final accuracy (target on hymenoptera at 224 px: >= 98%).

At real size: ``--data photos:2000`` generates 2,000 + 2,000 photo-sized JPEGs (500x375,
two classes; ``nbtrain.vision.make_photo_dataset``, ~20 s once, then reused from the
cache folder). Beside the frozen epochs of stage 4 it measures the training loader alone
and the frozen training step alone, and prints the ratio of the epoch's training pass to the
slower of the two (the target: >= 0.8). ``--frozen-only`` stops after stage 4: about
3 minutes at photos:2000 on 2 quiet cores; the whole checklist there takes ~15 minutes.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings
from pathlib import Path

import psutil
import torch

from nbtrain import Learner
from nbtrain.core import Stepper
from nbtrain.core.snapshot import TrainingSnapshot
from nbtrain.core.stepper import InterruptGuard
from nbtrain.recipes import Checklist, head_rate, sweep_line
from nbtrain.views.format import fmt_rates
from nbtrain.vision import ImageData, make_photo_dataset

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"
FORWARD_STEPS = 12  # frozen training steps on one batch for the forward-alone rate


class Span:
    """Wall seconds, and the kernel's share of the CPU time of this process and of its loader
    workers, since it was made. Workers are counted per process: a fork server's workers
    are its children, not ours, so RUSAGE_CHILDREN never sees them; one that ended during
    the span is left out."""

    def __init__(self) -> None:
        self.start, self.workers = time.perf_counter(), _worker_times()
        own = resource.getrusage(resource.RUSAGE_SELF)
        self.user, self.system = own.ru_utime, own.ru_stime

    def stop(self) -> tuple[float, str]:
        wall = time.perf_counter() - self.start
        own = resource.getrusage(resource.RUSAGE_SELF)
        user, system = own.ru_utime - self.user, own.ru_stime - self.system
        w_user = w_system = 0.0
        for key, (u, s) in _worker_times().items():
            u0, s0 = self.workers.get(key, (0.0, 0.0))
            w_user, w_system = w_user + u - u0, w_system + s - s0
        share = system / max(user + system, 1e-9)
        workers = f"{w_system / (w_user + w_system):.0%}" if w_user + w_system > 0.05 else "-"
        return wall, f"kernel {share:.0%}, workers' {workers}"


def _worker_times() -> dict[tuple[int, float], tuple[float, float]]:
    times = {}
    for child in psutil.Process().children(recursive=True):
        try:
            cpu = child.cpu_times()
            times[child.pid, child.create_time()] = (cpu.user, cpu.system)
        except psutil.Error:  # it ended meanwhile
            continue
    return times


class Rows:
    """Rows (images or cached activations) through the head and through the body."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.head = self.body = 0
        model.head.register_forward_pre_hook(self._count("head"))
        model.body.register_forward_pre_hook(self._count("body"))

    def _count(self, part: str):
        def count(_module, inputs) -> None:
            setattr(self, part, getattr(self, part) + inputs[0].shape[0])

        return count


class EpochClock:
    """Each epoch's training pass (seconds, images) and validation pass (seconds, images the
    body ran on), and the kernel's shares over the epoch."""

    def __init__(self, rows: Rows) -> None:
        self.rows, self.epochs = rows, []

    def on_epoch_start(self, state) -> None:
        self.t0, self.span, self.head0 = time.perf_counter(), Span(), self.rows.head

    def on_batch_end(self, state) -> None:
        self.t1, self.head1, self.body1 = time.perf_counter(), self.rows.head, self.rows.body

    def on_epoch_end(self, state) -> None:
        _, kernel = self.span.stop()
        train_s, valid_s = self.t1 - self.t0, time.perf_counter() - self.t1
        n_train, valid_body = self.head1 - self.head0, self.rows.body - self.body1
        self.epochs.append((train_s, n_train, valid_s, valid_body, kernel))


def loader_alone(data: ImageData) -> tuple[float, str]:
    """Images per second of one pass over the augmented training loader, nothing else."""
    span, n = Span(), 0
    for _, yb in data.train:
        n += len(yb)
    wall, kernel = span.stop()
    return n / wall, kernel


def forward_alone(learn: Learner) -> tuple[float, str]:
    """Images per second of the fit's frozen training step on one batch, loader left out;
    the learner is left exactly as it was."""
    xb, yb = next(iter(learn.data.train))
    stepper = Stepper(
        model=learn.model,
        optimizer=learn.opt,
        loss_fn=learn.loss_fn,
        groups=learn.groups,
        device=learn.device,
        dtype=learn.dtype,
        train_bn=learn.train_bn,
        scaler=learn.scaler,
        channels_last=learn.channels_last,
        freeze_bn=learn.bn_frozen,
    )
    saved = TrainingSnapshot.capture(learn.model, learn.opt, learn.scaler)
    guard, lrs = InterruptGuard(), [0.0] * learn.n_groups
    try:
        stepper.set_train_mode()
        stepper.train_step((xb, yb), lrs, guard)  # warm-up
        span = Span()
        for _ in range(FORWARD_STEPS):
            stepper.train_step((xb, yb), lrs, guard)
        wall, kernel = span.stop()
    finally:
        saved.restore(learn.model, learn.opt, learn.scaler)
    return FORWARD_STEPS * len(yb) / wall, kernel


def resolve_data(spec: str) -> str:
    """A folder, or ``photos:N``: N + N generated photos (made once, then from the cache)."""
    if not spec.startswith("photos:"):
        return spec
    n = int(spec.split(":", 1)[1])
    t0 = time.perf_counter()
    root = make_photo_dataset(n_train=n, n_valid=n, classes=2, size=(500, 375))
    print(f"generated photos: {n} + {n} at 500x375 in {time.perf_counter() - t0:.1f} s: {root}")
    return str(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("NBTRAIN_DATA", str(DEFAULT)))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--lr-find-epochs",
        type=float,
        default=Checklist.lr_find_epochs,
        help="the unfrozen lr_find's length in epochs of batches (20 to 100 steps)",
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
    ap.add_argument("--frozen-only", action="store_true", help="stop after stage 4")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # hymenoptera's GIF; precompute + augmentation (stage 1)

    t_start = time.perf_counter()
    folder = resolve_data(args.data)
    data = ImageData.from_folder(folder, size=args.size, bs=args.bs, seed=args.seed)
    learn = Learner.pretrained(data, precompute=True, head_init=args.head_init)
    print(
        f"data: {folder}: {len(data.train_items)} train / {len(data.valid_items)} valid, "
        f"{args.size} px, batch {args.bs}, {data.num_workers} loader workers"
        f"{' (idle priority)' if data.idle_workers else ''}; model {learn.model.arch} on "
        f"{learn.device}, {torch.get_num_threads()} threads; head: {learn.model.head_init}"
    )
    rows, counted = [], Rows(learn.model)
    recipe = Checklist(
        unfreeze_cycles=args.unfrozen_cycles,
        lr_find_epochs=args.lr_find_epochs,
        final_size=args.final_size or None,
        seed=args.seed,
    )

    class Step:
        def __init__(self) -> None:
            self.span, self.head, self.body = Span(), counted.head, counted.body

        def done(self, name: str) -> None:
            acc = learn.evaluate()["accuracy"]
            wall, kernel = self.span.stop()
            head, body = counted.head - self.head, counted.body - self.body
            rows.append((name, acc, wall))
            print(
                f"{len(rows)}. {name:48s} accuracy {acc:.4f}  {wall:7.1f} s ({kernel})  "
                f"{head / wall:7.0f} rows/s, {body / wall:5.1f} img/s through the body",
                flush=True,
            )

    step = Step()
    learn.features()
    step.done("precompute (build the activation cache)")

    step = Step()
    found = learn.lr_find(seed=args.seed)
    lr = head_rate(found)
    print(f"   lr_find: {sweep_line(found)} -> lr {lr:.1e}")
    step.done("lr_find on cached activations")

    cached, augmented = recipe.head_stages(lr)
    step = Step()
    learn.fit_stages([cached])
    step.done(f"head on cached activations, {cached.cycles} epochs")

    learn.precompute = False
    loader_rate, loader_kernel = loader_alone(data)
    forward_rate, forward_kernel = forward_alone(learn)
    clock = EpochClock(counted)
    step = Step()
    learn.fit_stages([augmented], listeners=[clock])
    step.done(f"head with augmentation, cycle_len=1, {augmented.cycles} cycles")
    frozen_report(clock, loader_rate, loader_kernel, forward_rate, forward_kernel)
    if args.frozen_only:
        print(f"total wall time {time.perf_counter() - t_start:.0f} s (--frozen-only)")
        return

    step = Step()
    learn.unfreeze()
    learn.bn_freeze()
    found = learn.lr_find(**recipe.unfrozen_sweep(learn.iters_per_epoch(), learn.n_groups))
    rates = recipe.unfrozen_rates(lr, found.suggestion, learn.n_groups)
    print(f"   lr_find (unfrozen): {sweep_line(found)} -> rates " + fmt_rates(rates))
    step.done("unfreeze, 3x lower per earlier group, lr_find")

    unfrozen, *final = recipe.unfrozen_stages(rates)
    step = Step()
    learn.fit_stages([unfrozen])
    step.done(f"SGDR cycle_mult=2, {unfrozen.cycles} cycles")
    if final:
        step = Step()
        learn.fit_stages(final)
        step.done(f"progressive resizing: {final[0].size} px, 1 cycle")

    tta = learn.evaluate(tta=True)["accuracy"]
    total = time.perf_counter() - t_start
    print(f"with TTA (6 views): accuracy {tta:.4f}; total wall time {total:.0f} s")
    print(f"final validation accuracy: {rows[-1][1]:.4f} (target >= 0.98)")


def frozen_report(
    clock: EpochClock,
    loader_rate: float,
    loader_kernel: str,
    forward_rate: float,
    forward_kernel: str,
) -> None:
    """Stage 4's epochs beside the loader alone and the frozen step alone."""
    print(f"   training loader alone:      {loader_rate:6.1f} img/s ({loader_kernel})")
    print(f"   frozen training step alone: {forward_rate:6.1f} img/s ({forward_kernel})")
    slower = min(loader_rate, forward_rate)
    for i, (train_s, n_train, valid_s, valid_body, kernel) in enumerate(clock.epochs):
        where = "through the body" if valid_body else "from the activation cache"
        print(
            f"   frozen epoch {i + 1}: training pass {train_s:6.2f} s, {n_train / train_s:6.1f} "
            f"img/s = {n_train / train_s / slower:.2f} of the slower alone; validation "
            f"{valid_s:5.2f} s ({where}); {kernel}"
        )


if __name__ == "__main__":
    main()
