"""The one training loop: SGDR per iteration, events for views, safe stops.

How a fit ends (``state.status``):

- ``done``: every planned iteration ran;
- ``stopped``: a handler or the Stop button called ``state.request_stop()``; the loop
  finished the current batch and returned;
- ``interrupted``: a kernel interrupt (SIGINT or KeyboardInterrupt); the model holds the
  weights of the last finished batch, the history is kept, and KeyboardInterrupt is
  raised again so that "Run all" stops too;
- ``diverged``: the loss became NaN or infinite; the weights and optimizer state of the
  last finished epoch (or of the fit's start) are restored, and a warning says so;
- ``failed``: any other exception, re-raised; the model holds the last finished batch.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from nbtrain.core.events import Events
from nbtrain.core.schedules import SGDRSchedule
from nbtrain.core.snapshot import TrainingSnapshot, clone_state_dict
from nbtrain.core.state import EpochRecord, SmoothedLoss, Snapshot, TrainState
from nbtrain.core.stepper import InterruptGuard, Stepper


class DivergedWarning(UserWarning):
    """Training stopped because the loss was not finite; the last good weights are back."""


def fit(
    stepper: Stepper,
    train: Iterable[Any],
    valid: Iterable[Any] | None,
    schedule: SGDRSchedule,
    *,
    events: Events | None = None,
    state: TrainState | None = None,
    on_snapshot: Callable[[Snapshot], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainState:
    """Train ``stepper.model`` on ``train`` following ``schedule``; validate each epoch.

    Parameters
    ----------
    stepper
        Model, optimizer, loss, layer groups and device (see :class:`Stepper`).
    train, valid
        Iterables of ``(inputs, targets)`` batches; ``len(train)`` must equal
        ``schedule.iters_per_epoch``. ``valid=None`` skips validation.
    schedule
        The SGDR plan; the rate of every group at every iteration comes from it.
    events
        Receives ``fit_start`` ... ``fit_end`` with the live :class:`TrainState`.
    state
        Pass one in to keep a handle on it (e.g. a Stop button calls
        ``state.request_stop()`` from another thread).
    on_snapshot
        Called at the end of every cycle with its :class:`Snapshot` (CPU copy of the
        weights and the validation figures).
    """
    events = events or Events()
    state = state or TrainState(schedule=schedule)
    state.schedule = schedule
    smooth = SmoothedLoss()
    last_good = TrainingSnapshot.capture(
        stepper.model, stepper.optimizer, stepper.scaler, rng=False
    )
    start = clock()
    guard = InterruptGuard(on_interrupt=state.request_stop)
    events.emit("fit_start", state)
    try:
        with guard:
            _run(
                stepper,
                train,
                valid,
                schedule,
                events,
                state,
                smooth,
                guard,
                on_snapshot,
                clock,
                start,
                last_good,
            )
    except KeyboardInterrupt:
        _drop_grads(stepper)
        state.status = "interrupted"
        state.message = _where(state, "interrupted")
        raise
    except BaseException:
        _drop_grads(stepper)
        state.status = "failed"
        raise
    finally:
        state.elapsed = clock() - start
        events.emit("fit_end", state)
    if state.status == "interrupted":  # a SIGINT caught by the guard
        raise KeyboardInterrupt(state.message)
    return state


def _run(
    stepper: Stepper,
    train: Iterable[Any],
    valid: Iterable[Any] | None,
    schedule: SGDRSchedule,
    events: Events,
    state: TrainState,
    smooth: SmoothedLoss,
    guard: InterruptGuard,
    on_snapshot: Callable[[Snapshot], None] | None,
    clock: Callable[[], float],
    start: float,
    last_good: TrainingSnapshot,
) -> None:
    ends = set(schedule.cycle_end_epochs)
    it = 0
    stepper.set_train_mode()
    for epoch in range(schedule.epochs):
        state.epoch, state.cycle = epoch, schedule.cycle_of(it)
        if it in schedule.cycle_starts:
            events.emit("cycle_start", state)
        events.emit("epoch_start", state)
        epoch_start, epoch_loss, n_batches = clock(), 0.0, 0
        for batch_index, batch in enumerate(train):
            if batch_index >= schedule.iters_per_epoch:
                break
            state.it, state.batch, state.lrs = it, batch_index, schedule.lrs_at(it)
            events.emit("batch_start", state)
            loss = stepper.train_step(batch, state.lrs, guard)
            if not math.isfinite(loss):
                last_good.restore(stepper.model, stepper.optimizer, stepper.scaler, rng=False)
                state.status = "diverged"
                state.message = (
                    f"loss became {loss} at iteration {it + 1} (epoch {epoch + 1}); "
                    f"restored the weights from {_last_good_label(epoch)}; try a lower rate"
                )
                warnings.warn(state.message, DivergedWarning, stacklevel=3)
                return
            it += 1
            n_batches += 1
            epoch_loss += loss
            state.it, state.loss, state.smooth_loss = it, loss, smooth.update(loss)
            state.losses.append(loss)
            state.elapsed = clock() - start
            events.emit("batch_end", state)
            if state.stop_requested:
                break
        if state.stop_requested and n_batches < schedule.iters_per_epoch:
            _stop(state, guard)
            return
        if n_batches < schedule.iters_per_epoch:
            raise ValueError(
                f"the training loader gave {n_batches} batches, the plan expects "
                f"{schedule.iters_per_epoch} per epoch"
            )
        valid_loss, metrics = stepper.validate(valid) if valid is not None else (None, {})
        state.valid_loss, state.metrics = valid_loss, metrics
        record = EpochRecord(
            epoch=epoch,
            cycle=state.cycle,
            train_loss=epoch_loss / max(n_batches, 1),
            valid_loss=valid_loss,
            metrics=metrics,
            seconds=clock() - epoch_start,
            lrs=state.lrs,
        )
        state.history.append(record)
        state.elapsed = clock() - start
        events.emit("epoch_end", state)
        last_good = TrainingSnapshot.capture(
            stepper.model, stepper.optimizer, stepper.scaler, rng=False
        )
        if epoch in ends:
            if on_snapshot is not None:
                on_snapshot(
                    Snapshot(
                        cycle=state.cycle,
                        epoch=epoch,
                        valid_loss=valid_loss,
                        metrics=dict(metrics),
                        state_dict=clone_state_dict(stepper.model, device="cpu"),
                    )
                )
            events.emit("cycle_end", state)
        if state.stop_requested:
            _stop(state, guard)
            return
    state.status = "done"


def _stop(state: TrainState, guard: InterruptGuard) -> None:
    state.status = "interrupted" if guard.interrupted else "stopped"
    state.message = _where(state, state.status)


def _where(state: TrainState, what: str) -> str:
    return (
        f"{what} after iteration {state.it}/{state.total_iters} "
        f"(epoch {state.epoch + 1}/{state.epochs}); "
        f"the model holds the weights of the last finished batch"
    )


def _last_good_label(epoch: int) -> str:
    return "the start of this fit" if epoch == 0 else f"the end of epoch {epoch}"


def _drop_grads(stepper: Stepper) -> None:
    stepper.optimizer.zero_grad(set_to_none=True)
