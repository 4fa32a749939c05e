"""Steady, fast CPU epochs: keep freed memory in the process, on every thread that trains.

With glibc's default malloc, the large activation buffers of a conv net are returned
to the OS after every step and zero-faulted back on the next: on 2 cores that was
30-45% of all CPU time in the kernel, and epoch times swung 1.4-2x between processes
(``../shared/PERF-NOTES.md``). ``mallopt`` can switch that off from inside a running
process (a Jupyter kernel cannot be started under LD_PRELOAD=jemalloc), at the price
of the process keeping its peak memory: :func:`tune_cpu`.

That is not enough off the main thread. glibc gives every other thread its own *arena*,
made of heaps of at most 64 MiB, and a request that does not fit in one is served by a
fresh ``mmap`` and unmapped on ``free``, whatever ``M_MMAP_MAX`` says (``sysmalloc``
falls back to ``mmap`` for non-main arenas without checking it). A batch of 32 images
at 224 px has activations of 150 MiB and more, so a fit in a worker thread (how
``%fit_cycles`` runs in a kernel) faulted in about 0.7 million fresh pages a second and
spent 30-45% of its CPU time in the kernel, 1.6-2.1x slower than the same fit on the
main thread. No public glibc call moves a thread to another arena, and the arena is
fixed by the thread's first ``malloc``. So nbtrain keeps one long-lived thread that is
served by glibc's *main* arena (:func:`main_arena_thread`), and the Learner's heavy
calls made on any other thread run there (:func:`on_main_arena`); the caller waits for
the result, which comes back as if the call had run in place.

Learner calls :func:`tune_cpu` once when it trains on the CPU. Set the environment
variable ``NBTRAIN_KEEP_MALLOC=1`` to leave the allocator alone (and the calls where
they are made), or ``NBTRAIN_TRAIN_IN_PLACE=1`` to keep the allocator settings but run
every call on the thread that makes it (read at each call; ``bench/notebook_path.py``
uses it to show the difference).
"""

from __future__ import annotations

import contextvars
import ctypes
import ctypes.util
import functools
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

# glibc's chunk header: the word before a malloc'ed pointer holds the chunk size, whose
# low bits are flags (malloc/malloc.c). Stable since glibc 2.3.
_IS_MMAPPED = 0x2
_NON_MAIN_ARENA = 0x4
# Above the thread cache (1032 bytes) and below the default mmap threshold (128 KiB),
# so that it comes from the calling thread's arena whatever the settings.
_PROBE_BYTES = 64 * 1024
# Enough threads to exhaust glibc's arena limit (8 per core) and come round to the main
# arena; only spent once per process.
_MAX_PROBE_THREADS = 256

_done: dict[str, object] | None = None
_libc: Any = None


def _glibc() -> Any:
    """glibc through ctypes, or None (another C library or platform)."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.malloc.restype = ctypes.c_void_p
                libc.malloc.argtypes = [ctypes.c_size_t]
                libc.free.argtypes = [ctypes.c_void_p]
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc or None


def tune_cpu() -> dict[str, object]:
    """Tell glibc to keep freed memory (no per-step page faults); idempotent.

    Returns what was done, e.g. ``{"malloc": "kept (mallopt)"}``; on other C
    libraries or platforms, or with ``NBTRAIN_KEEP_MALLOC=1``, nothing changes.
    """
    global _done
    if _done is not None:
        return _done
    if os.environ.get("NBTRAIN_KEEP_MALLOC"):
        _done = {"malloc": "left alone (NBTRAIN_KEEP_MALLOC)"}
        return _done
    if not sys.platform.startswith("linux"):
        _done = {"malloc": f"left alone ({sys.platform})"}
        return _done
    libc = _glibc()
    if libc is None:
        _done = {"malloc": "left alone (not glibc)"}
        return _done
    gib = 1 << 30
    ok = (
        libc.mallopt(_M_MMAP_MAX, 0)  # big buffers from the heap, not fresh mmaps
        # never hand freed memory back (mallopt(3): -1 disables trimming). With the 1 GiB
        # threshold used before, the third one-epoch fit in a kernel still faulted in
        # 38k pages in its first batch; with -1, 700.
        and libc.mallopt(_M_TRIM_THRESHOLD, -1)
        and libc.mallopt(_M_TOP_PAD, gib)  # and grow the heap in large steps
    )
    _done = {"malloc": "kept (mallopt)" if ok else "left alone (mallopt refused)"}
    return _done


def tuned() -> bool:
    """True once :func:`tune_cpu` has kept freed memory in this process."""
    return _done is not None and _done.get("malloc") == "kept (mallopt)"


def arena() -> str | None:
    """Which glibc arena serves the calling thread: ``"main"`` or ``"thread"``.

    None where that cannot be told (not glibc, or the probe was served by ``mmap``).
    Costs one ``malloc``/``free`` of 64 KiB (about a microsecond).
    """
    libc = _glibc()
    if libc is None:
        return None
    pointer = libc.malloc(_PROBE_BYTES)
    if not pointer:
        return None
    try:
        size_field = ctypes.c_size_t.from_address(pointer - ctypes.sizeof(ctypes.c_size_t))
        flags = size_field.value
    finally:
        libc.free(pointer)
    if flags & _IS_MMAPPED:
        return None
    return "thread" if flags & _NON_MAIN_ARENA else "main"


class MainArenaThread:
    """A daemon thread served by glibc's main arena that runs calls handed to it, one
    at a time, in the caller's context (output, ``contextvars``, grad mode)."""

    def __init__(self, thread: threading.Thread, jobs: queue.SimpleQueue) -> None:
        self.thread = thread
        self._jobs = jobs

    def __repr__(self) -> str:
        return f"MainArenaThread({self.thread.name!r})"

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on this thread; its result or exception lands in the Future."""
        import torch

        future: Future[T] = Future()
        context = contextvars.copy_context()
        grad = torch.is_grad_enabled()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                with torch.set_grad_enabled(grad):
                    result = context.run(fn)
            except BaseException as exc:  # the caller re-raises it
                future.set_exception(exc)
            else:
                future.set_result(result)

        self._jobs.put(job)
        return future

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` here and wait for it; its exception is raised in the caller."""
        future = self.submit(fn)
        error = future.exception()  # waits
        if error is not None:
            try:
                raise error
            finally:
                del error  # no reference cycle through the traceback
        return future.result()


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        job = jobs.get()
        job()
        del job  # drop the finished call's closure (its learner, its batches) at once


