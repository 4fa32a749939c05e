"""Precompute: activations of a frozen body, computed once, keyed by all that shapes them.

fastai 0.7 keyed its cache by architecture and image size only, so a changed file list,
split or set of weights silently reused stale activations (its users were told to
delete ``tmp/`` between runs). Here the key is a hash of everything that changes the
activations: the body's weights and buffers, the file list of each split (names,
sizes, modification times, labels), the evaluation transform and image size, and the
compute dtype. Any change gives a new key, so a stale activation is never used.

Entries are kept in memory and, when a cache folder is writable, on disk (written
atomically, read with ``weights_only=True``), so re-running a notebook reuses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nbtrain.core.resume import load_plain, os_error_of
from nbtrain.core.stepper import to_device


def default_cache_dir() -> Path:
    """``$NBTRAIN_CACHE``, else ``$XDG_CACHE_HOME/nbtrain``, else ``~/.cache/nbtrain``."""
    if os.environ.get("NBTRAIN_CACHE"):
        return Path(os.environ["NBTRAIN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nbtrain"


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Features:
    """Cached body outputs and targets for the training and validation sets."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor | None
    valid_y: torch.Tensor | None
    key: str
    source: str = "computed"  # computed | memory | disk
    seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        tensors = [self.train_x, self.train_y, self.valid_x, self.valid_y]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def loaders(self, bs: int) -> tuple[DataLoader, DataLoader | None]:
        """Shuffled train and ordered valid loaders over the cached tensors.

        As the image loader does, training drops a last batch of one image (a BatchNorm
        in the head cannot train on it), so both have the same number of batches."""
        n = len(self.train_y)
        train = DataLoader(
            TensorDataset(self.train_x, self.train_y),
            batch_size=bs,
            shuffle=True,
            drop_last=n > 1 and n % bs == 1,
        )
        valid = (
            DataLoader(TensorDataset(self.valid_x, self.valid_y), batch_size=bs)
            if self.valid_x is not None and self.valid_y is not None
            else None
        )
        return train, valid


class CacheWarning(UserWarning):
    """The activation cache's disk copy could not be written or read; training goes on
    (the activations are in memory, or are computed again)."""


