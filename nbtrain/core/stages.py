"""Stages: what one SGDR run of a fit asks for, as plain data, and the plan of a run.

A :class:`Stage` is what one line of a ``%%fit_cycles`` cell says: the rates, the
cycles, and what changes before it (freeze state, image size, precompute, a seed).
It holds numbers only, so a list of stages can be written to a checkpoint or sent to
another process and means the same there.

:func:`plan_stages` checks every stage against a learner *before* anything runs and
returns a :class:`Plan`: the stages with the SGDR schedule each will follow. The loop
trains on exactly that plan, and every view receives it with the first ``fit_start``
(``state.plan``), so the curve a view draws is the curve the loop follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from numbers import Real
from typing import TYPE_CHECKING, Any

from nbtrain.core.checks import whole_number
from nbtrain.core.optimizers import OPTIMIZERS
from nbtrain.core.schedules import SGDRSchedule, resolve_lrs

if TYPE_CHECKING:
    from nbtrain.core.learner import Learner

LR = float | Sequence[float] | slice
"""A rate for every layer group: one number, one per group, or a slice (see
:func:`~nbtrain.core.schedules.resolve_lrs`)."""


def _plain_lr(lr: Any) -> float | tuple[float, ...] | slice:
    """``lr`` as plain, comparable data: a float, a tuple of floats, or a slice."""
    if isinstance(lr, slice):
        return lr
    if isinstance(lr, Real) and not isinstance(lr, bool):
        return float(lr)
    if not isinstance(lr, str | bytes) and hasattr(lr, "__len__"):
        try:
            return tuple(float(x) for x in lr)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"lr must be a number, a list of numbers or a slice, got {lr!r}")


@dataclass(frozen=True)
class Stage:
    """One SGDR run: ``lr``, ``cycles`` of ``cycle_len * cycle_mult**i`` epochs, and
    what changes before it starts.

    Parameters
    ----------
    lr
        Maximum rate: one number, one per layer group, or a slice.
    cycles, cycle_len, cycle_mult
        ``cycles`` restarts; the first lasts ``cycle_len`` epochs, each later one
        ``cycle_mult`` times longer.
    size
        Image size from this stage on (progressive resizing); None keeps it.
    precompute
        Turn training on cached body activations on or off; None keeps it.
    seed
        Seed every RNG before this stage; None goes on from where they are.
    freeze_to
        Freeze the groups before this index first (0 unfreezes, -1 trains the head
        only); None keeps the freeze state.
    patience
        Train until the validation loss stops improving: end the stage after
        ``patience`` epochs without a lower one, and put the best epoch's weights back
        (also when ``cycles`` runs out first). Needs one-epoch cycles (``cycles`` is then
        the most epochs) and validation data. Meant for a head on cached activations,
        where an epoch costs milliseconds.
    opt
        Train with this optimizer from this stage on (``"sgd"``: SGD with momentum 0.9,
        the course's; ``"adamw"``); its state starts afresh. None keeps the learner's.

    Values are checked on construction (whole numbers, cycles >= 1, ...); what
    depends on a learner (the number of layer groups, image data) is checked by
    :meth:`validate`.
    """

    lr: LR
    cycles: int = 1
    cycle_len: int = 1
    cycle_mult: int = 1
    size: int | None = None
    precompute: bool | None = None
    seed: int | None = None
    freeze_to: int | None = None
    patience: int | None = None
    opt: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _plain_lr(self.lr))
        for name in (
            "cycles", "cycle_len", "cycle_mult", "size", "seed", "freeze_to", "patience"
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                minimum = None if name in ("seed", "freeze_to") else 1
                object.__setattr__(self, name, whole_number(name, value, minimum=minimum))
        if self.precompute is not None and not isinstance(self.precompute, bool):
            raise ValueError(f"precompute must be True or False, got {self.precompute!r}")
        if self.opt is not None and self.opt not in OPTIMIZERS:
            raise ValueError(f"opt must be one of {', '.join(OPTIMIZERS)}, got {self.opt!r}")
        if self.patience is not None and (self.cycle_len, self.cycle_mult) != (1, 1):
            raise ValueError(
                "patience works with one-epoch cycles (cycle_len=1, cycle_mult=1); "
                "cycles is then the most epochs"
            )

    def schedule(self, learn: Learner) -> SGDRSchedule:
        """The SGDR schedule this stage follows on ``learn``; ValueError (one line) when
        the stage cannot run there."""
        self._check_changes(learn)
        return SGDRSchedule(
            lrs=resolve_lrs(self.lr, learn.n_groups),
            iters_per_epoch=learn.iters_per_epoch(),
            cycles=self.cycles,
            cycle_len=self.cycle_len,
            cycle_mult=self.cycle_mult,
        )

    def validate(self, learn: Learner) -> None:
        """Raise ValueError, with a one-line message, if this stage cannot run on
        ``learn``; change nothing."""
        self.schedule(learn)

    def _check_changes(self, learn: Learner) -> None:
        n = learn.n_groups
        if self.freeze_to is not None and not -n <= self.freeze_to < n:
            raise ValueError(
                f"freeze_to needs a group index in [{-n}, {n - 1}], got {self.freeze_to} "
                "(at least the last group must train)"
            )
        if self.size is not None and not learn.can_resize():
            raise ValueError(
                f"size needs image data; this learner's data "
                f"({type(learn.data).__name__}) has no set_size()"
            )
        if self.precompute and (reason := learn.precompute_unsupported()):
            raise ValueError(f"precompute is not possible here: {reason}")
        if self.patience is not None and learn.data.valid is None:
            raise ValueError("patience needs validation data, to see the loss stop improving")

    def trainable_after(self, trainable: Sequence[bool]) -> list[bool]:
        """Which groups train in this stage, given which trained before it."""
        if self.freeze_to is None:
            return list(trainable)
        n = self.freeze_to % len(trainable)
        return [i >= n for i in range(len(trainable))]

    def as_dict(self) -> dict[str, Any]:
        """The stage as JSON-ready values (a slice becomes ``{"slice": [start, stop]}``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        lr = self.lr
        out["lr"] = (
            {"slice": [lr.start, lr.stop]}
            if isinstance(lr, slice)
            else list(lr)
            if isinstance(lr, tuple)
            else lr
        )
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Stage:
        """The inverse of :meth:`as_dict`."""
        values = dict(values)
        lr = values.get("lr")
        if isinstance(lr, dict) and set(lr) == {"slice"}:
            values["lr"] = slice(*lr["slice"])
        unknown = set(values) - set(STAGE_KEYS)
        if unknown:
            raise ValueError(f"unknown stage keys {sorted(unknown)}; keys: {', '.join(STAGE_KEYS)}")
        return cls(**values)


STAGE_KEYS = tuple(f.name for f in fields(Stage))
"""The keys of a stage, in the order a ``%%fit_cycles`` line lists them."""


class StageError(ValueError):
    """A stage that cannot run: ``index`` says which (0-based), ``reason`` why, in one
    line; ``str()`` is ``"stage 2: reason"`` (or only the reason in a one-stage run)."""

    def __init__(self, index: int, reason: str, *, n_stages: int) -> None:
        super().__init__(f"stage {index + 1}: {reason}" if n_stages > 1 else reason)
        self.index = index
        self.reason = reason


@dataclass(frozen=True)
class Plan:
    """Stages checked against a learner, with the SGDR schedule of each.

    ``learn.fit_stages(plan)`` trains exactly these schedules, in order; a view built
    from ``plan.schedules`` draws what will run.
    """

    stages: tuple[Stage, ...]
    schedules: tuple[SGDRSchedule, ...] = field(repr=False)

    @property
    def total_iters(self) -> int:
        return sum(s.total_iters for s in self.schedules)

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.schedules)

    def __len__(self) -> int:
        return len(self.stages)


def plan_stages(learn: Learner, stages: Sequence[Stage]) -> Plan:
    """Check every stage against ``learn`` and plan its schedule; nothing changes.

    The freeze state is followed from stage to stage, so a stage that would leave
    nothing to train is refused before the first one runs. Raises :class:`StageError`.
    """
    stages = tuple(stages)
    if not stages:
        raise ValueError("no stages to run")
    for i, stage in enumerate(stages):
        if not isinstance(stage, Stage):
            raise StageError(i, f"not a Stage: {type(stage).__name__}", n_stages=len(stages))
    schedules = []
    trainable = learn.trainable
    for i, stage in enumerate(stages):
        try:
            schedules.append(stage.schedule(learn))
        except ValueError as exc:
            raise StageError(i, str(exc), n_stages=len(stages)) from None
        trainable = stage.trainable_after(trainable)
        if not any(trainable):
            raise StageError(
                i,
                "every layer group is frozen; unfreeze one (e.g. learn.freeze()) to train",
                n_stages=len(stages),
            )
    return Plan(stages, tuple(schedules))
