"""What a Learner reads from its data, as protocols.

Every data object has a training and a validation loader (:class:`DataSource`). The
rest is optional and unlocks a feature: the learner checks for it with ``isinstance``
(all protocols are runtime-checkable, so any object with the members qualifies; none
needs to inherit from them). :class:`nbtrain.vision.ImageData` has all of them;
:class:`DataLoaders` only the loaders.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class DataSource(Protocol):
    """A training and a validation loader (``valid`` may be None)."""

    @property
    def train(self) -> Any: ...

    @property
    def valid(self) -> Any: ...


@runtime_checkable
class Batched(Protocol):
    """Data that says its batch size (used for loaders over cached activations)."""

    @property
    def bs(self) -> int: ...


@runtime_checkable
class Cacheable(Protocol):
    """Data whose body activations can be cached (precompute): a loader over the
    training images without augmentation, in a fixed order (``fix``), and signatures
    of the files and of the transform that key the cache."""

    @property
    def fix(self) -> Iterable[Any]: ...

    def file_signature(self, split: str) -> str: ...

    def eval_signature(self) -> str: ...


@runtime_checkable
class Resizable(Protocol):
    """Image data whose size can change between fits (progressive resizing)."""

    def set_size(self, size: int) -> Any: ...


@runtime_checkable
class Augmenting(Protocol):
    """Data that augments its training images when ``augment`` is true."""

    @property
    def augment(self) -> bool: ...


@runtime_checkable
class Reseedable(Protocol):
    """Data with RNGs of its own (shuffling, augmentation), seeded with the learner's."""

    def reseed(self, seed: int) -> Any: ...


@runtime_checkable
class TTAData(Protocol):
    """Data with several views of each validation image (test-time augmentation)."""

    def tta_loaders(self) -> Sequence[Iterable[Any]]: ...


@runtime_checkable
class Preparing(Protocol):
    """Data that turns one raw item (a path, an image) into a model input."""

    def prepare(self, item: Any) -> torch.Tensor: ...


@runtime_checkable
class Inferable(Protocol):
    """Image data that can describe its eval transform as plain values (for an export)."""

    def inference_spec(self) -> dict[str, Any]: ...


@runtime_checkable
class Labelled(Protocol):
    """Data with class names, index for index the model's outputs."""

    @property
    def classes(self) -> Sequence[str]: ...


@dataclass
class DataLoaders:
    """The minimal data a Learner needs: a training and a validation loader."""

    train: Any
    valid: Any
    path: Path | None = None


def as_data(data: Any) -> DataSource:
    """``data`` itself, or a :class:`DataLoaders` of a ``(train, valid)`` pair."""
    if isinstance(data, tuple) and len(data) == 2:
        return DataLoaders(*data)
    if not isinstance(data, DataSource):
        raise ValueError(
            "data must have .train and .valid DataLoaders (or be a (train, valid) pair), "
            f"got {type(data).__name__}"
        )
    return data


def batch_size(data: DataSource, loader: Any) -> int:
    """The data's batch size, else ``loader``'s."""
    if isinstance(data, Batched) and data.bs:
        return data.bs
    return loader.batch_size
