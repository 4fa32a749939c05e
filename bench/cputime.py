"""Wall time and the kernel-time share beside it: the one helper every benchmark uses.

The kernel-time share is system CPU seconds over user + system, for this process, its
reaped children and its live ones (DataLoader workers), leaving out Jupyter kernels and
their children, which report their own. With glibc's default allocator 30-45% of CPU time
can be page faults (``../shared/PERF-NOTES.md``), so a share far above a few percent next to
a time says at once that the allocator, not the code, moved it.

    from cputime import fmt, timed

    with timed() as t:
        learn.fit_cycles(1e-3)
    print(f"one epoch: {fmt(t)}")  # one epoch: 12.34 s (kernel 1.2%)

The kernel splits a process's CPU time into user and system by clock ticks, so the share of
a span shorter than about 0.1 s is coarse (one tick in 50 ms reads as 8%).

A benchmark that runs children measures inside the child and sends the
:class:`Timing` back in its JSON (:func:`to_json`, :func:`from_json`). The scripts in
``bench/`` run as ``python bench/X.py``, so their folder is on ``sys.path``.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import psutil

UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "": 1.0}


def cpu_times() -> tuple[float, float]:
    """User and system seconds of this process, its reaped children and its live ones
    (loader workers), leaving out the kernels and their workers: they report their own."""
    (user, system), (live_user, live_system) = own_times(), live_child_times()
    return user + live_user, system + live_system


def own_times() -> tuple[float, float]:
    """User and system seconds of this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + reaped.ru_utime, own.ru_stime + reaped.ru_stime


def live_child_times() -> tuple[float, float]:
    """User and system seconds of the live children, all levels, kernels and theirs left out.
    It reads /proc for every process on the machine: milliseconds, mostly system time."""
    user = system = 0.0
    kernels: set[int] = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if (
                child.pid in kernels
                or child.ppid() in kernels
                or any("ipykernel" in part for part in child.cmdline())
            ):
                kernels.add(child.pid)
                continue
            times = child.cpu_times()
        except psutil.Error:  # it ended meanwhile
            continue
        user, system = user + times.user, system + times.system
    return user, system


@dataclass
class Timing:
    """Wall seconds of a measured span and the kernel's share of the CPU time spent in it.

    For :func:`fmt`, ``wall`` may also hold other seconds of that span (CPU seconds, a
    per-call mean) to be printed beside its share."""

    wall: float = math.nan
    kernel_share: float = math.nan


class Clock:
    """Started when made; :meth:`elapsed` is the span since then (it may be read often).

    The walk over the children (:func:`live_child_times`) stays outside the span, at both
    ends: counted in, its system time inflates the share of short spans (a pure-Python loop
    of 50 ms read 16%)."""

    def __init__(self) -> None:
        live_user, live_system = live_child_times()
        user, system = own_times()
        self.user, self.system = user + live_user, system + live_system
        self.start = time.perf_counter()

    def elapsed(self) -> Timing:
        wall = time.perf_counter() - self.start
        user, system = own_times()
        live_user, live_system = live_child_times()
        user, system = user + live_user - self.user, system + live_system - self.system
        if user < 0 or system < 0 or user + system <= 0:
            # a live child (a loader worker) ended in the span and took its times along
            return Timing(wall, math.nan)
        return Timing(wall, system / (user + system))


@contextmanager
def timed() -> Iterator[Timing]:
    """``with timed() as t: ...``; afterwards ``t.wall`` and ``t.kernel_share`` are set."""
    timing, clock = Timing(), Clock()
    yield timing
    done = clock.elapsed()
    timing.wall, timing.kernel_share = done.wall, done.kernel_share


def measure(fn: Callable[[], object]) -> dict[str, float]:
    """Wall seconds and kernel-time share of one call of ``fn``."""
    with timed() as t:
        fn()
    return asdict(t)


def median(timings: Iterable[Timing]) -> Timing:
    """The median wall time beside the median share (each its own median)."""
    timings = list(timings)
    return Timing(
        statistics.median(t.wall for t in timings),
        statistics.median(t.kernel_share for t in timings),
    )


def kernel(t: Timing) -> str:
    """``"kernel 1.2%"``"""
    return f"kernel {t.kernel_share:.1%}" if math.isfinite(t.kernel_share) else "kernel n/a"


def fmt(t: Timing, spec: str = ".2f", unit: str = "s") -> str:
    """``"12.34 s (kernel 1.2%)"``; ``unit`` is one of s, ms, us, or "" for a bare number."""
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not one of {list(UNITS)}")
    number = f"{t.wall * UNITS[unit]:{spec}}"
    return f"{number} {unit} ({kernel(t)})" if unit else f"{number} ({kernel(t)})"


def _encode(obj: Any) -> Any:
    if isinstance(obj, Timing):
        return {"timing": asdict(obj)}
    raise TypeError(f"not JSON serializable: {obj!r}")


def _decode(obj: dict[str, Any]) -> Any:
    return Timing(**obj["timing"]) if obj.keys() == {"timing"} else obj


def to_json(obj: Any) -> str:
    """JSON with every :class:`Timing` in ``obj`` kept as one, for :func:`from_json`."""
    return json.dumps(obj, default=_encode)


def from_json(text: str) -> Any:
    return json.loads(text, object_hook=_decode)
