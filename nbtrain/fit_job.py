"""Running a fit from a magic: :class:`FitJob` (checked stages plus their view), the worker
thread that keeps the kernel's event loop free, and the input transformer that makes a
``%fit_cycles`` cell awaitable, so that the Stop button works while the cell runs.

How the Stop button reaches a busy kernel
-----------------------------------------
A Jupyter kernel handles a widget click (a ``comm_msg``) on its main thread's event
loop. A synchronous cell blocks that loop, so a click made during training would wait
until the cell ends. ipykernel 7.4 dispatches comm messages *concurrently* while a cell
that awaits holds the execution lock (``kernelbase.shell_main``). So, when widgets are
in use, nbtrain rewrites a cell whose statement is ``%fit_cycles ...`` (or a
``%%fit_cycles`` cell) before IPython compiles it, with an input transformer
(:func:`transform_async_cells`, registered in ``input_transformers_cleanup``), into::

    await __import__('nbtrain.fit_job').fit_job.run_async('fit_cycles', LINE, CELL)

:func:`run_async` parses and checks the magic on the main thread exactly as the
synchronous magic does (same ``UsageError``), displays the progress view, then runs the
fit in a worker thread and awaits it. While the worker trains, the event loop is free:
a Stop click runs ``ProgressView.stop()`` at once, which calls ``learn.request_stop()``;
the loop finishes its batch and returns with status ``stopped``. Trait updates made by
the worker thread render normally; output keeps going to the cell, because the worker
runs in a copy of the cell's context. The cell stays busy until training ends, so
"Run all" still runs the next cells afterwards, in order.

A kernel interrupt (Interrupt button, SIGINT) while the worker trains reaches the
awaiting coroutine as ``CancelledError`` (ipykernel cancels an async cell on SIGINT).
The coroutine sets an event that the worker checks before every batch; the worker
raises ``KeyboardInterrupt`` there, between two whole steps, so the fit ends
``interrupted`` with the learner consistent (weights of the last finished batch, no
stray gradients); the coroutine waits for that and re-raises ``KeyboardInterrupt`` so
"Run all" stops. The core's SIGINT guard is a no-op in the worker (signals only reach
the main thread); a second interrupt does nothing until the batch ends.

The rewrite happens only for a line starting ``%fit_cycles`` at the start of a line (or
a cell starting ``%%fit_cycles``), outside other magics, when widgets are in use
(:func:`nbtrain.views.frontend.use_widgets`). Everywhere else (terminal IPython, text
front end, ``ip.run_line_magic`` in tests, an indented magic) the same code runs
synchronously on the main thread, where the core's SIGINT guard makes an interrupt
stop at a batch boundary. Verified on ipykernel 7.4.0; ipykernel 6 does not dispatch
comms during a cell, so there Stop waits for the cell and the kernel's Interrupt
button is the way to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from IPython.core.error import UsageError

from nbtrain.core.learner import Learner, PrecomputeWarning
from nbtrain.core.loop import DivergedWarning
from nbtrain.core.resume import ResumePoint
from nbtrain.core.stages import Plan, Stage
from nbtrain.views import frontend

T = TypeVar("T")


# ------------------------------------------------------------------- running a fit
class _InterruptCheck:
    """Listener raising KeyboardInterrupt before the next batch once ``event`` is set:
    how a kernel interrupt reaches a fit that runs in a worker thread."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_batch_start(self, state: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt("kernel interrupt")


@contextlib.contextmanager
def routed_warnings(note: Callable[[str], None]) -> Iterator[None]:
    """Show nbtrain's warnings as one line in the view instead of a Python warning.

    ``DivergedWarning`` is dropped: its text is the fit's final status line already.
    """
    with warnings.catch_warnings():
        for category in (PrecomputeWarning, DivergedWarning):
            warnings.simplefilter("always", category)
        warnings.filterwarnings("always", module="nbtrain")
        original = warnings.showwarning

        def show(
            message: Any,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Any = None,
            line: Any = None,
        ) -> None:
            if issubclass(category, DivergedWarning):
                return
            if category.__module__.startswith("nbtrain"):
                note(str(message))
                return
            original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


class _PanelRefresh:
    """Listener redrawing the layer-freeze panels when a stage has changed the freeze
    state (a stage's ``freeze``/``unfreeze`` is applied just before its ``fit_start``)."""

    def __init__(self, learn: Learner) -> None:
        self.learn = learn

    def on_fit_start(self, state: Any) -> None:
        from nbtrain.views.freeze_panel import refresh_panels

        refresh_panels(self.learn)


