"""Kept memory on every thread that trains: the main-arena thread and the calls handed to it.

Page faults are counted per thread (``RUSAGE_THREAD``): a deterministic measure of the
allocator's behaviour, where a time would only be noise.
"""

from __future__ import annotations

import contextvars
import resource
import threading

import pytest
import torch
from torch import nn

from nbtrain.core import cpu

from .conftest import model_state

pytestmark = pytest.mark.skipif(
    cpu.arena() is None, reason="glibc's malloc arenas only (Linux with glibc)"
)

# A conv layer whose output, 16 x 96 x 112 x 112 floats, is 77 MiB: more than one heap
# of a thread arena (64 MiB) holds, as a batch of photos at 224 px has many of.
CONV = nn.Conv2d(3, 96, 3, padding=1)
IMAGES = torch.randn(16, 3, 112, 112)
OUTPUT_PAGES = 16 * 96 * 112 * 112 * 4 // resource.getpagesize()


def faults_per_step(steps: int = 2) -> float:
    """Minor page faults of the process per forward and backward step of ``CONV``,
    once the heap has settled (two steps first)."""
    for _ in range(2):
        CONV(IMAGES).relu().sum().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        CONV(IMAGES).relu().sum().backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def in_thread(fn):
    """Run ``fn`` in a new plain thread; return its result or raise its exception."""
    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.fixture(autouse=True)
def _tuned():
    cpu.tune_cpu()
    if not cpu.tuned():
        pytest.skip("the allocator is left alone here (NBTRAIN_KEEP_MALLOC?)")


def test_the_main_thread_is_on_the_main_arena_and_a_new_thread_is_not():
    assert cpu.arena() == "main"
    assert in_thread(cpu.arena) == "thread"


def test_a_plain_thread_faults_big_buffers_in_again_every_step():
    """The cause: glibc serves a 77 MiB request of a thread arena by mmap, whatever
    mallopt said, so every step faults its pages in afresh; the main thread keeps them."""
    settled = [faults_per_step() for _ in range(4)]
    assert min(settled) < OUTPUT_PAGES * 0.05, settled
    assert min(in_thread(faults_per_step) for _ in range(2)) > OUTPUT_PAGES




def test_the_main_arena_thread_keeps_big_buffers():
    worker = cpu.main_arena_thread()
    assert worker is not None and worker.thread.is_alive()
    assert worker.call(cpu.arena) == "main"
    # The heap settles within a few steps, then keeps every page (a plain thread: none).
    settled = [in_thread(lambda: cpu.run_on_main_arena(faults_per_step)) for _ in range(4)]
    assert min(settled) < OUTPUT_PAGES * 0.05, settled
    assert cpu.main_arena_thread() is worker  # one per process


def test_a_call_runs_in_place_where_the_arena_is_the_main_one():
    assert cpu.run_on_main_arena(threading.current_thread) is threading.current_thread()
    worker = cpu.main_arena_thread()
    assert worker.call(lambda: cpu.run_on_main_arena(threading.current_thread)) is worker.thread


def test_a_handed_call_returns_raises_and_sees_the_callers_context():
    name: contextvars.ContextVar[str] = contextvars.ContextVar("name", default="unset")
    error = ValueError("one clear line")

    def caller():
        name.set("the caller's")
        with torch.no_grad():
            seen = cpu.run_on_main_arena(
                lambda: (threading.current_thread().name, name.get(), torch.is_grad_enabled())
            )
        with pytest.raises(ValueError) as raised:
            cpu.run_on_main_arena(lambda: (_ for _ in ()).throw(error))
        return seen, raised.value

    (thread, value, grad), raised = in_thread(caller)
    assert thread == "nbtrain-train"
    assert value == "the caller's"
    assert grad is False
    assert raised is error


def test_fit_and_lr_find_from_a_users_thread_run_on_the_main_arena(learn):
    seen: list[tuple[str, str | None]] = []

    class Where:
        def on_batch_start(self, state):
            seen.append((threading.current_thread().name, cpu.arena()))

    before = model_state(learn.model)
    state = in_thread(lambda: learn.fit_cycles(0.1, cycles=1, listeners=[Where()]))
    assert state.status == "done"
    assert seen and set(seen) == {("nbtrain-train", "main")}
    assert any(not torch.equal(before[k], v) for k, v in model_state(learn.model).items())
    result = in_thread(lambda: learn.lr_find(iters=5))
    assert len(result.lrs) == 5
