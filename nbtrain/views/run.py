"""Bookkeeping shared by the live and the text progress views: one run of SGDR stages.

A run is one or more fits (the stages of a ``%%fit_cycles`` cell), each with its own
:class:`~nbtrain.core.schedules.SGDRSchedule`. The core counts iterations, epochs and
cycles per fit; views show them run-wide, so :class:`RunTracker` adds each stage's
offsets and keeps the time of finished stages for a run-wide ETA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nbtrain.core.schedules import SGDRSchedule
from nbtrain.core.stages import Plan, Stage
from nbtrain.core.state import EpochRecord, TrainState, validation_score
from nbtrain.views.format import (
    best_text,
    epoch_cells,
    epoch_columns,
    final_line,
    plan_summary,
)


def stage_label(stage: Stage, schedule: SGDRSchedule) -> str:
    """``unfreeze, size 64: 3 cycles of 1 + 2 + 4 epochs = 7 epochs, ...``."""
    changes = []
    if stage.freeze_to is not None:
        changes.append(
            {0: "unfreeze", -1: "freeze"}.get(stage.freeze_to, f"freeze_to {stage.freeze_to}")
        )
    if stage.size is not None:
        changes.append(f"size {stage.size}")
    if stage.precompute is not None:
        changes.append(f"precompute {'on' if stage.precompute else 'off'}")
    head = ", ".join(changes)
    return f"{head}: {plan_summary(schedule)}" if head else plan_summary(schedule)


def plan_labels(plan: Plan) -> list[str]:
    """A label per stage of ``plan``."""
    return [stage_label(st, sc) for st, sc in zip(plan.stages, plan.schedules, strict=True)]


class RunTracker:
    """Run-wide counters over the stages of one display.

    Parameters
    ----------
    plans
        The planned schedule of every stage, in order. A fit beyond them (a view used
        as a plain listener of ``fit_stages`` or ``fit_cycles`` calls) appends the
        schedules of its run (``state.plan``, from the stage it is on).
    labels
        A short description of each stage (default: its plan summary).
    """

    def __init__(self, plans: Sequence[SGDRSchedule] = (), labels: Sequence[str] = ()) -> None:
        self.plans: list[SGDRSchedule] = list(plans)
        self.labels: list[str] = list(labels) + [plan_summary(p) for p in self.plans[len(labels) :]]
        self.stage = -1  # 0-based index of the running (or last) stage
        self.finished_seconds = 0.0  # training time of the stages already ended
        self.states: list[TrainState] = []
        self.rows: list[dict[str, Any]] = []
        self.row_iters: list[int] = []  # the run-wide iteration at each row's epoch end
        self.cells: list[list[str]] = []
        self.metric_names: list[str] = []
        self.cycle_ends: list[dict[str, Any]] = []  # rows that ended a cycle: the snapshots
        self.best: dict[str, Any] | None = None  # the best of them (see validation_score)
        self._best_score: tuple[float, float] | None = None
        self._recount()

    # ---- offsets (cached: read at every batch) -------------------------------------
    def _recount(self) -> None:
        plans, stage = self.plans, max(self.stage, 0)
        self.total_iters = sum(p.total_iters for p in plans)
        self.total_epochs = sum(p.epochs for p in plans)
        self.total_cycles = sum(p.cycles for p in plans)
        self._it_offset = sum(p.total_iters for p in plans[:stage])
        self._epoch_offset = sum(p.epochs for p in plans[:stage])
        self._cycle_offset = sum(p.cycles for p in plans[:stage])

    @property
    def n_stages(self) -> int:
        return len(self.plans)

    def iter_offset(self) -> int:
        """Iterations of the stages before the running one."""
        return self._it_offset

    def global_it(self, state: TrainState) -> int:
        """Finished iterations of the whole run."""
        return self._it_offset + state.it

    def global_epoch(self, state: TrainState) -> int:
        """1-based epoch of the whole run."""
        return self._epoch_offset + state.epoch + 1

    def global_cycle(self, state: TrainState) -> int:
        """1-based cycle of the whole run."""
        return self._cycle_offset + state.cycle + 1

    def eta(self, state: TrainState) -> float | None:
        """Seconds left in the whole run, from the mean time per finished iteration."""
        done = self.global_it(state)
        if done <= 0:
            return None
        seconds = self.finished_seconds + state.elapsed
        return seconds / done * (self.total_iters - done)

    def seconds(self, state: TrainState | None = None) -> float:
        """Training time so far (finished stages plus the running one)."""
        return self.finished_seconds + (state.elapsed if state is not None else 0.0)

    # ---- events ----------------------------------------------------------------------
    def start_stage(self, state: TrainState) -> None:
        """A stage begins; a run resumed from a checkpoint begins at its stage, with the
        epochs already done (``state.prior`` and ``state.history``) as rows."""
        plan = state.plan
        if state.resumed and self.stage < 0 and plan is not None:
            if not self.plans:  # a view subscribed without a plan: the run's
                self.plans, self.labels = list(plan.schedules), plan_labels(plan)
            if list(plan.schedules) == self.plans:
                self._resume(state)
                return
        self.stage += 1
        if self.stage >= len(self.plans):
            plan = state.plan
            if plan is not None and plan.schedules[state.stage] is state.schedule:
                self.plans.extend(plan.schedules[state.stage :])
                self.labels.extend(plan_labels(plan)[state.stage :])
            else:
                self.plans.append(state.schedule)
                self.labels.append(plan_summary(state.schedule))
        self.states.append(state)
        self._recount()

    def _resume(self, state: TrainState) -> None:
        for index, records in enumerate([*state.prior, state.history]):
            self.stage = index if index < len(state.prior) else state.stage
            self._recount()
            for record in records:
                self._add(record, self.plans[self.stage], fit=-1)
        self.stage = state.stage
        self.states.append(state)
        self._recount()

    def end_epoch(self, state: TrainState) -> list[str]:
        """Record the epoch just finished; returns its table cells."""
        return self._add(state.history[-1], state.schedule, fit=state.fit)

    def _add(self, record: EpochRecord, schedule: SGDRSchedule, *, fit: int) -> list[str]:
        if not self.metric_names:
            self.metric_names = list(record.metrics)
        epoch = self._epoch_offset + record.epoch + 1
        cycle = self._cycle_offset + record.cycle + 1
        stage = self.stage + 1 if self.n_stages > 1 else None
        cells = epoch_cells(record, epoch=epoch, cycle=cycle, stage=stage)
        row = {"stage": self.stage + 1, **record.as_dict(), "epoch": epoch, "cycle": cycle}
        self.rows.append(row)
        self.cells.append(cells)
        self.row_iters.append(self._it_offset + (record.epoch + 1) * schedule.iters_per_epoch)
        if record.epoch in schedule.cycle_end_epochs and fit >= 0:  # a snapshot exists
            self._end_cycle(record, row, fit=fit)
        return cells

    def _end_cycle(self, record: EpochRecord, row: dict[str, Any], *, fit: int) -> None:
        """A cycle ended, so the learner took a snapshot: is it the best of the run?"""
        row = {**row, "fit": fit, "fit_cycle": record.cycle}
        self.cycle_ends.append(row)
        score = validation_score(record.valid_loss, record.metrics)
        if score is not None and (self._best_score is None or score > self._best_score):
            self.best, self._best_score = row, score

    def best_line(self) -> str:
        """Where the run's best cycle end was, beside the last one, and the call that
        goes back to it; "" with fewer than two cycle ends (nothing to choose)."""
        if len(self.cycle_ends) < 2 or self.best is None:
            return ""
        return best_text(
            self.best,
            self.cycle_ends[-1],
            metric=self.metric_names[0] if self.metric_names else None,
            stages=self.n_stages > 1,
        )

    def end_stage(self, state: TrainState) -> None:
        self.finished_seconds += state.elapsed

    def columns(self) -> list[str]:
        return epoch_columns(self.metric_names, stages=self.n_stages > 1)

    # ---- how the run ended -------------------------------------------------------
    @property
    def last_state(self) -> TrainState | None:
        return self.states[-1] if self.states else None

    @property
    def epochs_done(self) -> int:
        return len(self.rows)

    def skipped(self) -> int:
        """Stages planned but never started."""
        return max(self.n_stages - 1 - self.stage, 0)  # a resumed run began at its stage

    def final_line(self, status: str, message: str) -> str:
        """The run's last line: how it ended, epochs and time, skipped stages, best."""
        return final_line(
            status,
            message,
            epochs=self.epochs_done,
            seconds=self.seconds(),
            skipped=self.skipped(),
            best=self.best_line(),
        )
