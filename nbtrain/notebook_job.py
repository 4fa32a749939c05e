"""The main job: execute the checklist notebook headless, and keep what it made.

    python -m nbtrain.notebook_job                    # generated shapes data set (offline)
    python -m nbtrain.notebook_job --data PATH        # your photos (see --data)
    python -m nbtrain.notebook_job --out out/run.ipynb --timeout 3600

The notebook runs cell by cell in a real Jupyter kernel (nbclient). The terminal shows
each cell as it starts (its number and first line), what it prints, and every epoch
of a fit (stage, epoch, losses, accuracy, ETA: the kernel appends them to a log file
named in $NBTRAIN_EPOCH_LOG, see nbtrain.views.epoch_log, and the job prints them).

What it leaves, next to --out: the executed notebook (rewritten after every cell, so it
holds the run as far as it got), the epoch log (.log), models/NAME.pth for every Learner
in the kernel's namespace (saved after each fit cell and at the end), and, when every cell
ran, NAME.pt2: the model exported for inference (``nbtrain.load_model``), whose path is
the last line printed.

A cell has no time limit unless --timeout gives one (a long fit is legitimate). When a
cell fails, times out (the kernel is interrupted: a fit stops at its next batch), or the
job gets Ctrl-C or SIGTERM (the same interrupt; a second one stops at once, unsaved), the
weights are saved in the same kernel before it shuts down. A dead kernel saves nothing:
what trained since the last save is lost, and the job says so.

Exit status: 0 when every cell ran and one printed "final accuracy", 1 otherwise,
130 after Ctrl-C, 143 after SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "checklist.ipynb"
SAVED_MARK = "nbtrain-job-saved:"
EXPORTED_MARK = "nbtrain-job-exported:"
JOB_CELL = "nbtrain_job"  # metadata key of the cell the job runs itself
BEST_LINE = re.compile(r"best\b", re.IGNORECASE)
SIGNAL_EXIT: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
# nbclient logs these as errors; the job reports the same events in its own words
REPORTED = ("Timeout waiting for execute reply", "Interrupting kernel", "Kernel died")


def kernel_cpu_times(km: Any) -> tuple[float, float] | None:
    """User and system CPU seconds of the kernel process and its children (loader
    workers, live and reaped), or None when they cannot be read. A high system share
    means page faults: the allocator's work undone (see nbtrain/core/cpu.py)."""
    try:
        import psutil

        process = psutil.Process(km.provisioner.pid)
        times = process.cpu_times()
        user = times.user + times.children_user
        system = times.system + times.children_system
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                user, system = user + child_times.user, system + child_times.system
        return user, system
    except Exception:  # an old jupyter_client, no psutil, the kernel gone: say nothing
        return None


def save_learners(namespace: dict[str, Any], folder: str | os.PathLike) -> dict[str, str]:
    """Save every nbtrain Learner in ``namespace`` as ``folder/NAME.pth``.

    Runs in the kernel (the job's save cell passes ``globals()``). Names starting with
    ``_`` (IPython's output history) are skipped; a learner held under several names is
    saved once, under the first. Returns ``{name: path}``.
    """
    return {
        name: str(learn.save(Path(folder) / f"{name}.pth")) for name, learn in _learners(namespace)
    }


def export_learners(namespace: dict[str, Any], folder: str | os.PathLike) -> dict[str, str]:
    """Export every nbtrain Learner in ``namespace`` as ``folder/NAME.pt2`` (see
    :meth:`nbtrain.Learner.export`); runs in the kernel. Returns ``{name: path}``."""
    return {
        name: str(learn.export(Path(folder) / f"{name}.pt2"))
        for name, learn in _learners(namespace)
    }


