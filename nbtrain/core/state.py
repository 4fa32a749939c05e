"""Dataclasses that cross the core's boundary: the live training state and its history."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nbtrain.core.schedules import SGDRSchedule

if TYPE_CHECKING:
    from nbtrain.core.stages import Plan


@dataclass
class EpochRecord:
    """One row of the per-epoch table.

    ``epoch`` and ``cycle`` count from 0 within the fit, like the iteration counter; the
    progress views show them from 1 (``epoch + 1``).
    """

    epoch: int
    cycle: int
    train_loss: float
    valid_loss: float | None
    metrics: dict[str, float]
    seconds: float
    lrs: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "cycle": self.cycle,
            "train_loss": self.train_loss,
            "valid_loss": self.valid_loss,
        }
        row.update(self.metrics)
        row["seconds"] = self.seconds
        return row


@dataclass
class Snapshot:
    """An SGDR snapshot: the weights at the end of one cycle, kept on the CPU.

    ``cycle`` and ``epoch`` count from 0 within the fit; ``fit`` is the fit's index in
    ``learn.fits`` (one stage of a ``%%fit_cycles`` cell is one fit), -1 when unknown.
    """

    cycle: int
    epoch: int
    valid_loss: float | None
    metrics: dict[str, float]
    state_dict: dict[str, Any] = field(repr=False)
    fit: int = -1

    def score(self, metric: str | None = None) -> tuple[float, float] | None:
        """See :func:`validation_score`."""
        return validation_score(self.valid_loss, self.metrics, metric)


def validation_score(
    valid_loss: float | None, metrics: dict[str, float], metric: str | None = None
) -> tuple[float, float] | None:
    """Sort key of a validation result, higher is better: ``metric`` (default: the
    first one; higher is better), then the lower loss; the loss alone without metrics.
    None without a finite figure to rank by."""
    loss = valid_loss if valid_loss is not None else math.nan
    name = metric if metric is not None else next(iter(metrics), None)
    if name is None:
        return None if math.isnan(loss) else (-loss, 0.0)
    if name not in metrics:
        raise ValueError(f"no metric {name!r} in the snapshots; they have {', '.join(metrics)}")
    value = metrics[name]
    if math.isnan(value):
        return None
    return (value, -loss if not math.isnan(loss) else -math.inf)


def best_snapshot(snapshots: Sequence[Snapshot], metric: str | None = None) -> Snapshot | None:
    """The snapshot with the best validation figure (see :meth:`Snapshot.score`); the
    earliest among equals. None when no snapshot has one."""
    best, best_score = None, None
    for snapshot in snapshots:
        score = snapshot.score(metric)
        if score is not None and (best_score is None or score > best_score):
            best, best_score = snapshot, score
    return best


def select_snapshot(
    snapshots: Sequence[Snapshot],
    n_fits: int,
    index: int | str = -1,
    *,
    fit: int | None = None,
    cycle: int | None = None,
) -> Snapshot:
    """The snapshot ``Learner.load_snapshot`` means: ``index`` into ``snapshots`` (``-1``
    the last), ``"best"`` (:func:`best_snapshot`), or the end of cycle ``cycle`` of fit
    ``fit`` (of ``n_fits``; both from 0, or negative from the end). ValueError, in one
    line, for anything that names no snapshot."""
    if not snapshots:
        raise ValueError("no snapshots yet; they are taken at the end of each cycle")
    if fit is not None or cycle is not None:
        if index != -1:
            raise ValueError("give a snapshot index or fit= and cycle=, not both")
        return _snapshot_of(snapshots, n_fits, fit, cycle)
    if index == "best":
        best = best_snapshot(snapshots)
        if best is None:
            raise ValueError("no snapshot has a finite validation figure to rank by")
        return best
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(
            f"a snapshot index is a whole number, got {index!r} (or 'best', or fit= and cycle=)"
        )
    count = len(snapshots)
    if not -count <= index < count:
        raise ValueError(
            f"no snapshot {index}; there are {count} (0..{count - 1}, or -1..-{count} from the end)"
        )
    return snapshots[index]


def _snapshot_of(
    snapshots: Sequence[Snapshot], fits: int, fit: int | None, cycle: int | None
) -> Snapshot:
    for name, value in (("fit", fit), ("cycle", cycle)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} is a whole number, got {value!r}")
    fit = -1 if fit is None else fit
    if not -fits <= fit < fits:
        raise ValueError(f"no fit {fit}; there are {fits} (0..{fits - 1}, or -1..-{fits})")
    fit %= fits
    of_fit = [s for s in snapshots if s.fit == fit]
    if not of_fit:
        raise ValueError(f"fit {fit} ended no cycle, so it left no snapshot")
    cycle = -1 if cycle is None else cycle
    count = len(of_fit)
    if not -count <= cycle < count:
        raise ValueError(
            f"fit {fit} has snapshots of {count} "
            f"{'cycle' if count == 1 else 'cycles'}; no cycle {cycle}"
        )
    return of_fit[cycle]


@dataclass
class TrainState:
    """What the loop knows at each event; views read it, only the loop writes it.

    ``it`` counts finished iterations of this fit (0-based index of the current batch
    while it runs), ``epoch`` and ``cycle`` are 0-based; ``fit`` is this fit's index in
    ``learn.fits`` (-1 outside a Learner), ``run`` the name of its ``fit_stages`` run (its
    checkpoints' prefix; a resumed run keeps it). ``plan`` is the whole run this fit is stage
    ``stage`` (0-based) of, when it runs under ``learn.fit_stages``: views read the run's
    schedules there at the first ``fit_start``. ``lrs`` holds the rate of every
    layer group for the current iteration. ``smooth_loss`` is the debiased exponential
    moving average (beta 0.98) of the training loss.

    A fit that goes on from a checkpoint (``learn.resume()``) has ``resumed`` set to
    where it went on from, ``history`` holding its epochs before, and ``prior`` the
    histories of the run's earlier stages, so that a view can show the part already done.
    """

    schedule: SGDRSchedule
    fit: int = -1
    run: str = ""
    plan: Plan | None = field(default=None, repr=False)
    stage: int = 0
    it: int = 0
    epoch: int = 0
    cycle: int = 0
    lrs: tuple[float, ...] = ()
    loss: float = math.nan
    smooth_loss: float = math.nan
    valid_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[EpochRecord] = field(default_factory=list)
    elapsed: float = 0.0
    status: str = "running"  # running | done | stopped | interrupted | diverged | failed
    message: str = ""
    resumed: str = ""
    prior: list[list[EpochRecord]] = field(default_factory=list, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def total_iters(self) -> int:
        return self.schedule.total_iters

    @property
    def epochs(self) -> int:
        return self.schedule.epochs

    @property
    def cycles(self) -> int:
        return self.schedule.cycles

    @property
    def eta(self) -> float | None:
        """Seconds left, from the mean time per finished iteration (None before one)."""
        if self.it <= 0:
            return None
        return self.elapsed / self.it * (self.total_iters - self.it)

    def request_stop(self) -> None:
        """Ask the loop to stop at the next batch boundary (safe from any thread)."""
        self._stop.set()

    def __getstate__(self) -> dict[str, Any]:
        # A state crosses processes (a distributed fit's rank 0 sends it to the notebook)
        # without its Stop flag: a request to stop is for the process that holds it.
        values = dict(self.__dict__)
        values.pop("_stop", None)
        return values

    def __setstate__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self._stop = threading.Event()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()


class SmoothedLoss:
    """Debiased exponential moving average, as fastai and Lightning smooth the loss."""

    def __init__(self, beta: float = 0.98) -> None:
        self.beta = beta
        self.count = 0
        self.avg = 0.0

    def update(self, value: float) -> float:
        self.count += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        return self.value

    @property
    def value(self) -> float:
        if self.count == 0:
            return math.nan
        return self.avg / (1 - self.beta**self.count)
