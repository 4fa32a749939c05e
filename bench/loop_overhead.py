"""nbtrain's fit_cycles against a hand-written PyTorch loop, side by side in one process.

Same model (EfficientNet-Lite0 from timm, whole network trainable), same in-memory
data, batch size, optimizer (SGD, momentum 0.9) and per-iteration cosine rate. Each
repeat runs one epoch of each, in alternating order; the figures are medians.
Also times lr_find against the same number of plain training steps.

    python bench/loop_overhead.py [--size 128] [--bs 32] [--batches 8] [--repeats 5]

Every time is printed with its kernel-time share (system over user + system CPU time).
The last line is the per-epoch ratio (nbtrain / hand-written); the target is <= 1.02.
"""

from __future__ import annotations

import argparse
import math
import platform

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nbtrain import Learner
from nbtrain.core.cpu import tune_cpu

from cputime import fmt, median, timed


def hand_written_epoch(model, loader, opt, lr_max, loss_fn):
    n = len(loader)
    model.train()
    for i, (xb, yb) in enumerate(loader):
        lr = lr_max / 2 * (1 + math.cos(math.pi * i / n))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_fn(model(xb), yb)
        loss.item()  # the same sync nbtrain does for its smoothed loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lr-find-iters", type=int, default=16)
    ap.add_argument("--no-tune", action="store_true", help="keep glibc's default allocator")
    args = ap.parse_args()
    if not args.no_tune:
        print("cpu tuning:", tune_cpu())
    torch.manual_seed(0)
    n = args.bs * args.batches
    x = torch.randn(n, 3, args.size, args.size)
    y = torch.randint(0, 2, (n,))

    def make_model():
        torch.manual_seed(0)
        return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2)

    # nbtrain keeps conv nets channels-last by default; the hand-written loop does the same
    # so that only the loops differ.
    hand_model = make_model().to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    hand_opt = torch.optim.SGD(hand_model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.bs, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    learn = Learner(make_model(), (loader, None), device="cpu")
    learn.unfreeze()

    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"data: {n} random images at {args.size} px, batch {args.bs}, {args.batches} batches")
    # warm-up: one epoch each (allocator, kernels)
    hand_written_epoch(hand_model, loader, hand_opt, 0.01, loss_fn)
    learn.fit_cycles(0.01)

    ours, hand = [], []
    for r in range(args.repeats):
        order = ("ours", "hand") if r % 2 == 0 else ("hand", "ours")
        for which in order:
            with timed() as t:
                if which == "ours":
                    learn.fit_cycles(0.01)
                else:
                    hand_written_epoch(hand_model, loader, hand_opt, 0.01, loss_fn)
            (ours if which == "ours" else hand).append(t)
        print(f"repeat {r + 1}: nbtrain {fmt(ours[-1])}, hand-written {fmt(hand[-1])}")

    steps = args.lr_find_iters
    with timed() as find:
        learn.lr_find(iters=steps, end=1.0)
    with timed() as plain:
        hand_model.train()
        done = 0
        while done < steps:
            for xb, yb in loader:
                loss = loss_fn(hand_model(xb), yb)
                loss.item()
                loss.backward()
                hand_opt.step()
                hand_opt.zero_grad(set_to_none=True)
                done += 1
                if done == steps:
                    break
    print(
        f"lr_find, {steps} iterations: {fmt(find)}; {steps} plain steps: {fmt(plain)}; "
        f"ratio {find.wall / plain.wall:.3f} (target <= 1.10)"
    )
    m_ours, m_hand = median(ours), median(hand)
    print(
        f"median s/epoch: nbtrain {fmt(m_ours, '.3f', '')}, hand-written {fmt(m_hand, '.3f', '')}"
    )
    print(
        f"epoch time ratio nbtrain/hand-written: {m_ours.wall / m_hand.wall:.3f} (target <= 1.02)"
    )


if __name__ == "__main__":
    main()
