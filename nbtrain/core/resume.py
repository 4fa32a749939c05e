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

import contextlib
import os
import random
import re
import sys
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = "nbtrain-resume"
VERSION = 1
_NAME = re.compile(r"^([0-9a-f]{12})-(\d{8})\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (corrupt, another model, another format)."""


# ------------------------------------------------------------------- random state
@dataclass
class RNGStates:
    """Every global random state (torch CPU and CUDA, Python, numpy) and a loader
    generator's, as the libraries return them (:meth:`plain` for a checkpoint)."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None
    python: tuple | None
    numpy: tuple | None
    generator: torch.Tensor | None

    @classmethod
    def capture(cls, generator: torch.Generator | None = None) -> RNGStates:
        np = sys.modules.get("numpy")
        return cls(
            cpu=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            python=random.getstate(),
            numpy=np.random.get_state() if np is not None else None,
            generator=generator.get_state() if generator is not None else None,
        )

    def restore(self, generator: torch.Generator | None = None, *, loader: bool = True) -> None:
        """Put every state back; ``generator``'s too when ``loader`` and both have one."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None and torch.cuda.is_available():
            # as many devices as both machines have (a checkpoint may come from a bigger one)
            for index, cuda_state in enumerate(self.cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device=index)
        if self.python is not None:
            random.setstate(self.python)
        np = sys.modules.get("numpy")
        if np is not None and self.numpy is not None:
            np.random.set_state(self.numpy)
        if loader and generator is not None and self.generator is not None:
            generator.set_state(self.generator)

    def plain(self) -> dict[str, Any]:
        """Tensors, numbers and lists only: loadable with ``weights_only=True``."""
        numpy = None
        if self.numpy is not None:
            kind, keys, pos, has_gauss, gauss = self.numpy
            numpy = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss]
        python = None
        if self.python is not None:
            version, internal, gauss = self.python
            python = [version, list(internal), gauss]
        return {
            "torch": self.cpu,
            "cuda": self.cuda,
            "python": python,
            "numpy": numpy,
            "generator": self.generator,
        }

    @classmethod
    def from_plain(cls, values: dict[str, Any]) -> RNGStates:
        numpy = None
        if values.get("numpy") is not None:
            kind, keys, pos, has_gauss, gauss = values["numpy"]
            numpy = (kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss)
        python = None
        if values.get("python") is not None:
            version, internal, gauss = values["python"]
            python = (version, tuple(internal), gauss)
        return cls(values["torch"], values.get("cuda"), python, numpy, values.get("generator"))


class BoundaryStates:
    """Random states at every batch boundary, cheaply enough for head-only steps on
    cached activations (~0.7 ms each on 2 cores).

    Torch's and the loader generator's states are read at every boundary (~3 us). Python's
    and numpy's cost ~12 and ~45 us, and only a data pipeline that draws from them moves
    them: they are read at every boundary of an epoch whose first batch moved them, and
    are the epoch start's otherwise. (A pipeline that starts drawing from them only after
    the first batch of an epoch makes a resumed run differ from an uninterrupted one.)
    """

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator
        self.epoch: RNGStates | None = None
        self.python_moves = self.numpy_moves = True
        self._checked = False

    def epoch_start(self, states: RNGStates | None = None) -> RNGStates:
        """The states at an epoch's start: read now, or ``states`` (a resumed epoch's)."""
        self.epoch = states if states is not None else RNGStates.capture(self.generator)
        self._checked = False
        return self.epoch

    def boundary(self) -> RNGStates:
        """The states now, between two batches."""
        epoch = self.epoch
        if epoch is None or not self._checked:  # the epoch's first boundary: who draws?
            now = RNGStates.capture(self.generator)
            if epoch is not None:
                self.python_moves = now.python != epoch.python
                self.numpy_moves = not _same_numpy(now.numpy, epoch.numpy)
                self._checked = True
            return now
        np = sys.modules.get("numpy") if self.numpy_moves else None
        g = self.generator
        return RNGStates(
            cpu=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            python=random.getstate() if self.python_moves else epoch.python,
            numpy=np.random.get_state() if np is not None else epoch.numpy,
            generator=g.get_state() if g is not None else None,
        )


