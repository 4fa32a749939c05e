"""Which front end a display uses: live widgets or plain text, decided per display.

Nothing is fixed at import time. Each display asks :func:`use_widgets`, which follows,
first match wins:

1. ``%nbtrain_config --widgets`` / ``--text`` (``--auto`` clears it), via :func:`set_mode`;
2. the environment variable ``NBTRAIN_FRONTEND`` (``widgets``, ``text`` or ``auto``),
   read at each display so a notebook can set it with ``%env``;
3. ``auto``: widgets when ipywidgets imports *and* IPython runs inside a kernel (a
   ``ZMQInteractiveShell``, which has a ``kernel`` and so a comm channel to a front end);
   plain text in terminal IPython, plain Python and scripts.

Under nbclient/nbconvert the kernel is real, so ``auto`` picks widgets there too; their
``_repr_mimebundle_`` carries ``text/plain`` (and ``image/png`` for plots), so the
exported notebook still reads well. Force text for logs with ``NBTRAIN_FRONTEND=text``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

MODES = ("auto", "widgets", "text")
ENV_VAR = "NBTRAIN_FRONTEND"

# The %nbtrain_config choice: a setting, not run state; None means "not set".
_override: str | None = None


def set_mode(mode: str | None) -> None:
    """Force ``"widgets"`` or ``"text"``; ``"auto"`` or None clears the override."""
    global _override
    if mode is not None and mode not in MODES:
        raise ValueError(f"front end must be one of {', '.join(MODES)}, got {mode!r}")
    _override = None if mode in (None, "auto") else mode


def get_mode() -> tuple[str, str]:
    """``(mode, source)``: the mode in force and where it comes from."""
    if _override is not None:
        return _override, "%nbtrain_config"
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in MODES:
        return env, f"${ENV_VAR}"
    return "auto", "default"


def current_shell() -> Any:
    """The running IPython shell, or None (plain Python, or IPython not installed)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    return get_ipython()


def in_kernel(shell: Any = None) -> bool:
    """True inside a Jupyter kernel (the shell has a ``kernel``, hence comms)."""
    shell = shell if shell is not None else current_shell()
    return getattr(shell, "kernel", None) is not None


def widgets_importable() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def widgets_available(shell: Any = None) -> bool:
    """Whether widgets can render: ipywidgets imports and a kernel runs the code."""
    return widgets_importable() and in_kernel(shell)


def use_widgets(shell: Any = None) -> bool:
    """The choice for the next display (see the module docstring for the order)."""
    mode, _ = get_mode()
    if mode == "text":
        return False
    if mode == "widgets":
        return widgets_importable()
    return widgets_available(shell)


def describe(shell: Any = None) -> str:
    """One line for ``%nbtrain_config``: the choice, its source and why."""
    mode, source = get_mode()
    chosen = "widgets" if use_widgets(shell) else "text"
    if mode == "auto":
        why = (
            "a kernel with ipywidgets is running"
            if chosen == "widgets"
            else "no kernel with widget support (terminal, script or ipywidgets missing)"
        )
        return f"front end: {chosen} (auto: {why})"
    note = "" if chosen == mode else " (ipywidgets is not installed)"
    return f"front end: {chosen} (forced by {source}){note}"
