"""Events: how the training loop reports to views, without knowing any view.

Names (``EVENT_NAMES``): ``fit_start``, ``cycle_start``, ``epoch_start``, ``batch_start``,
``batch_end``, ``epoch_end``, ``cycle_end``, ``fit_end``. Every handler receives the
loop's :class:`~nbtrain.core.state.TrainState`. A handler that wants training to stop
calls ``state.request_stop()``; the loop stops at the next batch boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EVENT_NAMES = (
    "fit_start",
    "cycle_start",
    "epoch_start",
    "batch_start",
    "batch_end",
    "epoch_end",
    "cycle_end",
    "fit_end",
)

Handler = Callable[[Any], None]


class Events:
    """A registry of handlers per event name: ``on(name, fn)``, ``off(name, fn)``, ``emit``."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {name: [] for name in EVENT_NAMES}

    def on(self, name: str, fn: Handler) -> Handler:
        """Call ``fn(state)`` on every ``name`` event; returns ``fn`` (usable as decorator)."""
        self._check(name)
        self._handlers[name].append(fn)
        return fn

    def off(self, name: str, fn: Handler) -> None:
        """Stop calling ``fn`` on ``name`` (no error if it was not registered)."""
        self._check(name)
        if fn in self._handlers[name]:
            self._handlers[name].remove(fn)

    def subscribe(self, listener: object) -> Callable[[], None]:
        """Register every ``on_<event>`` method of ``listener``; returns an unsubscribe function."""
        pairs = [
            (name, getattr(listener, f"on_{name}"))
            for name in EVENT_NAMES
            if callable(getattr(listener, f"on_{name}", None))
        ]
        for name, fn in pairs:
            self.on(name, fn)

        def unsubscribe() -> None:
            for name, fn in pairs:
                self.off(name, fn)

        return unsubscribe

    def emit(self, name: str, state: Any) -> None:
        # A copy: a handler may unsubscribe itself while being called.
        for fn in list(self._handlers[name]):
            fn(state)

    def _check(self, name: str) -> None:
        if name not in self._handlers:
            raise ValueError(f"unknown event {name!r}; known events: {', '.join(EVENT_NAMES)}")