@dataclass
class FitJob:
    """A checked ``%fit_cycles`` run: the learner, its plan and the view showing it."""

    learn: Learner
    plan: Plan
    view: Any
    handle: Any = None
    listeners: list[Any] = field(default_factory=list)  # beside the view, e.g. an epoch log
    resume: ResumePoint | None = None  # go on with an unfinished run (its plan is ``plan``)
    procs: Any = None  # --procs: the plan was planned for that many processes

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self.plan.stages

    def run(self, interrupt: threading.Event | None = None) -> None:
        """Run the plan's stages in order (``learn.fit_stages``), nbtrain's warnings
        shown as one line in the view; ``interrupt`` set ends it at the next batch."""
        from nbtrain.views.freeze_panel import refresh_panels

        listeners: list[Any] = [self.view, *self.listeners, _PanelRefresh(self.learn)]
        if interrupt is not None:
            listeners.append(_InterruptCheck(interrupt))

        def note(text: str) -> None:
            running = self.learn.running
            if running is not None and len(self.plan) > 1:
                text = f"stage {running.stage + 1}: {text}"
            self.view.note(text)

        try:
            with routed_warnings(note):
                self.learn.fit_stages(
                    self.plan if self.resume is None else self.resume,
                    listeners=listeners,
                    procs=self.procs,
                )
        finally:
            refresh_panels(self.learn)

    def finish(self, error: BaseException | None = None) -> None:
        self.view.finish(error=error)
        if self.handle is not None:  # refresh the text/PNG kept by nbconvert and friends
            self.handle.update(self.view)


async def in_worker(fn: Callable[[], T], interrupt: threading.Event) -> T:
    """Run ``fn`` in a worker thread and await it, keeping the event loop free.

    A cancellation of the awaiting task (ipykernel's answer to SIGINT) sets
    ``interrupt`` and keeps waiting until ``fn`` returns; ``KeyboardInterrupt`` is then
    raised (or ``fn``'s own exception, if it raised one).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    context = contextvars.copy_context()  # output of the worker goes to this cell

    def settle(outcome: tuple[Any, BaseException | None]) -> None:
        if not done.done():
            done.set_result(outcome)

    def target() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (context.run(fn), None)
        except BaseException as exc:  # handed to the awaiting coroutine, never lost
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=target, name="nbtrain-fit", daemon=True).start()
    interrupted = False
    while not done.done():
        try:
            # Wake every 0.1 s: SIGINT may land on another thread, and then Python runs
            # the kernel's handler only when the main thread next runs bytecode.
            await asyncio.wait({done}, timeout=0.1)
        except asyncio.CancelledError:
            interrupted = True
            interrupt.set()
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()  # handled: keep awaiting the worker's last batch
    result, error = done.result()
    if error is not None:
        raise error
    if interrupted:
        raise KeyboardInterrupt("interrupted; the run had already finished")
    return result


PREPARERS: dict[str, Callable[[str, str | None], FitJob]] = {}
"""How each rewritable magic turns its line and cell into a :class:`FitJob`: the magics
register theirs when the extension loads (``%load_ext nbtrain``)."""


async def run_async(magic: str, line: str, cell: str | None = None) -> None:
    """The awaitable form of ``%fit_cycles`` that the input transformer writes (see
    the module docstring): checks and displays on the main thread, trains in a worker."""
    prepare = PREPARERS.get(magic)
    if prepare is None:
        raise UsageError(f"%{magic} is not an nbtrain magic; run %load_ext nbtrain")
    job = prepare(line, cell)
    interrupt = threading.Event()
    error: BaseException | None = None
    try:
        await in_worker(lambda: job.run(interrupt), interrupt)
    except KeyboardInterrupt as exc:
        error = exc
        state = job.view.tracker.last_state
        if state is not None and state.status == "interrupted" and state.message:
            raise KeyboardInterrupt(state.message) from None  # where it stopped, not how
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        job.finish(error)


# ---------------------------------------------------------- the async cell rewrite
_CELL_MAGIC = re.compile(r"%%fit_cycles(?:\s+(.*))?$", re.DOTALL)
_LINE_MAGIC = re.compile(r"%fit_cycles(?:\s+(.*))?$")


def _inside_magic() -> bool:
    """True while a magic runs (e.g. ``%%time`` transforming its body): the rewrite
    only applies to the cell the kernel is about to run."""
    frame: Any = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("run_cell_magic", "run_line_magic") and code.co_filename.endswith(
            "interactiveshell.py"
        ):
            return True
        frame = frame.f_back
    return False


def _call(line: str, cell: str | None = None) -> str:
    args = f"'fit_cycles', {line.strip()!r}" + (f", {cell!r}" if cell is not None else "")
    return f"await __import__('nbtrain.fit_job').fit_job.run_async({args})\n"


def transform_async_cells(lines: list[str]) -> list[str]:
    """Input transformer: ``%fit_cycles``/``%%fit_cycles`` -> ``await run_async(...)``
    when widgets are in use (see the module docstring); other cells pass unchanged."""
    if not lines or not any("fit_cycles" in text for text in lines):
        return lines
    shell = frontend.current_shell()
    if shell is None or not getattr(shell, "autoawait", False) or _inside_magic():
        return lines
    if not frontend.use_widgets(shell):
        return lines
    first = lines[0].rstrip()
    if first.startswith("%%"):
        match = _CELL_MAGIC.match(first)
        if match and not first.endswith("?"):
            return [_call(match.group(1) or "", "".join(lines[1:]))]
        return lines  # another cell magic owns this cell
    out = []
    for text in lines:
        stripped = text.rstrip()
        match = _LINE_MAGIC.match(stripped)
        if match and not stripped.endswith(("?", "\\")):
            out.append(_call(match.group(1) or ""))
        else:
            out.append(text)
    return out
