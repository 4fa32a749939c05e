"""A line per epoch in a file: how a fit in a kernel shows on the main job's terminal.

Inside a kernel the progress display is a widget, and its updates travel as comm
messages that no terminal shows. The main job (:mod:`nbtrain.notebook_job`) names a file
in the kernel's environment variable ``NBTRAIN_EPOCH_LOG``; every ``%fit_cycles`` then
adds a text listener (:class:`~nbtrain.views.text.TextProgress`, with an ETA column)
beside its view, which appends the stage headers, epoch rows and how a stage ended to
that file, and the job prints each line as it arrives. One short append per epoch: the
fit does not slow down.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from nbtrain.core.schedules import SGDRSchedule
from nbtrain.views.text import TextProgress

ENV_VAR = "NBTRAIN_EPOCH_LOG"


class AppendFile:
    """A text stream that appends every write to ``path``, opening and closing the file
    each time, under a lock: the fit thread may write, a reader in another process sees
    whole writes, and no file stays open in the kernel between epochs."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            return f.write(text)

    def flush(self) -> None:
        """Nothing to do: every write is already on disk."""


def from_env(
    plans: Sequence[SGDRSchedule], *, labels: Sequence[str] = (), title: str = "fit_cycles"
) -> TextProgress | None:
    """A listener writing the run's epoch lines to ``$NBTRAIN_EPOCH_LOG``, or None when
    that variable is unset (read at each fit, so ``%env`` can set it)."""
    path = os.environ.get(ENV_VAR, "").strip()
    if not path:
        return None
    return TextProgress(
        plans, labels=labels, title=title, stream=AppendFile(path), live=False, eta=True
    )
