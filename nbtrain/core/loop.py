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

``on_checkpoint(state, position)`` is called at every epoch end and once more as the fit
ends, however it ends (``state.status`` says how), with the :class:`Position` to resume
from; passing that position back as ``start`` continues the fit exactly (see
:mod:`nbtrain.core.resume`).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

from nbtrain.core.events import Events
from nbtrain.core.resume import BoundaryStates, Position, RNGStates, loader_generator
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
    on_checkpoint: Callable[[TrainState, Position], None] | None = None,
    start: Position | None = None,
    patience: int | None = None,
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
    on_checkpoint
        Called with the state and the :class:`Position` at every epoch end and as the
        fit ends (not after a divergence: the weights are back at an earlier epoch).
    start
        A :class:`Position` written by an earlier, unfinished run of this schedule:
        the fit goes on from there (``state.history`` should hold the epochs before).
    patience
        End the fit (``done``) after this many epochs without a lower validation loss,
        and put the best epoch's weights back, also when the schedule runs out first.
    """
    events = events or Events()
    state = state or TrainState(schedule=schedule)
    state.schedule = schedule
    run = _Run(stepper, train, valid, events, state, on_snapshot, on_checkpoint, start, clock)
    run.patience = patience
    events.emit("fit_start", state)
    try:
        with run.guard:
            run.epochs()
        if run.patience is not None and state.status == "done":
            run.keep_best()
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
        state.elapsed = clock() - run.start
        try:
            run.checkpoint()
        finally:
            events.emit("fit_end", state)
    if state.status == "interrupted":  # a SIGINT caught by the guard
        raise KeyboardInterrupt(state.message)
    return state


class _Run:
    """One fit's loop over epochs and batches, and what it keeps between them."""

    def __init__(
        self,
        stepper: Stepper,
        train: Iterable[Any],
        valid: Iterable[Any] | None,
        events: Events,
        state: TrainState,
        on_snapshot: Callable[[Snapshot], None] | None,
        on_checkpoint: Callable[[TrainState, Position], None] | None,
        start: Position | None,
        clock: Callable[[], float],
    ) -> None:
        self.stepper, self.train, self.valid = stepper, train, valid
        self.events, self.state, self.on_snapshot, self.clock = events, state, on_snapshot, clock
        self.on_checkpoint = on_checkpoint
        self.schedule = state.schedule
        self.generator = loader_generator(train)
        self.rng = BoundaryStates(self.generator)
        # Where the fit is; ``resuming`` until the first epoch has gone on from ``start``.
        self.position = start if start is not None else Position()
        self.resuming = start is not None
        self.smooth = SmoothedLoss()
        self.smooth.count, self.smooth.avg = self.position.smooth_count, self.position.smooth_avg
        self.guard = InterruptGuard(on_interrupt=state.request_stop)
        # The weights a divergence goes back to: the fit's start, then each epoch's end.
        self.last_good = self._capture()
        self.patience: int | None = None
        self.best: dict[str, Any] | None = None  # the best epoch's weights (with patience)
        resumed_mid_epoch = start is not None and (start.batch > 0 or start.validating)
        self.last_good_label = (
            "where this fit was resumed"
            if resumed_mid_epoch
            else _last_good_label(self.position.epoch)
        )
        self.start = clock() - self.position.elapsed
        self.epoch_start = clock() - self.position.epoch_seconds

    def checkpoint(self) -> None:
        """Hand the position to ``on_checkpoint`` (not after a divergence: the weights
        went back to an epoch's start, which the position no longer describes)."""
        if self.on_checkpoint is not None and self.state.status != "diverged":
            self.position.elapsed = self.state.elapsed
            self.on_checkpoint(self.state, self.position)

    def _capture(self) -> TrainingSnapshot:
        s = self.stepper
        return TrainingSnapshot.capture(s.model, s.optimizer, s.scaler, rng=False)

    def epochs(self) -> None:
        """Every planned epoch; sets ``state.status`` unless an exception ends the fit."""
        schedule, state, events = self.schedule, self.state, self.events
        ends = set(schedule.cycle_end_epochs)
        position = self.position
        self.stepper.set_train_mode()
        for epoch in range(position.epoch, schedule.epochs):
            first_it = epoch * schedule.iters_per_epoch
            state.it, state.epoch, state.cycle = position.it, epoch, schedule.cycle_of(first_it)
            if first_it in schedule.cycle_starts and position.batch == 0:
                events.emit("cycle_start", state)
            events.emit("epoch_start", state)
            self.epoch_start = self.clock() - position.epoch_seconds  # a resumed epoch's too
            n_batches, epoch_loss = self.batches(epoch)
            if n_batches is None:
                return  # diverged
            if state.stop_requested and n_batches < schedule.iters_per_epoch:
                _stop(state, self.guard)
                return
            if n_batches < schedule.iters_per_epoch:
                raise ValueError(
                    f"the training loader gave {n_batches} batches, the plan expects "
                    f"{schedule.iters_per_epoch} per epoch"
                )
            # A spent loader may still draw (a RandomSampler draws once more at its end).
            position.validating, position.rng_now = True, RNGStates.capture(self.generator)
            position.epoch_seconds = self.clock() - self.epoch_start
            self.end_epoch(epoch, epoch_loss / max(n_batches, 1), position.epoch_seconds)
            if epoch in ends:
                self.end_cycle(epoch)
            # The next epoch starts here: its random states are today's.
            position.epoch, position.batch, position.epoch_loss = epoch + 1, 0, 0.0
            position.validating, position.epoch_seconds = False, 0.0
            position.rng_epoch = RNGStates.capture(self.generator)
            stalled = self.patience is not None and self._stalled()
            if epoch + 1 < schedule.epochs and not stalled:
                self.checkpoint()  # the last one is written as the fit ends
            if state.stop_requested:
                _stop(state, self.guard)
                return
            if stalled:
                break
        state.status = "done"

    def _best_epoch(self) -> int | None:
        """Index in ``state.history`` of the lowest validation loss (the first of equals)."""
        losses = [
            (r.valid_loss, i) for i, r in enumerate(self.state.history) if r.valid_loss is not None
        ]
        return min(losses)[1] if losses else None

    def _stalled(self) -> bool:
        """With patience: no lower validation loss in the last ``patience`` epochs."""
        best = self._best_epoch()
        return best is not None and len(self.state.history) - 1 - best >= (self.patience or 0)

    def keep_best(self) -> None:
        """The best epoch's weights back, and a line saying what happened."""
        state, best = self.state, self._best_epoch()
        if best is None:
            return
        record = state.history[best]
        epochs = len(state.history)
        why = (
            f"no lower validation loss in {epochs - 1 - best} epochs"
            if epochs < self.schedule.epochs
            else f"the {epochs} planned epochs ran"
        )
        if best == epochs - 1:
            kept = "the last epoch's weights are the best"
        elif self.best is not None and self.best["epoch"] == record.epoch:
            weights = {k: v.to(self.stepper.device) for k, v in self.best["weights"].items()}
            self.stepper.model.load_state_dict(weights)
            kept = f"the weights of epoch {record.epoch + 1} (the best) are back"
        else:  # its weights were before a resume: not kept across it
            kept = (
                f"epoch {record.epoch + 1} was best, but its weights were not kept across a resume"
            )
        state.message = f"trained to convergence in {epochs} epochs ({why}); {kept}"

    def _epoch_batches(self) -> Iterator[Any]:
        """The epoch's batches, from where the position says.

        A new epoch records the random states before the loader draws its order. A
        resumed one restores them, draws the same batches again and drops those already
        trained on (which leaves the loader's generator, sampler and workers where they
        were), then restores the global random states of that batch boundary.
        """
        position = self.position
        if not self.resuming:
            position.rng_epoch = self.rng.epoch_start()
            return iter(self.train)
        self.resuming = False
        epoch, now = position.rng_epoch, position.rng_now
        if epoch is None or (now is None and (position.validating or position.batch > 0)):
            raise ValueError("the position to resume from has no random states")
        if position.validating and now is not None:  # every batch ran; the loader is spent
            now.restore(self.generator)
            # the epoch is validated and recorded again (a record kept from an interrupted
            # epoch_end handler would be there twice)
            state = self.state
            state.history = [r for r in state.history if r.epoch < position.epoch]
            state.lrs = self.schedule.lrs_at(max(position.it - 1, 0))
            return iter(())
        epoch.restore(self.generator)
        self.rng.epoch_start(epoch)
        batches = iter(self.train)
        for _ in range(position.batch):
            next(batches)
        if position.batch > 0 and now is not None:
            now.restore(self.generator, loader=False)  # the replay put the loader's back
        return batches

    def batches(self, epoch: int) -> tuple[int | None, float]:
        """One epoch's training batches, from the position's: how many ran in all and
        their summed loss; ``(None, ...)`` when the loss diverged (the last good
        weights are back and ``state`` says so)."""
        schedule, state, events, position = self.schedule, self.state, self.events, self.position
        n_batches, epoch_loss, it = position.batch, position.epoch_loss, position.it
        for batch in self._epoch_batches():
            if n_batches >= schedule.iters_per_epoch:
                break
            state.it, state.lrs = it, schedule.lrs_at(it)
            events.emit("batch_start", state)
            loss = self.stepper.train_step(batch, state.lrs, self.guard, hold=True)
            if not math.isfinite(loss):
                s = self.stepper
                self.last_good.restore(s.model, s.optimizer, s.scaler, rng=False)
                state.status = "diverged"
                state.message = (
                    f"loss became {loss} at iteration {it + 1} (epoch {epoch + 1}); "
                    f"restored the weights from {self.last_good_label}; try a lower rate"
                )
                warnings.warn(state.message, DivergedWarning, stacklevel=user_stacklevel())
                return None, epoch_loss
            it += 1
            n_batches += 1
            epoch_loss += loss
            state.it, state.loss, state.smooth_loss = it, loss, self.smooth.update(loss)
            state.elapsed = self.clock() - self.start
            # A boundary to resume from: before the next batch is drawn.
            position.it, position.batch, position.epoch_loss = it, n_batches, epoch_loss
            position.smooth_count, position.smooth_avg = self.smooth.count, self.smooth.avg
            position.rng_now = self.rng.boundary()
            position.epoch_seconds = self.clock() - self.epoch_start
            self.guard.raise_pending()  # a second Ctrl-C in the step: the position is whole
            events.emit("batch_end", state)
            if state.stop_requested and n_batches < schedule.iters_per_epoch:
                break  # (after the last batch, the loader is let run out: it may still draw)
        return n_batches, epoch_loss

    def end_epoch(self, epoch: int, train_loss: float, seconds: float) -> None:
        """Validate, record the epoch, and keep its weights as the last good ones."""
        state = self.state
        valid = self.valid
        valid_loss, metrics = self.stepper.validate(valid) if valid is not None else (None, {})
        state.valid_loss, state.metrics = valid_loss, metrics
        state.history.append(
            EpochRecord(
                epoch=epoch,
                cycle=state.cycle,
                train_loss=train_loss,
                valid_loss=valid_loss,
                metrics=metrics,
                seconds=seconds,
                lrs=state.lrs,
            )
        )
        state.elapsed = self.clock() - self.start
        if self.patience is not None and self._best_epoch() == len(state.history) - 1:
            weights = clone_state_dict(self.stepper.model, device="cpu")
            self.best = {"epoch": epoch, "weights": weights}
        self.events.emit("epoch_end", state)
        self.last_good = self._capture()
        self.last_good_label = _last_good_label(epoch + 1)

    def end_cycle(self, epoch: int) -> None:
        """The cycle's snapshot: its weights (on the CPU) and validation figures."""
        state = self.state
        if self.on_snapshot is not None:
            self.on_snapshot(
                Snapshot(
                    cycle=state.cycle,
                    epoch=epoch,
                    valid_loss=state.valid_loss,
                    metrics=dict(state.metrics),
                    state_dict=clone_state_dict(self.stepper.model, device="cpu"),
                )
            )
        self.events.emit("cycle_end", state)


def user_stacklevel() -> int:
    """The ``stacklevel`` of a warning for the first caller outside nbtrain's core (so
    the warning names the user's line, however many core frames lie between)."""
    core = os.path.dirname(os.path.abspath(__file__))
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == core:
        frame, level = frame.f_back, level + 1
    return level


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