def _learners(namespace: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every nbtrain Learner in ``namespace``, once each, under its first name; names
    starting with ``_`` (IPython's output history) are skipped."""
    from nbtrain.core.learner import Learner

    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for name, value in list(namespace.items()):
        if isinstance(value, Learner) and not name.startswith("_") and id(value) not in seen:
            seen.add(id(value))
            found.append((name, value))
    return found


def _export_source(folder: Path) -> str:
    return (
        "from nbtrain.notebook_job import export_learners as _nbtrain_export\n"
        f"print({EXPORTED_MARK!r}, __import__('json').dumps(_nbtrain_export(globals(), "
        f"{str(folder)!r})))\n"
        "del _nbtrain_export\n"
    )


def _save_source(folder: Path) -> str:
    return (
        "from nbtrain.notebook_job import save_learners as _nbtrain_save\n"
        f"print({SAVED_MARK!r}, __import__('json').dumps(_nbtrain_save(globals(), "
        f"{str(folder)!r})))\n"
        "del _nbtrain_save\n"
    )


def first_line(source: str) -> str:
    line = next((text for text in source.strip().splitlines() if text.strip()), "")
    return line if len(line) <= 100 else line[:97] + "..."


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def ensure_async(value: Any) -> Any:
    """Await ``value`` if it is awaitable (kernel managers may be sync or async)."""
    return await value if inspect.isawaitable(value) else value


def _clock(seconds: float) -> str:
    from nbtrain.views.format import fmt_seconds

    return fmt_seconds(seconds)


@dataclass
class Outcome:
    """How the run ended: ``done``, ``failed``, ``timeout``, ``interrupted``, ``dead``
    (the kernel died) or ``aborted`` (a second Ctrl-C)."""

    status: str = "done"
    cell: int | None = None  # execution number of the cell that ended the run
    detail: str = ""  # one line: the error, or how it was interrupted
    signum: int | None = None  # the signal that stopped the job
    saved: dict[str, str] = field(default_factory=dict)
    saved_when: str = ""  # "after cell [8]", "at the end", ...
    save_error: str = ""
    exported: dict[str, str] = field(default_factory=dict)  # {name: path of NAME.pt2}
    export_error: str = ""
    cells_run: int = 0


def _quiet_log() -> logging.Logger:
    """nbclient's logger, minus the errors the job reports itself; other warnings show."""
    log = logging.getLogger("nbtrain.notebook_job.nbclient")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("nbclient: %(message)s"))
        handler.addFilter(lambda record: not record.getMessage().startswith(REPORTED))
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.WARNING)
    return log


def _client_class() -> type:
    from nbclient import NotebookClient

    class EchoingClient(NotebookClient):
        """A NotebookClient that also hands each chunk of a cell's stdout to ``echo``."""

        echo: Callable[[str], None] | None = None

        def output(self, outs: Any, msg: Any, display_id: Any, cell_index: int) -> Any:
            out = super().output(outs, msg, display_id, cell_index)
            content = msg.get("content", {})
            if self.echo and msg["msg_type"] == "stream" and content.get("name") == "stdout":
                self.echo(content.get("text", ""))
            return out

    return EchoingClient


