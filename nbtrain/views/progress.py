"""Live SGDR progress: one display per run, updated in place, with a Stop button.

:class:`ProgressView` listens to the fit loop's events (pass it as
``learn.fit_cycles(..., listeners=[view])``; ``%fit_cycles`` does). It shows:

- the planned LR curve of every stage, drawn before the first batch, with restarts
  (dotted) and stage boundaries (solid) visible, and a cursor at the current iteration;
- the smoothed training loss and the validation loss of each epoch over that curve;
- a progress bar aligned with the plot's x axis (a cursor that moves every label update);
- iteration, epoch, cycle, ETA and every group's current rate;
- a per-epoch table of losses and metrics, warnings as one line each, a final status line;
- a Stop button: the fit ends at the next batch boundary and the learner stays consistent
  (see :meth:`ProgressView.stop`; how a click reaches a busy kernel is explained in
  :mod:`nbtrain.fit_job`).

Updates change widget traits in place (no ``clear_output``) and are throttled: labels
at most every ``label_interval`` seconds; the plot (a PNG of ~40-80 ms) every
``plot_interval`` seconds, at epoch ends and at the end, but only while the view's
total time stays within ``budget`` (1%) of the training time (a frame is blitted:
5-10 ms; see :class:`ProgressFigure`). ``bench/display_overhead.py``
measures it.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

import ipywidgets as W
import traitlets as T

from nbtrain.core.schedules import SGDRSchedule
from nbtrain.core.state import TrainState
from nbtrain.views.figure import axes_box_px, canvas_png, new_figure
from nbtrain.views.format import html_table, progress_line, text_table
from nbtrain.views.run import RunTracker

WIDTH, HEIGHT = 720, 300
MAX_POINTS = 600  # points of the loss curve drawn; more only cost render time


def sample_iterations(plan: SGDRSchedule, max_points: int = 400) -> list[int]:
    """Iterations at which to draw a plan's curve: evenly spaced, plus both sides of
    every restart so the saw-tooth stays sharp."""
    total = plan.total_iters
    step = max(1, total // max_points)
    its = set(range(0, total, step)) | {total - 1}
    for start in plan.cycle_starts:
        its |= {start, max(start - 1, 0)}
    return sorted(its)


def thin(points: Sequence[tuple[int, float]], max_points: int = MAX_POINTS) -> list:
    """Every k-th point (and the last), so that at most about ``max_points`` remain."""
    if len(points) <= max_points:
        return list(points)
    step = math.ceil(len(points) / max_points)
    return [*points[::step], points[-1]]


class ProgressFigure:
    """The planned LR curve of every stage, with losses and a cursor drawn over it.

    Everything but the two loss curves and the cursor is drawn once and kept as a
    bitmap; a frame restores it and draws those three artists on top (blitting): about
    5-10 ms with the PNG encoding, against ~30 ms for a full draw. A full draw happens
    only when the losses leave the loss axis' range (or use a small part of it).
    """

    def __init__(self, plans: Sequence[SGDRSchedule]) -> None:
        self.fig = fig = new_figure(WIDTH, HEIGHT)
        self.ax = ax = fig.add_axes((0.1, 0.15, 0.8, 0.74))
        self.ax_lr = ax_lr = ax.twinx()
        ax.set_zorder(ax_lr.get_zorder() + 1)  # losses in front of the LR curve
        ax.patch.set_visible(False)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax_lr.set_ylabel("learning rate (last group)", color="#999999")
        ax_lr.tick_params(axis="y", colors="#999999", labelsize=8)
        self._draw_plan(plans)
        (self.train_line,) = ax.plot([], [], color="#1f77b4", lw=1.4, label="train (smoothed)")
        (self.valid_line,) = ax.plot(
            [], [], "o-", color="#ff7f0e", ms=4, lw=1.2, label="valid (per epoch)"
        )
        self.cursor = ax.axvline(0, color="#d62728", lw=1.2)
        ax.legend(loc="upper right", fontsize=8, frameon=False)
        self._dynamic = (self.train_line, self.valid_line, self.cursor)
        for artist in self._dynamic:
            artist.set_animated(True)  # left out of full draws; drawn on the kept bitmap
        self._background: Any = None
        self.full_draws = 0

    def _draw_plan(self, plans: Sequence[SGDRSchedule]) -> None:
        ax, ax_lr = self.ax, self.ax_lr
        offset, xs, ys = 0, [], []
        for s, plan in enumerate(plans):
            for it in sample_iterations(plan):
                xs.append(offset + it)
                ys.append(plan.lrs_at(it)[-1])
            for start in plan.cycle_starts[1:]:
                ax.axvline(offset + start, color="#bbbbbb", ls=":", lw=1)
            if s > 0:
                ax.axvline(offset, color="#777777", lw=1.2)
            if len(plans) > 1:
                ax.text(
                    offset,
                    1.01,
                    f" stage {s + 1}",
                    transform=ax.get_xaxis_transform(),
                    fontsize=8,
                    color="#555555",
                    va="bottom",
                )
            offset += plan.total_iters
        if xs:
            ax_lr.fill_between(xs, ys, color="#dddddd", lw=0)
            ax_lr.plot(xs, ys, color="#aaaaaa", lw=1)
            ax_lr.set_ylim(0, max(ys) * 1.05 or 1.0)
        ax.set_xlim(0, max(offset, 1))
        ax.set_ylim(0, 1)

    def _loss_range(self, train: list[float], valid: list[float]) -> tuple[float, float] | None:
        """A new loss-axis range when the current one does not suit the losses."""
        lo, hi = min(train + valid), max(train, default=-math.inf)
        if len(train) > 10:  # the first batches' loss would squash the rest
            median = sorted(train)[len(train) // 2]
            hi = min(hi, lo + 2.5 * max(median - lo, 1e-3))
        hi = max(hi, *valid) if valid else hi  # every validation loss stays in view
        if train:
            hi = max(hi, train[-1])  # and the loss now, however high (a new stage's start)
        bottom, top = self.ax.get_ylim()
        span = max(hi - lo, 1e-3)
        if (
            self._background is not None
            and bottom <= lo
            and hi <= top
            and span >= 0.3 * (top - bottom)
        ):
            return None
        # Room below: losses fall, and every change of range costs a full draw.
        low = lo - 0.3 * span
        return (max(low, 0.0) if lo >= 0 else low), hi + 0.1 * span

    def png(
        self, train: Sequence[tuple[int, float]], valid: Sequence[tuple[int, float]], cursor: int
    ) -> bytes:
        """Render with the losses so far and the cursor at iteration ``cursor``."""
        points = [p for p in thin(train) if math.isfinite(p[1])]
        valid = [p for p in valid if p[1] is not None and math.isfinite(p[1])]
        self.train_line.set_data([p[0] for p in points], [p[1] for p in points])
        self.valid_line.set_data([p[0] for p in valid], [p[1] for p in valid])
        self.cursor.set_xdata([cursor, cursor])
        losses = ([p[1] for p in points], [p[1] for p in valid])
        limits = self._loss_range(*losses) if losses[0] or losses[1] else None
        canvas = self.fig.canvas
        if limits is not None:
            self.ax.set_ylim(*limits)
        if limits is not None or self._background is None:
            canvas.draw()
            self._background = canvas.copy_from_bbox(self.fig.bbox)
            self.full_draws += 1
        else:
            canvas.restore_region(self._background)
        for artist in self._dynamic:
            self.ax.draw_artist(artist)
        return canvas_png(canvas)


class ProgressView(W.VBox):
    """Live display of one run of SGDR stages (a listener of the fit loop).

    Parameters
    ----------
    plans
        The schedule of every stage (``learn.plan(...)``), drawn before training starts.
    labels
        A short description of each stage, shown in the title.
    learn
        The learner whose ``request_stop()`` the Stop button calls.
    title
        The first line of the display.
    plot_interval, label_interval
        Minimum seconds between plot redraws and between label updates.
    budget
        Largest share of the training thread's CPU time the view may use.
    clock, cpu_clock
        Wall time for the intervals, the thread's CPU time for the budget (tests
        inject fake ones).

    CSS hooks: ``nbtrain-progress`` (the box), ``nbtrain-progress-title``,
    ``nbtrain-progress-plot`` (image), ``nbtrain-progress-bar``,
    ``nbtrain-progress-label``, ``nbtrain-stop`` (Stop button),
    ``nbtrain-progress-table``, ``nbtrain-progress-notes``, ``nbtrain-progress-status``.
    """

    status = T.Unicode("ready", help="ready, running, done, stopped, interrupted, diverged, failed")
    message = T.Unicode(help="the final status line")
    stage = T.Int(0, help="1-based running stage (0 before the first)")
    stages = T.Int(0)
    it = T.Int(0, help="finished iterations of the whole run")
    total_iters = T.Int(0)
    epoch = T.Int(0, help="1-based epoch of the whole run")
    epochs = T.Int(0)
    cycle = T.Int(0, help="1-based cycle of the whole run")
    cycles = T.Int(0)
    eta = T.Float(None, allow_none=True, help="seconds left")
    lrs = T.Tuple(help="each group's current rate")
    stop_requested = T.Bool(False, help="the Stop button was pressed")
    notes = T.List(T.Unicode(), help="warnings, one line each")
    rows: T.List[dict[str, Any]] = T.List(help="one dict per finished epoch")
    redraws = T.Int(0, help="plot renders so far")
    display_seconds = T.Float(0.0, help="CPU seconds spent in this view during training")

    def __init__(
        self,
        plans: Sequence[SGDRSchedule] = (),
        *,
        labels: Sequence[str] = (),
        learn: Any = None,
        title: str = "fit_cycles",
        plot_interval: float = 2.0,
        label_interval: float = 0.25,
        budget: float = 0.01,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
        **kwargs: Any,
    ) -> None:
        self.tracker = RunTracker(plans, labels)
        self.learn = learn
        self.heading = title
        self.plot_interval, self.label_interval, self.budget = plot_interval, label_interval, budget
        self.clock, self.cpu_clock = clock, cpu_clock
        self._stop = threading.Event()  # read by the training thread at every batch
        self._train: list[tuple[int, float]] = []
        self._valid: list[tuple[int, float]] = []
        self._last_label = self._last_plot = -math.inf
        self._draw_cost = 0.01  # a blitted frame; measured at every draw
        self._losses_drawn = False
        self._full_cost, self._full_draws = 0.03, 0
        self._cpu_stage: float | None = None
        self._cpu_done = 0.0
        self._figure: ProgressFigure | None = None
        self._stale = False
        self._seconds = 0.0
        self.title_html = self._part(W.HTML(), "nbtrain-progress-title")
        self.plot = self._part(
            W.Image(format="png", width=str(WIDTH), height=str(HEIGHT)), "nbtrain-progress-plot"
        )
        self.plot.layout = W.Layout(width=f"{WIDTH}px", height=f"{HEIGHT}px")
        self.bar = self._part(W.IntProgress(value=0, min=0, max=1), "nbtrain-progress-bar")
        self.label = self._part(W.Label("waiting for the first batch"), "nbtrain-progress-label")
        self.stop_button = self._part(
            W.Button(
                description="Stop",
                button_style="danger",
                icon="stop",
                tooltip="stop at the end of the current batch",
            ),
            "nbtrain-stop",
        )
        self.stop_button.on_click(lambda _: self.stop())
        self.table = self._part(W.HTML(), "nbtrain-progress-table")
        self.notes_html = self._part(W.HTML(), "nbtrain-progress-notes")
        self.status_html = self._part(W.HTML(), "nbtrain-progress-status")
        super().__init__(
            children=[
                self.title_html,
                self.plot,
                self.bar,
                W.HBox([self.label, self.stop_button]),
                self.table,
                self.notes_html,
                self.status_html,
            ],
            **kwargs,
        )
        self.add_class("nbtrain-progress")
        self._replan()
        self._draw()  # the plan, before the first batch
        self._draw_cost, self._full_cost = 0.01, 0.03  # that draw was cold: forget its cost

    @staticmethod
    def _part(widget: Any, css: str) -> Any:
        widget.add_class(css)
        return widget

    # ---- plan ----------------------------------------------------------------------
    def _replan(self) -> None:
        tr = self.tracker
        self.stages, self.total_iters = tr.n_stages, tr.total_iters
        self.epochs, self.cycles = tr.total_epochs, tr.total_cycles
        self.bar.max = max(tr.total_iters, 1)
        self._figure = ProgressFigure(tr.plans)
        self._full_draws = 0
        left, _, width, _ = axes_box_px(self._figure.ax)
        self.bar.layout = W.Layout(width=f"{width:.0f}px", margin=f"0 0 0 {left:.0f}px")
        self._set_title()

    def _set_title(self) -> None:
        tr = self.tracker
        if tr.n_stages <= 1:
            body = tr.labels[0] if tr.labels else ""
            self.title_html.value = f"<b>{escape(self.heading)}</b> {escape(body)}"
            return
        bold = ' style="font-weight:bold"'
        items = "".join(
            f"<li{bold if i == tr.stage else ''}>{escape(label)}</li>"
            for i, label in enumerate(tr.labels)
        )
        heading = escape(self.heading)
        self.title_html.value = f"<b>{heading}</b>: {tr.n_stages} stages<ol>{items}</ol>"

    # ---- listener: the fit loop's events -----------------------------------------------
    def on_fit_start(self, state: TrainState) -> None:
        cost = self.cpu_clock()
        self._cpu_stage = cost  # the training thread's CPU time at this stage's start
        n_plans = self.tracker.n_stages
        self.tracker.start_stage(state)
        if self.tracker.n_stages != n_plans:
            self._replan()
        self.stage = self.tracker.stage + 1
        self.status = "running"
        self._set_title()
        if state.resumed and self.tracker.rows and not self.rows:  # the part already done
            tr = self.tracker
            self.rows = list(tr.rows)
            done = list(zip(tr.row_iters, tr.rows, strict=True))
            # the training loss of the part already done, one point an epoch (its mean)
            self._train.extend((it, row["train_loss"]) for it, row in done)
            self._valid.extend(
                (it, row["valid_loss"]) for it, row in done if row.get("valid_loss") is not None
            )
            self.table.value = html_table(tr.columns(), tr.cells, css="nbtrain-epochs")
        if state.resumed:
            self.status_html.value = f"resumed: {escape(state.resumed)}"
        if self._stop.is_set():  # Stop pressed before this stage began
            state.request_stop()
        self._spent(cost)

    def on_batch_end(self, state: TrainState) -> None:
        # Every batch: an append, a flag and a clock read (~1 us); the rest is throttled.
        self._train.append((self.tracker._it_offset + state.it, state.smooth_loss))
        if self._stop.is_set():
            state.request_stop()
        now = self.clock()
        if now - self._last_label >= self.label_interval:
            cost = self.cpu_clock()
            self._update_labels(state, now)
            if now - self._last_plot >= self.plot_interval and self._can_draw():
                self._draw(state.it)
            self._spent(cost)

    def on_epoch_end(self, state: TrainState) -> None:
        cost = self.cpu_clock()
        tr = self.tracker
        tr.end_epoch(state)
        if state.valid_loss is not None:  # None: a learner without validation data
            self._valid.append((tr.global_it(state), state.valid_loss))
        self.rows = [*self.rows, tr.rows[-1]]
        self.table.value = html_table(tr.columns(), tr.cells, css="nbtrain-epochs")
        self._update_labels(state, self.clock())
        # The first epoch's end shows the losses whatever the budget says: until then the
        # plot has only the planned curve, on a loss axis that knows nothing of the losses.
        if self._can_draw() or not self._losses_drawn:
            self._draw(state.it)
        self._spent(cost)

    def on_fit_end(self, state: TrainState) -> None:
        cost = self.cpu_clock()
        tr = self.tracker
        tr.end_stage(state)
        self._update_labels(state, self.clock())
        self.status = state.status
        if state.status != "done":
            self.message = state.message or state.status
            self.status_html.value = f"<b>{state.status}</b>: {escape(state.message)}"
        elif state.message:  # done, and how (e.g. trained to convergence)
            self.status_html.value = f"<b>done</b>: {escape(state.message)}"
        if self._can_draw():
            self._draw(state.it)
        else:
            self._stale = True  # finish() draws it, after training
        self._spent(cost)
        if self._cpu_stage is not None:
            self._cpu_done += self.cpu_clock() - self._cpu_stage
        self._cpu_stage = None
        self.display_seconds = self._seconds

    # ---- drawing ---------------------------------------------------------------------
    def _spent(self, start: float) -> None:
        # A plain float: a trait assignment per batch would cost more than the rest.
        self._seconds += self.cpu_clock() - start

    def training_seconds(self) -> float:
        """CPU time of the training thread since the first stage began (view included)."""
        running = self.cpu_clock() - self._cpu_stage if self._cpu_stage is not None else 0.0
        return self._cpu_done + running

    def _can_draw(self) -> bool:
        # The budget is CPU time of the training thread: a descheduled process (a busy
        # machine) neither inflates the cost of a draw nor the time it is compared to.
        # Headroom: labels and table share the budget, and a full draw (~30 ms) may
        # follow a blitted one (~6 ms).
        allowed = 0.75 * self.budget * self.training_seconds()
        return self._seconds + 1.5 * self._draw_cost <= allowed

    def _draw(self, it: int | None = None) -> None:
        if self._figure is None:
            return
        start = self.cpu_clock()
        cursor = (
            self.tracker.iter_offset() + it if it is not None and self.tracker.stage >= 0 else 0
        )
        self.plot.value = self._figure.png(self._train, self._valid, cursor)
        self._losses_drawn = self._losses_drawn or bool(self._train)
        self._last_plot = self.clock()
        cost = self.cpu_clock() - start
        # A smoothed estimate; it never drops below a third of a full draw's cost.
        self._draw_cost = max(0.5 * self._draw_cost + 0.5 * cost, self._full_cost / 3)
        if self._figure.full_draws > self._full_draws:
            self._full_draws, self._full_cost = self._figure.full_draws, cost
        self._stale = False
        self.redraws += 1

    def _update_labels(self, state: TrainState, now: float) -> None:
        tr = self.tracker
        self._last_label = now
        self.display_seconds = self._seconds
        self.it = tr.global_it(state)
        self.epoch, self.cycle = tr.global_epoch(state), tr.global_cycle(state)
        self.eta = tr.eta(state)
        self.lrs = tuple(state.lrs)
        self.bar.value = self.it
        self.label.value = progress_line(
            it=self.it,
            total=self.total_iters,
            epoch=self.epoch,
            epochs=self.epochs,
            cycle=self.cycle,
            cycles=self.cycles,
            eta=self.eta,
            lrs=self.lrs,
            stage=(self.stage, self.stages),
        )

    # ---- actions -----------------------------------------------------------------------
    def stop(self) -> None:
        """The Stop button: end training at the next batch boundary.

        Calls ``learn.request_stop()`` (the running fit stops after its current batch,
        with the model holding that batch's weights) and flags the view, so a stage
        that has not started yet does not start. Safe from any thread.
        """
        self._stop.set()
        self.stop_requested = True
        if self.learn is not None:
            self.learn.request_stop()
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping..."

    def note(self, text: str) -> None:
        """Show a warning as one line (core warnings arrive here, not as tracebacks)."""
        if text in self.notes:
            return
        self.notes = [*self.notes, text]
        self.notes_html.value = "<br>".join(f"&#9888; {escape(n)}" for n in self.notes)

    def finish(self, *, error: BaseException | None = None) -> str:
        """The run is over: final status line and plot, Stop button hidden; returns the
        status line. ``%fit_cycles`` calls it; call it yourself after a fit that used the
        view as a plain listener (the last plot may wait for it, outside the fit's time).
        """
        tr = self.tracker
        state = tr.last_state
        if state is None:
            status = "failed" if error is not None else "stopped"
            message = str(error) if error is not None else "stopped before the first batch"
        else:
            status, message = state.status, state.message
        if (
            error is not None
            and status in ("running", "done", "failed")
            and not isinstance(error, KeyboardInterrupt)
        ):
            status, message = "failed", f"{type(error).__name__}: {error}"
        self.status = status
        self.message = tr.final_line(status, message)
        self.status_html.value = f"<b>{escape(self.message)}</b>"
        self.stop_button.layout.display = "none"
        if self._stale and state is not None:
            self._draw(state.it)
        return self.message

    def text(self) -> str:
        """Everything the view shows, as plain text."""
        tr = self.tracker
        lines = [
            f"{self.heading}: "
            + "; ".join(
                f"stage {i + 1}: {label}" if tr.n_stages > 1 else label
                for i, label in enumerate(tr.labels)
            )
        ]
        lines.append(self.label.value)
        if tr.cells:
            lines.append(text_table(tr.columns(), tr.cells))
        lines += [f"warning: {n}" for n in self.notes]
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = self.text()
        if self.plot.value:
            data["image/png"] = base64.b64encode(self.plot.value).decode("ascii")
        return data
