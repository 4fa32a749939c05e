"""SGDR: cosine annealing with warm restarts, as a pure function of the iteration.

Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
arXiv:1608.03983. Within cycle ``i`` of ``T_i`` iterations, at iteration ``t`` of
that cycle, every layer group's rate is::

    lr = lr_min + (lr_max - lr_min) / 2 * (1 + cos(pi * t / T_i))

The first cycle lasts ``cycle_len`` epochs and each later one ``cycle_mult`` times
longer, so ``cycles=3, cycle_len=1, cycle_mult=2`` is 1 + 2 + 4 = 7 epochs.
``cycle_mult=1`` is plain (equal-length) restarts. Nothing here holds state: a view
can draw the whole plan before training starts, and the loop asks the same plan for
the rate of every iteration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

from nbtrain.core.checks import whole_number


def _positive_int(name: str, value: object) -> int:
    return whole_number(name, value, minimum=1)


def cycle_epochs(cycles: int, cycle_len: int = 1, cycle_mult: int = 1) -> list[int]:
    """Epochs in each cycle: ``[cycle_len * cycle_mult**i for i in range(cycles)]``.

    >>> cycle_epochs(3, 1, 2)
    [1, 2, 4]
    """
    cycles = _positive_int("cycles", cycles)
    cycle_len = _positive_int("cycle_len", cycle_len)
    cycle_mult = _positive_int("cycle_mult", cycle_mult)
    return [cycle_len * cycle_mult**i for i in range(cycles)]


def cosine_multiplier(t: int, period: int) -> float:
    """Cosine annealing factor in (0, 1]: 1 at ``t=0``, falling towards 0 at ``t=period``."""
    return 0.5 * (1.0 + math.cos(math.pi * t / period))


def sgdr_lr(
    it: int,
    *,
    lr_max: float,
    iters_per_epoch: int,
    cycle_len: int = 1,
    cycle_mult: int = 1,
    lr_min: float = 0.0,
) -> float:
    """Rate at global iteration ``it`` (0-based) of an SGDR run, in closed form.

    Cycle ``i`` starts at iteration ``T0 * (m**i - 1) / (m - 1)`` (``T0 * i`` when
    ``m == 1``) with ``T0 = cycle_len * iters_per_epoch``; ``it`` past the last planned
    cycle simply continues the sequence of cycles.
    """
    if it < 0:
        raise ValueError(f"iteration must be >= 0, got {it}")
    period = _positive_int("cycle_len", cycle_len) * _positive_int(
        "iters_per_epoch", iters_per_epoch
    )
    mult = _positive_int("cycle_mult", cycle_mult)
    if mult == 1:
        start = (it // period) * period
    else:
        # Largest i with T0 * (m**i - 1) / (m - 1) <= it; the float log is corrected
        # by integer arithmetic so boundaries are exact.
        i = int(math.log(it * (mult - 1) / period + 1, mult))
        while period * (mult ** (i + 1) - 1) // (mult - 1) <= it:
            i += 1
        while i > 0 and period * (mult**i - 1) // (mult - 1) > it:
            i -= 1
        start = period * (mult**i - 1) // (mult - 1)
        period *= mult**i
    return lr_min + (lr_max - lr_min) * cosine_multiplier(it - start, period)


@dataclass(frozen=True)
class SGDRSchedule:
    """A whole SGDR plan: how many iterations, where cycles restart, each group's rate.

    Parameters
    ----------
    lrs
        Maximum rate of each layer group (the rate at the start of every cycle).
    iters_per_epoch
        Mini-batches per epoch.
    cycles, cycle_len, cycle_mult
        Number of cycles; epochs in the first; growth factor of each later one.
    lr_min_ratio
        Floor of the cosine as a fraction of each group's maximum (0: anneal to zero).
    """

    lrs: tuple[float, ...]
    iters_per_epoch: int
    cycles: int = 1
    cycle_len: int = 1
    cycle_mult: int = 1
    lr_min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not self.lrs:
            raise ValueError("lrs must name at least one rate")
        for lr in self.lrs:
            if not (isinstance(lr, Real) and math.isfinite(lr) and lr >= 0):
                raise ValueError(f"learning rates must be finite and >= 0, got {lr!r}")
        _positive_int("iters_per_epoch", self.iters_per_epoch)
        cycle_epochs(self.cycles, self.cycle_len, self.cycle_mult)
        if not 0.0 <= self.lr_min_ratio < 1.0:
            raise ValueError(f"lr_min_ratio must be in [0, 1), got {self.lr_min_ratio!r}")

    @property
    def epochs_per_cycle(self) -> list[int]:
        return cycle_epochs(self.cycles, self.cycle_len, self.cycle_mult)

    @property
    def epochs(self) -> int:
        return sum(self.epochs_per_cycle)

    @property
    def total_iters(self) -> int:
        return self.epochs * self.iters_per_epoch

    @property
    def cycle_starts(self) -> list[int]:
        """Global iteration at which each cycle starts (a restart)."""
        starts, it = [], 0
        for epochs in self.epochs_per_cycle:
            starts.append(it)
            it += epochs * self.iters_per_epoch
        return starts

    @property
    def cycle_end_epochs(self) -> list[int]:
        """0-based index of the last epoch of each cycle."""
        ends, epoch = [], -1
        for epochs in self.epochs_per_cycle:
            epoch += epochs
            ends.append(epoch)
        return ends

    def cycle_of(self, it: int) -> int:
        """0-based cycle that iteration ``it`` belongs to."""
        cycle = 0
        for i, start in enumerate(self.cycle_starts):
            if it >= start:
                cycle = i
        return cycle

    def multiplier(self, it: int) -> float:
        """Fraction of each group's maximum rate used at iteration ``it``."""
        if not 0 <= it < self.total_iters:
            raise ValueError(f"iteration {it} is outside the plan (0..{self.total_iters - 1})")
        unit = sgdr_lr(
            it,
            lr_max=1.0,
            iters_per_epoch=self.iters_per_epoch,
            cycle_len=self.cycle_len,
            cycle_mult=self.cycle_mult,
        )
        return self.lr_min_ratio + (1.0 - self.lr_min_ratio) * unit

    def lrs_at(self, it: int) -> tuple[float, ...]:
        """Rate of every layer group at iteration ``it``."""
        m = self.multiplier(it)
        return tuple(lr * m for lr in self.lrs)

    def curve(self, group: int = -1) -> list[float]:
        """The rate of one group at every iteration of the plan (for plots)."""
        lr = self.lrs[group]
        return [lr * self.multiplier(it) for it in range(self.total_iters)]