class NotebookJob:
    """One headless run of a notebook: its cells, the saves, the files it writes."""

    def __init__(
        self,
        notebook: Path,
        out: Path,
        *,
        env: dict[str, str],
        timeout: int | None = None,
    ) -> None:
        import nbformat

        self.nbformat = nbformat
        self.notebook, self.out = notebook, out
        self.models = out.parent / "models"
        self.log_path = out.with_suffix(".log")
        self.timeout = timeout
        self.print = functools.partial(print, flush=True)
        self.nb = nbformat.read(notebook, as_version=4)
        self.outcome = Outcome()
        self.stdout_lines: list[str] = []  # everything the notebook's cells printed
        self.kernel_cpu: tuple[float, float] | None = None  # (user, system) s, at the end
        self._partial = ""
        self._log_offset = 0
        self._running = False  # a notebook cell (not a save) is executing
        self._saving = False
        self._interrupt: asyncio.Future | None = None
        self._kill: asyncio.Future | None = None
        self._sockets = Path(tempfile.mkdtemp(prefix="nbtrain-kernel-"))
        out.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        self.env = {**env, "NBTRAIN_EPOCH_LOG": str(self.log_path.resolve())}
        self.client = self._make_client()

    def _make_client(self) -> Any:
        from traitlets.config import Config

        config = Config()
        if os.name != "nt":
            # IPC sockets in a private folder: no "running over TCP without encryption"
            # warning from the kernel, and no port that another user could reach
            config.KernelManager.transport = "ipc"
            config.KernelManager.ip = str(self._sockets / "kernel")
        client = _client_class()(
            self.nb,
            config=config,
            kernel_name="python3",
            timeout_func=self._cell_timeout,
            interrupt_on_timeout=True,  # a timed-out cell gets KeyboardInterrupt
            log=_quiet_log(),
            resources={"metadata": {"path": str(self.notebook.parent.resolve())}},
        )
        client.echo = self._echo
        return client

    def _cell_timeout(self, cell: Any) -> int | None:
        return None if JOB_CELL in cell.get("metadata", {}) else self.timeout

    # ---- what the terminal shows ---------------------------------------------------
    def _echo(self, text: str) -> None:
        if self._saving:
            return
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.stdout_lines.append(line)
            self.print(f"    {line}")

    def _flush_echo(self) -> None:
        if self._partial:
            self._echo("\n")

    def _drain_log(self) -> None:
        """Print the epoch log's new complete lines."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self._log_offset += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            self.print(f"    {line}")

    async def _tail_log(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._drain_log()

    # ---- signals ---------------------------------------------------------------------
    def _on_signal(self, signum: int) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.outcome.signum is None:
            self.outcome.signum = signum
            if self._running:
                self.print(
                    f"{name}: interrupting the kernel; a fit stops after its batch, "
                    f"then the weights are saved ({name} again: stop now, unsaved)"
                )
                self._interrupt = asyncio.ensure_future(
                    ensure_async(self.client.km.interrupt_kernel())
                )
            else:
                self.print(f"{name}: stopping after this step ({name} again: stop now)")
            return
        self.print(
            f"{name} again: shutting the kernel down now; the weights since the last save are lost"
        )
        self.outcome.status = "aborted"
        self._kill = asyncio.ensure_future(ensure_async(self.client.km.shutdown_kernel(now=True)))

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in SIGNAL_EXIT:
            # replaces nbclient's handlers, which would shut the kernel down at once;
            # NotImplementedError: Windows; RuntimeError: not the main thread
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._on_signal, signum)

    # ---- running ---------------------------------------------------------------------
    async def run(self) -> Outcome:
        """Run every cell, save the weights, write the notebook; returns the outcome."""
        client = self.client
        started = time.monotonic()
        try:
            async with client.async_setup_kernel(env=self.env):
                self._install_signals()
                tail = asyncio.ensure_future(self._tail_log())
                try:
                    info = await client.async_wait_for_reply(
                        await ensure_async(client.kc.kernel_info())
                    )
                    if info and "language_info" in info["content"]:
                        self.nb.metadata["language_info"] = info["content"]["language_info"]
                    await self._run_cells()
                    if self.outcome.status not in ("dead", "aborted"):
                        await self._save(self._save_reason())
                    if self.outcome.status == "done":
                        await self._export()
                    self.kernel_cpu = kernel_cpu_times(client.km)
                finally:
                    tail.cancel()
                    if self._kill is not None:
                        await self._kill
        finally:
            client.set_widgets_metadata()
            self._drain_log()
            self._write()
            shutil.rmtree(self._sockets, ignore_errors=True)
            self.seconds = time.monotonic() - started
        return self.outcome

    async def _run_cells(self) -> None:
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        client, number = self.client, 0
        for index, cell in enumerate(self.nb.cells):
            if self.outcome.signum is not None:
                self._set("interrupted", number, "")
                return
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            number += 1
            self.print(f"[{number}] {first_line(cell.source)}")
            cell_started = time.monotonic()
            self._running = True
            try:
                await client.async_execute_cell(cell, index, execution_count=number)
            except CellExecutionError as exc:
                self._cell_error(exc, number, time.monotonic() - cell_started)
            except CellTimeoutError as exc:  # only for IOPub: cells get interrupted instead
                self._set("timeout", number, str(exc).strip().splitlines()[0])
                await ensure_async(client.km.interrupt_kernel())
            except DeadKernelError:
                self._set("dead", number, "the kernel died")
            finally:
                self._running = False
                self._flush_echo()
                self._drain_log()
                self._write()
            self.outcome.cells_run = number
            if self.outcome.status != "done":
                return
            if "fit_cycles" in cell.source:
                await self._save(f"after cell [{number}]")
        if self.outcome.signum is not None:
            self._set("interrupted", number, "")

    def _save_reason(self) -> str:
        o = self.outcome
        if o.status == "done":
            return "at the end"
        if o.signum is not None:
            return "after the interrupt"
        return f"after cell [{o.cell}] {'timed out' if o.status == 'timeout' else 'failed'}"

    def _set(self, status: str, cell: int | None, detail: str) -> None:
        if self.outcome.status == "done":
            self.outcome.status = status
        self.outcome.cell, self.outcome.detail = cell, detail

    def _cell_error(self, exc: Any, number: int, seconds: float) -> None:
        detail = f"{exc.ename}: {exc.evalue}" if exc.evalue else exc.ename
        if exc.ename == "KeyboardInterrupt" and self.outcome.signum is not None:
            self._set("interrupted", number, detail)
        elif exc.ename == "KeyboardInterrupt" and self.timeout and seconds >= self.timeout:
            self._set("timeout", number, detail)
        else:
            self._set("failed", number, detail)

    async def _save(self, when: str) -> None:
        """Run the save cell in the kernel; record what it wrote (or why it could not)."""
        saved, error = await self._job_cell("save", _save_source(self.models.resolve()), SAVED_MARK)
        if error:
            self.outcome.save_error = error
        elif saved:
            self.outcome.saved, self.outcome.saved_when = saved, when
            self.outcome.save_error = ""

    async def _export(self) -> None:
        """Export every learner next to the executed notebook (after a complete run)."""
        exported, error = await self._job_cell(
            "export", _export_source(self.out.parent.resolve()), EXPORTED_MARK
        )
        self.outcome.exported, self.outcome.export_error = exported, error

    async def _job_cell(self, kind: str, source: str, mark: str) -> tuple[dict[str, str], str]:
        """Run one of the job's own cells in the kernel (kept out of the notebook); the
        JSON it printed after ``mark``, or the one-line error that stopped it."""
        from nbclient.exceptions import CellControlSignal, DeadKernelError

        if self._interrupt is not None:
            await self._interrupt  # a late interrupt must not land in this cell
        cell = self.nbformat.v4.new_code_cell(source)
        cell.metadata[JOB_CELL] = kind
        self.nb.cells.append(cell)  # execute_cell stores the cell at its index
        self._saving = True
        try:
            await self.client.async_execute_cell(cell, len(self.nb.cells) - 1, store_history=False)
        except (CellControlSignal, DeadKernelError) as exc:
            ename = getattr(exc, "ename", type(exc).__name__)
            return {}, f"{ename}: {getattr(exc, 'evalue', exc)}"
        finally:
            self._saving = False
            self.nb.cells.pop()
        text = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")
        for line in text.splitlines():
            if line.startswith(mark):
                return json.loads(line[len(mark) :]), ""
        return {}, ""

    def _write(self) -> None:
        """Write the executed notebook as it is now (atomically: a kill mid-write leaves
        the previous copy)."""
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        self.nbformat.write(self.nb, tmp)
        os.replace(tmp, self.out)

    # ---- the last lines --------------------------------------------------------------
    def summary(self) -> list[str]:
        o = self.outcome
        final = [line for line in self.stdout_lines if line.startswith("final accuracy")]
        best = [line for line in self.stdout_lines if BEST_LINE.match(line.strip())]
        lines = []
        if o.status == "done":
            lines.append(f"done: {o.cells_run} cells in {_clock(self.seconds)}")
            lines.append(final[-1] if final else "no final accuracy line was printed")
            lines += best[-1:]
        else:
            lines.append(self._ending())
        where = (
            "executed notebook"
            if o.status == "done"
            else (f"executed notebook (up to cell [{o.cell}])" if o.cell else "executed notebook")
        )
        lines.append(f"{where}: {_shown(self.out)}")
        lines.append(self._weights_line())
        if o.exported:
            paths = ", ".join(_shown(Path(p)) for p in o.exported.values())
            lines.append(f"exported for inference (nbtrain.load_model): {paths}")
        elif o.export_error:
            lines.append(f"export: failed ({o.export_error})")
        if self.kernel_cpu is not None:  # first: the last lines are the results
            user, system = self.kernel_cpu
            lines.insert(
                0,
                f"kernel process CPU time {_clock(user + system)}, "
                f"{system / max(user + system, 1e-9):.1%} of it in the OS kernel",
            )
        return lines

    def _ending(self) -> str:
        o = self.outcome
        cell = f"cell [{o.cell}]" if o.cell else "the notebook"
        spent = f"after {_clock(self.seconds)}"
        if o.status == "failed":
            return f"failed: {cell} raised {o.detail} ({spent})"
        if o.status == "timeout":
            return (
                f"timed out: {cell} ran past --timeout {self.timeout} s and was "
                f"interrupted ({o.detail}; {spent})"
            )
        if o.status == "interrupted":
            name = "Ctrl-C" if o.signum in (None, signal.SIGINT) else signal.Signals(o.signum).name
            if not o.detail:  # between two cells
                return f"interrupted by {name} after {cell} ({spent})"
            return f"interrupted by {name}: {cell} stopped ({o.detail}; {spent})"
        if o.status == "aborted":
            return f"stopped at once by a second signal in {cell} ({spent})"
        return f"the kernel died in {cell} ({spent}); what trained since the last save is lost"

    def _weights_line(self) -> str:
        o = self.outcome
        failed = f"the last save failed: {o.save_error}" if o.save_error else ""
        if o.saved:
            paths = ", ".join(_shown(Path(p)) for p in o.saved.values())
            return f"weights: {paths} (saved {o.saved_when}{'; ' + failed if failed else ''})"
        if failed:
            return f"weights: not saved ({failed})"
        if o.status in ("dead", "aborted"):
            return "weights: none saved (no fit cell had finished)"
        return "weights: none saved (no Learner in the notebook's namespace)"

    def exit_code(self) -> int:
        o = self.outcome
        if o.signum is not None:
            return SIGNAL_EXIT[o.signum]
        if o.status != "done" or o.save_error or o.export_error:
            return 1
        return 0 if any(line.startswith("final accuracy") for line in self.stdout_lines) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m nbtrain.notebook_job",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--data",
        default=None,
        help="a folder with train/ and valid/ (or val/), a folder of class folders (split "
        "80/20, seeded), or a CSV of file names and labels; default: a generated shapes "
        "data set, offline",
    )
    ap.add_argument("--notebook", type=Path, default=NOTEBOOK, help="the notebook to run")
    ap.add_argument(
        "--out",
        type=Path,
        default=REPO / "out" / "checklist.ipynb",
        help="the executed copy; the weights go to models/ beside it",
    )
    ap.add_argument("--size", type=int, default=None, help="image size (notebook default 224)")
    ap.add_argument(
        "--timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="interrupt a cell that runs longer (default: no limit)",
    )
    args = ap.parse_args(argv)

    if args.data is not None and not Path(args.data).exists():
        print(f"error: no image folder or CSV at {args.data}", file=sys.stderr)
        return 2
    if not args.notebook.is_file():
        print(f"error: no notebook at {args.notebook}", file=sys.stderr)
        return 2
    # The notebook reads its settings from the environment; "shapes" means the generated set.
    env = dict(os.environ)
    env["NBTRAIN_DATA"] = str(Path(args.data).resolve()) if args.data else "shapes"
    if args.size:
        env["NBTRAIN_SIZE"] = str(args.size)
    os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")  # this environment's python3 kernel
    job = NotebookJob(args.notebook, args.out, env=env, timeout=args.timeout)
    print(
        f"running {_shown(args.notebook)} on {env['NBTRAIN_DATA']} "
        f"(cells: no time limit{f' beyond {args.timeout} s' if args.timeout else ''}) ...",
        flush=True,
    )
    asyncio.run(job.run())
    lines = job.summary()
    stream = sys.stdout if job.outcome.status == "done" else sys.stderr
    for line in lines:
        print(line, file=stream, flush=True)
    return job.exit_code()


if __name__ == "__main__":
    sys.exit(main())