@dataclass
class FeatureCache:
    """Body activations in memory and on disk, keyed by content (see the module doc).

    ``hits``, ``misses`` and ``last`` (the last :class:`Features` served) make the
    cache's behaviour visible, e.g. in a freeze panel.

    Besides full entries, it keeps the validation activations of one key recorded during
    a validation pass through images (:meth:`record_valid`, memory only): with a frozen
    body and precompute off, the first epoch's validation pass computes them anyway.
    """

    directory: Path | None = field(default_factory=default_cache_dir)
    hits: int = 0
    misses: int = 0
    last: Features | None = None
    _memory: dict[str, Features] = field(default_factory=dict, repr=False)
    _valid: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    _told_write: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.directory is not None:  # a str works as well as a Path
            self.directory = Path(self.directory).expanduser()

    def key(self, body: nn.Module, parts: dict[str, str]) -> str:
        h = hashlib.sha256(weights_digest(body).encode())
        for name in sorted(parts):
            h.update(f"|{name}={parts[name]}".encode())
        return h.hexdigest()[:32]

    def get(
        self,
        body: nn.Module,
        *,
        fix: Iterable[Any],
        valid: Iterable[Any] | None,
        parts: dict[str, str],
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        channels_last: bool = False,
    ) -> Features:
        """The features for ``(body, parts)``: from memory, from disk, or computed now.

        ``fix`` is the training set with the evaluation transform, in a fixed order.
        """
        key = self.key(body, parts)
        feats: Features | None
        if key in self._memory:
            self.hits += 1
            feats = self._memory[key]
            feats.source = "memory"
        elif (feats := self._read(key)) is not None:
            self.hits += 1
            self._memory[key] = feats
        else:
            self.misses += 1
            t0 = time.perf_counter()
            def run(loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
                return extract(
                    body, loader, device=device, autocast=autocast, channels_last=channels_last
                )

            train_x, train_y = run(fix)
            valid_x, valid_y = None, None
            if valid is not None:  # a recorded validation pass saves half the work
                valid_x, valid_y = self._valid.get(key) or run(valid)
            feats = Features(
                train_x, train_y, valid_x, valid_y, key, "computed", time.perf_counter() - t0
            )
            self._memory[key] = feats
            self._write(feats)
        self.last = feats
        return feats

    def valid_features(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The validation activations and targets under ``key``, from a full entry (memory
        or disk) or a recorded validation pass; None when there are none. Never computes."""
        feats = self._memory.get(key)
        if feats is None and (feats := self._read(key)) is not None:
            self._memory[key] = feats
        if feats is not None and feats.valid_x is not None and feats.valid_y is not None:
            return feats.valid_x, feats.valid_y
        return self._valid.get(key)

    def record_valid(self, key: str, body: nn.Module, loader: Iterable[Any]) -> Iterator[Any]:
        """Yield ``loader``'s ``(inputs, targets)`` batches while keeping what ``body``
        outputs on them; when the loader is exhausted (not on an error or interrupt), keep
        those outputs under ``key`` for :meth:`valid_features`, in place of any earlier
        recording. The caller must run ``body`` once per batch, in eval mode, as
        :func:`extract` does, and ``key`` must be that of ``body``'s current weights."""
        outputs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []

        def keep(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            outputs.append(out.detach().to("cpu", torch.float32, copy=True))

        handle = body.register_forward_hook(keep)
        try:
            for batch in loader:
                targets.append(batch[1].cpu())
                yield batch
        finally:
            handle.remove()
        if outputs and len(outputs) == len(targets):
            with torch.inference_mode(False):  # plain tensors, like extract's
                self._valid = {key: (torch.cat(outputs), torch.cat(targets))}

    def clear(self, *, disk: bool = False) -> None:
        """Forget the entries in memory (and on disk with ``disk=True``)."""
        self._memory.clear()
        self._valid.clear()
        if disk and self.directory is not None and self.directory.exists():
            for path in self.directory.glob("*.pt"):
                path.unlink(missing_ok=True)

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.pt"

    def _read(self, key: str) -> Features | None:
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            d = load_plain(path)
            feats = Features(
                d["train_x"], d["train_y"], d.get("valid_x"), d.get("valid_y"), key, "disk"
            )
            _check_entry(feats)
            return feats
        except Exception as exc:  # a damaged entry is recomputed, never trusted
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            warnings.warn(
                f"the cached activations in {path} are damaged "
                f"({type(exc).__name__}{': ' + reason if reason else ''}); computing them again",
                CacheWarning,
                stacklevel=2,
            )
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None

    def _write(self, feats: Features) -> None:
        path = self._path(feats.key)
        if path is None:
            return
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                torch.save(
                    {
                        "train_x": feats.train_x,
                        "train_y": feats.train_y,
                        "valid_x": feats.valid_x,
                        "valid_y": feats.valid_y,
                    },
                    f,
                )
            os.replace(tmp, path)
            tmp = None
        except (OSError, RuntimeError) as exc:  # a read-only or full disk costs the reuse
            cause = os_error_of(exc)
            if cause is None:  # not the disk's doing
                raise
            if not self._told_write:
                self._told_write = True
                warnings.warn(
                    f"cannot write the activation cache to {path.parent} ({cause}); training "
                    "goes on with the activations in memory",
                    CacheWarning,
                    stacklevel=2,
                )
        finally:
            if tmp is not None:  # a failed or interrupted write leaves no partial file
                with contextlib.suppress(OSError):
                    Path(tmp).unlink(missing_ok=True)


def _check_entry(feats: Features) -> None:
    """ValueError unless a disk entry is tensors of matching lengths."""
    pairs: list[tuple[Any, Any]] = [(feats.train_x, feats.train_y)]
    if feats.valid_x is not None or feats.valid_y is not None:
        pairs.append((feats.valid_x, feats.valid_y))
    for x, y in pairs:
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise ValueError("an entry that is not tensors")
        if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
            raise ValueError(f"activations {tuple(x.shape)} for targets {tuple(y.shape)}")


def extract(
    body: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``body`` in eval and inference mode over ``loader``; float32 CPU outputs.

    The RNGs are left as they were (iterating a DataLoader draws a seed), so a run
    gives the same numbers whether its activations came from the cache or not.
    """
    was_training = body.training
    body.eval()
    xs, ys = [], []
    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode(), autocast():
            for xb, yb in loader:
                out = body(to_device(xb, device, channels_last=channels_last))
                xs.append(out.float().cpu())
                ys.append(yb.cpu())
    finally:
        body.train(was_training)
    if not xs:
        raise ValueError("no images to precompute activations for")
    return torch.cat(xs), torch.cat(ys)


class BodyHead(nn.Module):
    """A model that is ``head(body(x))``: what precompute needs to cut it in two.

    The body's output is what the feature cache stores; the head trains on it.
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