def spread_lrs(lr: float, n_groups: int, *, factor: float = 3.0) -> list[float]:
    """Differential rates: the last group gets ``lr``, each earlier one ``factor`` x lower.

    The fast.ai course advice is 3x-10x lower per earlier group:
    ``spread_lrs(1e-2, 3) == [1e-2/9, 1e-2/3, 1e-2]``.
    """
    if not (isinstance(lr, Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    n_groups = _positive_int("n_groups", n_groups)
    if not (isinstance(factor, Real) and factor >= 1):
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    return [lr / factor ** (n_groups - 1 - i) for i in range(n_groups)]


def resolve_lrs(lr: float | Sequence[float] | slice, n_groups: int) -> tuple[float, ...]:
    """One rate per layer group from a number, a per-group sequence or a slice.

    - a number: every group gets it;
    - a sequence: exactly one entry per group (otherwise a ``ValueError`` naming
      both lengths);
    - ``slice(lo, hi)``: geometric spacing from ``lo`` (first group) to ``hi`` (last);
      ``slice(hi)``: the last group ``hi``, the earlier ones ``hi / 10``
      (the fastai v2 conventions).
    """
    if isinstance(lr, slice):
        lo, hi = lr.start, lr.stop
        if hi is None:
            raise ValueError(f"a slice of rates needs a stop value, got {lr!r}")
        if lo is not None and lo > hi:
            raise ValueError(
                f"slice({lo}, {hi}) gives earlier groups higher rates; use slice(low, high)"
            )
        if lo is None:
            rates = [hi / 10] * (n_groups - 1) + [hi]
        elif n_groups == 1:
            rates = [hi]
        else:
            step = (hi / lo) ** (1 / (n_groups - 1))
            rates = [lo * step**i for i in range(n_groups)]
    elif isinstance(lr, Real) and not isinstance(lr, bool):
        rates = [lr] * n_groups
    elif not isinstance(lr, str | bytes) and (isinstance(lr, Sequence) or hasattr(lr, "__len__")):
        try:
            rates = [float(x) for x in lr]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"learning rates must be numbers, got {lr!r}") from None
        if len(rates) != n_groups:
            raise ValueError(
                f"got {len(rates)} learning rate{'s' if len(rates) != 1 else ''} for "
                f"{n_groups} layer groups; "
                f"give one rate, or exactly {n_groups}"
            )
    else:
        raise ValueError(f"lr must be a number, a list of numbers or a slice, got {lr!r}")
    for rate in rates:
        if not (isinstance(rate, Real) and math.isfinite(rate) and float(rate) >= 0):
            raise ValueError(f"learning rates must be finite and >= 0, got {rate!r}")
    return tuple(float(r) for r in rates)
