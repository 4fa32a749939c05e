"""The text fallback: the same events as the live view, one line per epoch.

Used without a widget front end (terminal IPython, scripts, ``NBTRAIN_FRONTEND=text``).
Inside a kernel the lines go into one output through a display handle
(``display(..., display_id=True)``, then ``.update()``), so the cell holds a single,
growing block with a throttled status line at the bottom; elsewhere each line is
printed once, as it happens.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from nbtrain.core.schedules import SGDRSchedule
from nbtrain.core.state import TrainState
from nbtrain.views.format import fmt_seconds, progress_line, text_table
from nbtrain.views.frontend import in_kernel
from nbtrain.views.run import RunTracker


class Stream(Protocol):
    """Where text goes: ``sys.stdout``, a file, the main job's epoch log."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class TextBlock:
    """Text/plain output that grows: one display handle in a kernel, else printed lines."""

    def __init__(self, *, stream: Stream | None = None, live: bool | None = None) -> None:
        self.lines: list[str] = []
        self.status = ""
        self.live = in_kernel() if live is None else live
        self.stream = stream
        self._handle: Any = None

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": self.text()}

    def text(self) -> str:
        return "\n".join(self.lines + ([self.status] if self.status else []))

    def add(self, line: str) -> None:
        """Append a line (printed at once when not in a kernel)."""
        self.lines.append(line)
        if self.live:
            self._show()
        else:
            print(line, file=self.stream or sys.stdout, flush=True)

    def set_status(self, line: str) -> None:
        """The live bottom line (a kernel only; terminals get epoch lines only)."""
        self.status = line
        if self.live:
            self._show()

    def _show(self) -> None:
        from IPython.display import display

        if self._handle is None:
            self._handle = display(self, display_id=True)
        else:
            self._handle.update(self)


class TextProgress:
    """Listener printing a header per stage, a line per epoch and how the run ended.

    Parameters
    ----------
    plans, labels
        As for :class:`nbtrain.views.progress.ProgressView`.
    title
        The first word of the header lines.
    status_interval
        Seconds between updates of the live status line (in a kernel).
    eta
        Add an ``ETA`` column (the whole run's time left) to every epoch row: for logs
        that have no live status line (:mod:`nbtrain.views.epoch_log`).
    """

    def __init__(
        self,
        plans: Sequence[SGDRSchedule] = (),
        *,
        labels: Sequence[str] = (),
        title: str = "fit_cycles",
        status_interval: float = 2.0,
        stream: Stream | None = None,
        live: bool | None = None,
        eta: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tracker = RunTracker(plans, labels)
        self.eta = eta
        self.title = title
        self.block = TextBlock(stream=stream, live=live)
        self.status_interval = status_interval
        self.clock = clock
        self._last_status = -math.inf
        self._header_done = False
        self.notes: list[str] = []
        self.message = ""

    @property
    def lines(self) -> list[str]:
        return self.block.lines

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return self.block._repr_mimebundle_()

    def on_fit_start(self, state: TrainState) -> None:
        tr = self.tracker
        done = len(tr.rows)
        tr.start_stage(state)
        label = tr.labels[tr.stage]
        prefix = f"stage {tr.stage + 1}/{tr.n_stages}: " if tr.n_stages > 1 else ""
        self.block.add(f"{self.title} {prefix}{label}")
        self._header_done = False
        if state.resumed:
            self.block.add(f"resumed: {state.resumed}")
            if len(tr.rows) > done:  # the part already done
                table = text_table(tr.columns(), tr.cells[done:], min_width=7, left_first=False)
                for line in table.splitlines():
                    self.block.add(line)
                self._header_done = True

    def on_batch_end(self, state: TrainState) -> None:
        if not self.block.live:
            return
        now = self.clock()
        if now - self._last_status >= self.status_interval:
            self._last_status = now
            self.block.set_status(self._progress(state))

    def on_epoch_end(self, state: TrainState) -> None:
        tr = self.tracker
        cells = tr.end_epoch(state)  # first: the first epoch sets the metric columns
        columns = tr.columns()
        if self.eta:
            columns, cells = [*columns, "ETA"], [*cells, fmt_seconds(tr.eta(state))]
        table = text_table(columns, [cells], min_width=7, left_first=False).splitlines()
        if not self._header_done:
            self.block.add(table[0])
            self._header_done = True
        self.block.add(table[1])

    def on_fit_end(self, state: TrainState) -> None:
        self.tracker.end_stage(state)
        self.block.status = ""
        if state.status != "running" and state.message:  # done: how (e.g. converged)
            self.block.add(f"{state.status}: {state.message}")

    def _progress(self, state: TrainState) -> str:
        tr = self.tracker
        return progress_line(
            it=tr.global_it(state),
            total=tr.total_iters,
            epoch=tr.global_epoch(state),
            epochs=tr.total_epochs,
            cycle=tr.global_cycle(state),
            cycles=tr.total_cycles,
            eta=tr.eta(state),
            lrs=state.lrs,
            stage=(tr.stage + 1, tr.n_stages),
        )

    def note(self, text: str) -> None:
        """A warning, as one line."""
        if text not in self.notes:
            self.notes.append(text)
            self.block.add(f"warning: {text}")

    def finish(self, *, error: BaseException | None = None) -> str:
        """The run is over: print how it ended; returns that line."""
        tr = self.tracker
        state = tr.last_state
        status = state.status if state is not None else ("failed" if error else "stopped")
        message = state.message if state is not None else (str(error) if error else "")
        if (
            error is not None
            and status in ("running", "done", "failed")
            and not isinstance(error, KeyboardInterrupt)
        ):
            status, message = "failed", f"{type(error).__name__}: {error}"
        self.message = tr.final_line(status, message)
        if status == "done" or tr.skipped() or error is not None:
            self.block.add(self.message)
        else:  # the stage's own line already said why it ended
            self.block.status = ""
            if self.block.live:
                self.block.set_status("")
        return self.message
