"""The LR range test (Smith, "Cyclical Learning Rates for Training Neural Networks",
arXiv:1506.01186), in the exponential form fast.ai popularised.

The rate grows exponentially from ``start`` to ``end`` over ``iters`` mini-batches,
one optimizer step each; the loss is smoothed with a debiased moving average
(beta 0.98); the sweep stops early when the loss is not finite or the smoothed loss
passes ``stop_factor`` times the best seen. Model, optimizer and RNG state are
snapshotted in memory first and restored bit for bit afterwards, also when the sweep
is interrupted or fails. Suggestion rules are pure functions of ``(lrs, losses)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nbtrain.core.snapshot import TrainingSnapshot
from nbtrain.core.state import SmoothedLoss
from nbtrain.core.stepper import InterruptGuard, Stepper

DEFAULT_RULE = "valley"


def _trim(lrs: Sequence[float], losses: Sequence[float]) -> tuple[list[float], list[float]]:
    """Drop the noisy first 10% and the last 5 points; stop at the first non-finite loss."""
    n = len(losses)
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            n = i
            break
    lo, hi = len(losses) // 10, n - 5
    if hi - lo < 3:  # too short to trim: use what is finite
        lo, hi = 0, n
    return list(lrs[lo:hi]), list(losses[lo:hi])


def suggest_valley(
    lrs: Sequence[float], losses: Sequence[float], *, clear_drop: float = 0.1
) -> float | None:
    """The middle of the stretch over which the loss clearly keeps falling.

    fastai v2's default rule finds the longest decreasing subsequence of the smoothed
    losses (the valley) and returns the rate about half-way down it. nbtrain's version
    first drops the valley's flat start, up to where the loss has fallen by
    ``clear_drop`` of the valley's whole fall: on a clean curve (a head on cached
    activations, no augmentation) tiny rates still lower the loss a little at every
    step, the valley then starts at the first points, and fastai's rule lands in the
    flat part, an order of magnitude too low. ``clear_drop=0`` is fastai's rule.
    """
    xs, ys = _trim(lrs, losses)
    n = len(ys)
    if n < 2:
        return None
    length = [1] * n  # longest decreasing run ending at i
    first = list(range(n))  # where that run starts
    best_end = 0
    for i in range(1, n):
        for j in range(i):
            if ys[i] < ys[j] and length[j] + 1 > length[i]:
                length[i], first[i] = length[j] + 1, first[j]
        if length[i] > length[best_end]:
            best_end = i
    start = first[best_end]
    fall = ys[start] - ys[best_end]
    while start < best_end and ys[start] > ys[first[best_end]] - clear_drop * fall:
        start += 1
    third = (best_end - start) / 3
    return xs[start + int(third) + int(third / 2)]


def suggest_steepest(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """Rate where the loss falls fastest against log(rate) (fastai's ``steep``)."""
    xs, ys = _trim(lrs, losses)
    if len(ys) < 2:
        return None
    slopes = [
        (ys[i + 1] - ys[i]) / (math.log(xs[i + 1]) - math.log(xs[i])) for i in range(len(ys) - 1)
    ]
    return xs[min(range(len(slopes)), key=slopes.__getitem__)]


def suggest_minimum(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """A tenth of the rate at the lowest smoothed loss (fastai's ``minimum``)."""
    xs, ys = _trim(lrs, losses)
    if not ys:
        return None
    return xs[min(range(len(ys)), key=ys.__getitem__)] / 10


def suggest_slide(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    window: int = 15,
    threshold: float = 0.005,
) -> float | None:
    """Walk left from the end until the loss slope is about the same ``window`` points
    apart (fastai's ``slide``): the edge of the region where the loss is still falling
    smoothly."""
    xs, ys = _trim(lrs, losses)
    n = len(ys)
    if n < window + 2:
        return None
    grad = [ys[1] - ys[0]]
    grad += [(ys[i + 1] - ys[i - 1]) / 2 for i in range(1, n - 1)]
    grad += [ys[-1] - ys[-2]]
    right, left = n - 1, n - 1 - window
    found = xs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > threshold:
        found = xs[left]
        right, left = right - 1, left - 1
    return found


SUGGESTION_RULES: dict[str, Callable[[Sequence[float], Sequence[float]], float | None]] = {
    "valley": suggest_valley,
    "steep": suggest_steepest,
    "minimum": suggest_minimum,
    "slide": suggest_slide,
}


@dataclass
class LRRangeResult:
    """What a range test found.

    ``lrs`` is the rate of the last (reference) layer group at each step; other groups
    ran at ``group_lrs`` (their ratios to the last group held fixed). ``losses`` are
    smoothed, ``raw_losses`` as measured. ``suggestion`` is the ``valley`` rule's rate;
    ``suggestions`` holds every rule's.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    group_lrs: list[tuple[float, ...]]
    stop_reason: str  # "end" | "diverged" | "not finite" | "interrupted" | "stopped"
    seconds: float = 0.0
    suggestions: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rule: str = DEFAULT_RULE

    def __post_init__(self) -> None:
        if not self.suggestions:
            self.suggestions = {
                name: fn(self.lrs, self.losses) for name, fn in SUGGESTION_RULES.items()
            }
        if not self.notes:
            self.notes = diagnose(self.lrs, self.losses, self.stop_reason)

    @property
    def suggestion(self) -> float | None:
        return self.suggestions.get(self.rule)

    def group_suggestion(self) -> tuple[float, ...] | None:
        """The suggestion for every group, keeping the sweep's ratios between groups."""
        if self.suggestion is None or not self.group_lrs:
            return None
        ratios = [lr / self.group_lrs[0][-1] for lr in self.group_lrs[0]]
        return tuple(self.suggestion * r for r in ratios)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.2e}" for k, v in self.suggestions.items() if v is not None)
        return (
            f"LRRangeResult({len(self.lrs)} steps, {self.lrs[0]:.1e}..{self.lrs[-1]:.1e}, "
            f"stopped: {self.stop_reason}; suggestions: {shown or 'none'})"
            if self.lrs
            else f"LRRangeResult(no steps, stopped: {self.stop_reason})"
        )


def diagnose(lrs: Sequence[float], losses: Sequence[float], stop_reason: str) -> list[str]:
    """Plain-language warnings about a curve (too short, flat, never diverged)."""
    notes = []
    _, ys = _trim(lrs, losses)
    if len(ys) < 20:
        notes.append(f"only {len(ys)} usable points; raise iters for a steadier curve")
    if ys:
        lo, hi = min(ys), max(ys)
        rose = stop_reason == "diverged" or ys[-1] > 1.5 * lo
        fall = (ys[0] - lo) / ys[0] if ys[0] > 0 else 1.0
        if hi > 0 and (hi - lo) / hi < 0.05:
            notes.append("loss is flat over the sweep; the model may already be trained")
        elif stop_reason == "end" and not rose:
            notes.append("the loss never rose at the end; raise end to see where it diverges")
        elif rose and ys.index(lo) > 0 and fall < 0.3:
            notes.append(
                f"the loss falls only {fall:.0%} ({ys[0]:.3g} -> {lo:.3g}) before it rises, "
                "so the suggestion is rough"
            )
    return notes


def sweep_lrs(start: Sequence[float], end: float, iters: int) -> list[tuple[float, ...]]:
    """Per-group rates of an exponential sweep; the last group goes ``start[-1] -> end``.

    ``lr_i = start * (end / start[-1]) ** (i / (iters - 1))``: every group is multiplied
    by the same factor, so the ratios between groups stay fixed.
    """
    if iters < 2:
        raise ValueError(f"iters must be >= 2, got {iters}")
    ref = start[-1]
    if not (0 < ref < end and math.isfinite(end)):
        raise ValueError(f"need 0 < start < end, got start={ref!r}, end={end!r}")
    if any(not (math.isfinite(s) and s > 0) for s in start):
        raise ValueError(f"start rates must be finite and > 0, got {list(start)!r}")
    ratio = end / ref
    return [tuple(s * ratio ** (i / (iters - 1)) for s in start) for i in range(iters)]


def _cycle(loader: Iterable[Any]) -> Generator[Any, None, None]:
    """Loop over ``loader`` forever (the sweep may need more batches than an epoch)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data is empty; the range test needs batches")


def run_lr_range(
    stepper: Stepper,
    train: Iterable[Any],
    *,
    start: Sequence[float],
    end: float = 10.0,
    iters: int = 100,
    stop_factor: float = 4.0,
    seed: int | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> LRRangeResult:
    """Sweep the rate and record the loss; leave model, optimizer and RNGs as they were.

    Parameters
    ----------
    start
        The first rate of every layer group (ratios between groups are kept).
    end
        The last rate of the last group.
    iters
        Steps in the sweep; the data is looped when it has fewer batches.
    stop_factor
        Stop when the smoothed loss passes ``stop_factor`` x the best one (after the
        first 10% of the sweep, whose noise would set a misleading best).
    on_step
        ``on_step(i, lr, smoothed_loss)`` after each step, e.g. for a progress bar.
    """
    schedule = sweep_lrs(start, end, iters)
    model, opt = stepper.model, stepper.optimizer
    saved = TrainingSnapshot.capture(model, opt, stepper.scaler)
    # A loader with its own generator (seeded shuffling) is RNG state too.
    generator = getattr(train, "generator", None)
    generator_state = generator.get_state() if isinstance(generator, torch.Generator) else None
    lrs: list[float] = []
    group_lrs: list[tuple[float, ...]] = []
    smoothed: list[float] = []
    raw: list[float] = []
    reason = "end"
    t0 = clock()
    guard = InterruptGuard()
    batches = _cycle(train)
    try:
        if seed is not None:
            torch.manual_seed(seed)
        opt.state.clear()  # the curve must not depend on momentum left by earlier fits
        stepper.set_train_mode()
        smooth, best = SmoothedLoss(), math.inf
        warmup = max(1, min(10, iters // 10))
        with guard:
            for i, rates in enumerate(schedule):
                loss = stepper.train_step(next(batches), rates, guard)
                raw.append(loss)
                if not math.isfinite(loss):
                    reason = "not finite"
                    break
                value = smooth.update(loss)
                lrs.append(rates[-1])
                group_lrs.append(rates)
                smoothed.append(value)
                if on_step is not None:
                    on_step(i, rates[-1], value)
                if i >= warmup:
                    if value > stop_factor * best:
                        reason = "diverged"
                        break
                    best = min(best, value)
                if guard.interrupted:
                    reason = "interrupted"
                    break
    finally:
        batches.close()  # shuts a DataLoader's workers down now, not at garbage collection
        saved.restore(model, opt, stepper.scaler)
        if generator is not None and generator_state is not None:
            generator.set_state(generator_state)
    if reason == "interrupted":
        raise KeyboardInterrupt("lr_find interrupted; the model and optimizer are as before")
    return LRRangeResult(
        lrs=lrs,
        losses=smoothed,
        raw_losses=raw,
        group_lrs=group_lrs,
        stop_reason=reason,
        seconds=clock() - t0,
    )