def _start_main_arena_thread() -> MainArenaThread | None:
    """Start threads until one is served by the main arena; keep that one.

    glibc hands a new thread an arena of an exited thread if there is one, else a new
    arena until it reaches its limit, then reuses existing arenas in turn, the main
    arena among them. The threads that got another arena wait until the search ends,
    so none of their arenas goes back on the free list while we look.
    """
    release = threading.Event()
    found: MainArenaThread | None = None
    for i in range(_MAX_PROBE_THREADS):
        answer: queue.SimpleQueue = queue.SimpleQueue()
        jobs: queue.SimpleQueue = queue.SimpleQueue()

        def candidate(answer: queue.SimpleQueue = answer, jobs: queue.SimpleQueue = jobs) -> None:
            on_main = arena() == "main"
            answer.put(on_main)
            if on_main:
                _serve(jobs)
            else:
                release.wait()

        thread = threading.Thread(target=candidate, name=f"nbtrain-train-{i}", daemon=True)
        thread.start()
        if answer.get():
            thread.name = "nbtrain-train"
            found = MainArenaThread(thread, jobs)
            break
    release.set()
    return found


_thread: MainArenaThread | None = None
_thread_tried = False
_thread_lock = threading.Lock()


def main_arena_thread() -> MainArenaThread | None:
    """The process's thread on glibc's main arena, started on first use; None where
    there is no such thing to find (not glibc)."""
    global _thread, _thread_tried
    with _thread_lock:
        if not _thread_tried:
            _thread_tried = True
            if arena() is not None:
                _thread = _start_main_arena_thread()
        return _thread


def _worker_for_this_thread() -> MainArenaThread | None:
    """The thread to hand a heavy call to, or None to run it in place: in place when
    the calling thread is served by the main arena (the main thread, nearly always),
    when the allocator is left alone, or where no such thread can be had."""
    if not tuned() or os.environ.get("NBTRAIN_TRAIN_IN_PLACE") or arena() != "thread":
        return None
    worker = main_arena_thread()
    if worker is None or threading.current_thread() is worker.thread:
        return None
    return worker


def run_on_main_arena(fn: Callable[[], T]) -> T:
    """Call ``fn`` on a thread that glibc's main arena serves, and return its result:
    in place where that is the calling thread, otherwise on :func:`main_arena_thread`,
    with the caller waiting. See the module docstring for why."""
    worker = _worker_for_this_thread()
    return fn() if worker is None else worker.call(fn)


def on_main_arena(method: Callable[..., T]) -> Callable[..., T]:
    """Decorator: the call runs where :func:`run_on_main_arena` puts it. In place it
    adds one frame: a warning the method raises for its caller needs ``stacklevel=3``."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        worker = _worker_for_this_thread()
        if worker is None:
            return method(*args, **kwargs)
        return worker.call(lambda: method(*args, **kwargs))

    return wrapper
