"""Resumable checkpoints: where a run is, written so that a fit continues bit for bit.

A fit in a notebook can end early in many ways (Stop, an interrupt, an exception, a
kernel that dies). While ``learn.fit_stages`` runs, a :class:`CheckpointStore` keeps a
checkpoint of the run: the weights, the optimizer and grad-scaler state, the plan (the
stages as plain data), the position in it, every random state, the history. It is
written at epoch ends (throttled so that writing costs at most ~2% of the fit), and
when the run stops, is interrupted, fails or ends.

What makes the continuation exact is :class:`Position`: the random states at the start
of the current epoch (before its loader drew the shuffle order) and at the last batch
boundary. Resuming in the middle of an epoch restores the first, draws the epoch's
batches again and drops the ``batch`` already trained on (so the sampler, the
augmentation streams and the loader's workers are where they were), then restores the
second. With ``num_workers=0`` (or data whose augmentation does not depend on worker
state) the resumed run ends with the same weights, bit for bit, as a run that was never
interrupted. With persistent loader workers the order of the images is still exact, but
the workers' random streams start afresh, so augmentations may differ.

Files are written atomically (temporary file, fsync, rename, fsync of the folder): a
crash during a write leaves the previous checkpoint as it was, and a temporary file is
never read. Everything in a checkpoint is tensors, numbers, strings, lists and dicts, so
it loads with ``torch.load(weights_only=True)``: a file that would run code is refused.
"""

from __future__ import annotations

import os
import random
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = "nbtrain-resume"
VERSION = 1
_NAME = re.compile(r"^run-(\d{8})\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (corrupt, another model, another format)."""


# ------------------------------------------------------------------- random state
def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every global random state (torch CPU and CUDA, Python, numpy) and ``generator``'s,
    as plain data (tensors and numbers: loadable with ``weights_only=True``)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "python": _python_state(random.getstate()),
        "numpy": None,
        "generator": generator.get_state() if generator is not None else None,
    }
    np = sys.modules.get("numpy")
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss]
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured (``generator``'s state when both have one)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np = sys.modules.get("numpy")
    if np is not None and state.get("numpy") is not None:
        kind, keys, pos, has_gauss, gauss_np = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss_np))
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def _python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def loader_generator(loader: Any) -> torch.Generator | None:
    """The torch generator a loader shuffles with (a DataLoader's ``generator``), if any."""
    generator = getattr(loader, "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


# ------------------------------------------------------------------- position
@dataclass
class Position:
    """Where a fit is: ``batch`` batches of epoch ``epoch`` trained (``it`` in all),
    with what the loop accumulates between batches and the random states to go on with.

    ``validating`` is true between the last batch of an epoch and the end of its
    validation pass: a resumed fit then validates that epoch again and goes on.
    """

    epoch: int = 0
    batch: int = 0
    it: int = 0
    epoch_loss: float = 0.0
    smooth_count: int = 0
    smooth_avg: float = 0.0
    elapsed: float = 0.0
    validating: bool = False
    rng_epoch: dict[str, Any] = field(default_factory=dict, repr=False)
    rng_now: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "it": self.it,
            "epoch_loss": self.epoch_loss,
            "smooth_count": self.smooth_count,
            "smooth_avg": self.smooth_avg,
            "elapsed": self.elapsed,
            "validating": self.validating,
            "rng_epoch": self.rng_epoch,
            "rng_now": self.rng_now,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Position:
        return cls(**values)


# ------------------------------------------------------------------- the files
@dataclass
class CheckpointStore:
    """The resumable checkpoints of one learner: ``folder/run-NNNNNNNN.ckpt``, numbered
    in the order written; the newest ``keep`` are kept (at least 1)."""

    folder: Path
    keep: int = 2

    def paths(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary files are never listed)."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def write(self, payload: dict[str, Any]) -> Path:
        """Write ``payload`` as the newest checkpoint, atomically; drop the oldest beyond
        ``keep`` once the new one is complete. OSError (disk full, read-only folder) is
        raised after the temporary file is removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = self.paths()
        number = int(_NAME.match(paths[-1].name).group(1)) + 1 if paths else 1  # type: ignore[union-attr]
        path = self.folder / f"run-{number:08d}.ckpt"
        atomic_save(payload, path)
        for old in self.paths()[: -max(1, self.keep)]:
            old.unlink(missing_ok=True)
        return path

    def remove_partial(self) -> int:
        """Delete the temporary files of writes that never finished (a process killed
        mid-write leaves one); returns how many. Never read, they only take space."""
        if not self.folder.is_dir():
            return 0
        partial = [p for p in self.folder.glob(".run-*.ckpt.*.tmp") if p.is_file()]
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)

    def clear(self) -> None:
        for path in self.paths():
            path.unlink(missing_ok=True)


def atomic_save(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename over ``path``,
    fsync the folder: ``path`` is the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows)
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_plain(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU: tensors, numbers, strings and
    containers only, so a file that would run code raises instead."""
    with warnings.catch_warnings():  # torch's note on a foreign pickle protocol
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def read_safely(path: Path) -> Any:
    """:func:`load_plain`, with CheckpointError in one line for a missing file, a
    truncated or corrupt one, or one that would run code."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return load_plain(path)
    except Exception as exc:  # a pickle with code, a truncated or corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} cannot be read safely as an nbtrain checkpoint: {first[:200]}"
        ) from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a resumable checkpoint safely (``weights_only``: nothing in it can run code);
    CheckpointError, in one line, for anything else."""
    path = Path(path)
    payload = read_safely(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a resumable nbtrain checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {payload.get('version')} checkpoint; "
            f"this nbtrain reads version {VERSION}"
        )
    return payload


# ------------------------------------------------------------------- a run to resume
@dataclass
class ResumePoint:
    """A checkpoint read and checked against a learner, ready for ``learn.fit_stages``:
    the run's plan, the stage to go on with (``first``) and where in it (``start``; None
    when that stage starts afresh), with the histories of the stages before."""

    path: Path
    payload: dict[str, Any] = field(repr=False)
    plan: Any = field(repr=False)  # nbtrain.core.stages.Plan
    first: int = 0
    start: Position | None = None
    histories: list[list[dict[str, Any]]] = field(default_factory=list, repr=False)

    @property
    def status(self) -> str:
        return str(self.payload.get("status", "running"))

    def describe(self) -> str:
        """One line: which stage, epoch and iteration the run goes on from."""
        n = len(self.plan.stages)
        stage = f"stage {self.first + 1}/{n}, " if n > 1 else ""
        if self.start is None:
            return f"{stage}from its start ({self.path.name})"
        total = self.plan.schedules[self.first].total_iters
        return (
            f"{stage}epoch {self.start.epoch + 1}, iteration {self.start.it}/{total} "
            f"({self.status} run, {self.path.name})"
        )