def _same_numpy(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and a[2:] == b[2:] and bool((a[1] == b[1]).all())


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
    epoch_seconds: float = 0.0
    validating: bool = False
    rng_epoch: RNGStates | None = field(default=None, repr=False)
    rng_now: RNGStates | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "it": self.it,
            "epoch_loss": self.epoch_loss,
            "smooth_count": self.smooth_count,
            "smooth_avg": self.smooth_avg,
            "elapsed": self.elapsed,
            "epoch_seconds": self.epoch_seconds,
            "validating": self.validating,
            "rng_epoch": self.rng_epoch.plain() if self.rng_epoch is not None else None,
            "rng_now": self.rng_now.plain() if self.rng_now is not None else None,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Position:
        values = dict(values)
        for name in ("rng_epoch", "rng_now"):
            if values.get(name) is not None:
                values[name] = RNGStates.from_plain(values[name])
        return cls(**values)


# ------------------------------------------------------------------- the files
def _file_mode() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def new_run_id() -> str:
    """A name for one run of ``fit_stages``: its checkpoints are ``<run>-NNNNNNNN.ckpt``."""
    return uuid.uuid4().hex[:12]


@dataclass
class CheckpointStore:
    """Resumable checkpoints in one folder, of any number of runs (learners, kernels):
    ``folder/<run>-NNNNNNNN.ckpt``, numbered per run in the order written.

    Each run keeps its newest ``keep`` (at least 1; only the last once it has finished),
    and the folder keeps the newest ``keep_runs`` runs: a run never deletes another
    run's files but the oldest beyond that, nor its temporary files.
    """

    folder: Path
    keep: int = 2
    keep_runs: int = 3

    def _found(self) -> list[tuple[str, int, Path]]:
        if not self.folder.is_dir():
            return []
        return [
            (m.group(1), int(m.group(2)), p)
            for p in self.folder.iterdir()
            if (m := _NAME.match(p.name))
        ]

    def paths(self, run: str | None = None) -> list[Path]:
        """Complete checkpoints (temporary files are never listed): a run's in the order
        written, or every run's, oldest first."""
        found = self._found()
        if run is not None:
            return [p for _, p in sorted((n, p) for r, n, p in found if r == run)]
        return [p for _, _, p in sorted((_mtime(p), n, p) for _, n, p in found)]

    def latest(self, run: str | None = None) -> Path | None:
        """The newest checkpoint of ``run``, or of any run."""
        paths = self.paths(run)
        return paths[-1] if paths else None

    def runs(self) -> list[str]:
        """The runs with checkpoints here, the most recently written last."""
        newest: dict[str, float] = {}
        for run, _, path in self._found():
            newest[run] = max(newest.get(run, 0.0), _mtime(path))
        return sorted(newest, key=newest.__getitem__)

    def write(self, payload: dict[str, Any], run: str, *, finished: bool = False) -> Path:
        """Write ``payload`` as ``run``'s newest checkpoint, atomically; then drop what is
        no longer needed (see the class). OSError (disk full, read-only folder) is raised
        after the temporary file is removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        own = self.paths(run)
        number = int(_NAME.match(own[-1].name).group(2)) + 1 if own else 1  # type: ignore[union-attr]
        path = self.folder / f"{run}-{number:08d}.ckpt"
        atomic_save(payload, path)
        keep = 1 if finished else max(1, self.keep)
        for old in self.paths(run)[:-keep]:
            old.unlink(missing_ok=True)
        for other in self.runs()[: -max(1, self.keep_runs)]:
            if other != run:
                for old in self.paths(other):
                    old.unlink(missing_ok=True)
        return path

    def remove_partial(self, run: str) -> int:
        """Delete ``run``'s temporary files of writes that never finished (a process
        killed mid-write leaves one); returns how many. Never read, they only take space."""
        if not self.folder.is_dir():
            return 0
        partial = [p for p in self.folder.glob(f".{run}-*.ckpt.*.tmp") if p.is_file()]
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


def atomic_save(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename over ``path``,
    fsync the folder: ``path`` is the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # as open() would have made it (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        cause = os_error_of(exc) if isinstance(exc, RuntimeError) else None
        if cause is not None:
            raise cause from None  # torch's zip writer reports a full disk as RuntimeError
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


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or what it was raised while handling), if any:
    ``torch.save`` to a full disk raises a RuntimeError from its zip writer."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def read_safely(path: Path) -> Any:
    """:func:`load_plain`, with CheckpointError in one line for a missing file, a
    truncated or corrupt one, or one that would run code."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return load_plain(path)
    except Exception as exc:  # a pickle with code, a truncated or corrupt file
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        if "Weights only load failed" in text:  # torch's advice would be to load it unsafely
            why = "it holds objects other than tensors and plain values (code could run)"
        else:
            why = text.splitlines()[0][:200] if text else type(exc).__name__
        raise CheckpointError(
            f"{path} cannot be read safely as an nbtrain checkpoint: {why}"
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

    @property
    def run(self) -> str:
        """The run's name: the resumed run goes on writing checkpoints under it."""
        return str(self.payload.get("run") or new_run_id())

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
