"""What the live progress display costs a fit: the same fit with and without the view.

A small MLP on in-memory data (short batches: the worst case for a per-batch listener),
one SGDR cycle of several epochs. Each repeat runs the fit without a view and with a
:class:`nbtrain.views.progress.ProgressView` (and the text view), in alternating order.
Widget messages go through a comm that JSON-serialises every message, as a kernel
would, instead of the no-op comm of a plain process; the socket send itself is missing.

Two measures:

- the CPU time spent inside the view's handlers (labels, table, plot PNGs, comm
  messages) as a share of the fit's CPU time: what the throttle controls, precise;
- the difference of median wall and CPU times with and without the view: includes
  everything, but on a shared 2-core machine its noise is about as large as the target
  (CPU time is the steadier of the two).

    python bench/display_overhead.py [--batches 4000] [--epochs 3] [--repeats 3]

Every time is printed with its kernel-time share (system over user + system CPU time).
The last line is the display overhead in % of the fit's time; the target is <= 1%.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import time

import comm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nbtrain.core import DataLoaders, Learner
from nbtrain.views.progress import ProgressView
from nbtrain.views.text import TextProgress

from cputime import Timing, fmt, timed


class SerializingComm(comm.base_comm.BaseComm):
    """A comm that pays the JSON cost of every widget message, and counts them."""

    messages = 0
    nbytes = 0

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        payload = json.dumps(
            {"msg_type": msg_type, "data": data, "metadata": metadata}, default=repr
        )
        SerializingComm.messages += 1
        SerializingComm.nbytes += len(payload) + sum(len(b) for b in buffers or ())


def make_learner(args) -> Learner:
    torch.manual_seed(0)
    n = args.bs * args.batches
    x = torch.randn(n, 64)
    y = (x[:, :8].sum(dim=1) > 0).long()
    train = DataLoader(TensorDataset(x, y), batch_size=args.bs, shuffle=True)
    valid = DataLoader(TensorDataset(x[:2048], y[:2048]), batch_size=512)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(64, args.hidden), nn.ReLU()),
        nn.Sequential(nn.Linear(args.hidden, args.hidden), nn.ReLU()),
        nn.Linear(args.hidden, 2),
    )
    return Learner(model, DataLoaders(train, valid), device="cpu")


def timed_fit(learn: Learner, args, view) -> tuple[float, float, float]:
    """Wall and CPU seconds of one fit (CPU time: steadier on a shared machine), and its
    kernel-time share."""
    cpu = time.process_time()
    with timed() as t:
        learn.fit_cycles(0.05, 1, args.epochs, listeners=[view] if view is not None else [])
    return t.wall, time.process_time() - cpu, t.kernel_share


def per_batch_cost(plan) -> Timing:
    """CPU seconds of one ``on_batch_end`` call that updates nothing (the throttled
    path): the part of the view's cost its own accounting does not see; and the kernel's
    share of them."""
    from nbtrain.core.state import TrainState

    view = ProgressView([plan], label_interval=math.inf)
    state = TrainState(schedule=plan)
    view.on_fit_start(state)
    n = 200_000
    start = time.process_time()
    with timed() as t:
        for it in range(n):
            state.it = it
            view.on_batch_end(state)
    return Timing((time.process_time() - start) / n, t.kernel_share)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4000, help="batches per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    comm.create_comm = SerializingComm
    learn = make_learner(args)
    plan = learn.plan(0.05, 1, args.epochs)
    timed_fit(learn, args, None)  # warm-up: allocator, first-call costs
    plain, widget, text, shares, redraws, messages, finish = [], [], [], [], [], [], []
    for r in range(args.repeats):
        order = ("none", "widget", "text") if r % 2 == 0 else ("text", "widget", "none")
        for kind in order:
            if kind == "none":
                plain.append(timed_fit(learn, args, None))
            elif kind == "text":
                view = TextProgress([plan], live=False, stream=io.StringIO())
                text.append(timed_fit(learn, args, view))
            else:
                view = ProgressView([plan], learn=learn)
                before = SerializingComm.messages
                widget.append(timed_fit(learn, args, view))
                shares.append(view.display_seconds / widget[-1][1])  # CPU / CPU
                redraws.append(view.redraws - 1)  # minus the one before training
                messages.append(SerializingComm.messages - before)
                with timed() as t:
                    view.finish()  # the final plot and status line, after training
                finish.append((t.wall, t.kernel_share))

    def median(runs, i):
        return statistics.median(run[i] for run in runs)

    def timing(runs, i) -> Timing:
        """The median time ``i`` of ``runs`` beside their median kernel-time share."""
        return Timing(median(runs, i), median(runs, -1))

    epoch = timing(plain, 0)
    epoch.wall /= args.epochs
    batch = Timing(epoch.wall / args.batches, epoch.kernel_share)
    print(
        f"fit: {args.epochs} epochs x {args.batches} batches of {args.bs}, "
        f"{fmt(epoch)} per epoch, {fmt(batch, unit='ms')} per batch"
    )
    for i, what in ((0, "wall"), (1, "CPU")):
        base = median(plain, i)
        print(
            f"median {what} time: no view {fmt(timing(plain, i))}, widget view "
            f"{fmt(timing(widget, i))} ({(median(widget, i) / base - 1) * 100:+.2f}%), text view "
            f"{fmt(timing(text, i))} ({(median(text, i) / base - 1) * 100:+.2f}%)"
        )
    print(
        f"widget view per fit: {statistics.median(redraws):.0f} plot redraws during training, "
        f"{statistics.median(messages):.0f} comm messages; after the fit, finish() "
        f"{fmt(timing(finish, 0), '.0f', 'ms')} (final plot)"
    )
    batch_cost = per_batch_cost(plan)
    batch_share = batch_cost.wall * args.batches * args.epochs / median(widget, 1)
    print(
        f"inside the view: {max(shares) * 100:.2f}% of the fit's CPU time (worst of "
        f"{len(shares)} fits); every batch's call {fmt(batch_cost, '.2f', 'us')}: "
        f"{batch_share * 100:.2f}%"
    )
    print(
        f"display overhead: {(max(shares) + batch_share) * 100:.2f}% of the fit's CPU time "
        f"(target <= 1%)"
    )


if __name__ == "__main__":
    main()
