"""Steady, fast CPU epochs: keep freed memory in the process.

With glibc's default malloc, the large activation buffers of a conv net are returned
to the OS after every step and zero-faulted back on the next: on 2 cores that was
30-45% of all CPU time in the kernel, and epoch times swung 1.4-2x between processes
(``../shared/PERF-NOTES.md``). ``mallopt`` can switch that off from inside a running
process (a Jupyter kernel cannot be started under LD_PRELOAD=jemalloc), at the price
of the process keeping its peak memory.

Learner calls :func:`tune_cpu` once when it trains on the CPU. Set the environment
variable ``NBTRAIN_KEEP_MALLOC=1`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_done: dict[str, object] | None = None


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
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _done = {"malloc": "left alone (not glibc)"}
        return _done
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    gib = 1 << 30
    ok = (
        mallopt(_M_MMAP_MAX, 0)  # big buffers from the heap, not fresh mmaps
        and mallopt(_M_TRIM_THRESHOLD, gib)  # do not hand freed memory back ...
        and mallopt(_M_TOP_PAD, gib)  # ... and grow the heap in large steps
    )
    _done = {"malloc": "kept (mallopt)" if ok else "left alone (mallopt refused)"}
    return _done
