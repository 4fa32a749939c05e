"""The fast.ai checklist, once: the stages it trains and the rates it picks.

The 2018 course's eight steps (lesson 1) as a :class:`Checklist`: its numbers (how many
cycles at each step, how long the second range test runs, the size of the last stage)
and the rules that turn the range tests' suggestions into rates. The checklist
notebook's ``%%fit_cycles`` cells say the same stages (a test holds them to it);
``python -m nbtrain.demo`` and ``bench/checklist.py`` run them through
:meth:`Checklist.run` or its steps.

1. augmentation on, ``precompute=True``;  2. ``lr_find``;
3. the head on cached activations until its validation loss stops falling
   (:meth:`head_stages`, first stage);
4. augmentation with precompute off, ``cycle_len=1`` (second stage);
5. unfreeze;  6. earlier groups ``factor`` x lower per group;
7. ``lr_find`` again (:meth:`unfrozen_sweep`, :meth:`unfrozen_rates`);
8. the whole network with ``cycle_mult=2``, then one cycle at a larger size
   (:meth:`unfrozen_stages`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nbtrain.core.learner import Learner, PrecomputeWarning
from nbtrain.core.lr_range import LRRangeResult
from nbtrain.core.schedules import spread_lrs
from nbtrain.core.stages import Stage
from nbtrain.core.state import TrainState


def larger_size(size: int) -> int:
    """The size of the last, progressive-resizing stage: 9/7 of ``size`` (224 -> 288)."""
    return size * 9 // 7


@dataclass(frozen=True)
class Checklist:
    """The checklist's numbers; the defaults are the notebook's.

    Parameters
    ----------
    head_cycles
        Step 3: one-epoch SGDR cycles of the head on cached activations; with
        ``head_patience``, the most it may take.
    head_patience
        Step 3 ends after this many epochs without a lower validation loss, the best
        epoch's weights kept (``Stage.patience``); None: all ``head_cycles``. An epoch on
        cached activations costs milliseconds, so the head trains to convergence: two
        fixed epochs were the 2018 course's budget for a GPU epoch over images. On the
        fine-grained ELPV cells a random head took 10 to 38 epochs to converge
        (``bench/head_form.py``).
    aug_cycles
        Step 4: one-epoch cycles of the head on augmented images (precompute off).
    lr_find_epochs
        Step 7: the unfrozen range test's length in epochs of batches (at least 20
        and at most 100 steps: fewer give too rough a curve).
    unfreeze_cycles
        Step 8: cycles with ``cycle_mult=2`` (3: 1 + 2 + 4 epochs).
    final_size
        The last stage's image size (progressive resizing); None: no such stage.
    factor
        Each earlier layer group's rate is this many times lower (the course: 3-10).
    seed
        Seeds the range tests and the first stage (then the run goes on from there).
    """

    head_cycles: int = 50
    head_patience: int | None = 3
    aug_cycles: int = 2
    lr_find_epochs: float = 2.0
    unfreeze_cycles: int = 3
    final_size: int | None = None
    factor: float = 3.0
    seed: int | None = 0

    def head_stages(self, lr: float) -> list[Stage]:
        """Steps 3 and 4 at the head's rate ``lr`` (from the first range test)."""
        return [
            Stage(
                lr,
                cycles=self.head_cycles,
                patience=self.head_patience,
                precompute=True,
                seed=self.seed,
            ),
            Stage(lr, cycles=self.aug_cycles, cycle_len=1, precompute=False),
        ]

    def unfrozen_sweep(self, iters_per_epoch: int, n_groups: int) -> dict[str, Any]:
        """Step 7's range test: ``learn.lr_find(**sweep)``. Earlier groups keep their
        ``factor`` x lower ratio during it."""
        iters = min(100, max(20, round(self.lr_find_epochs * iters_per_epoch)))
        start = spread_lrs(1e-7, n_groups, factor=self.factor)
        return {"start": start, "iters": iters, "seed": self.seed}

    def unfrozen_rates(self, lr: float, lr_unfrozen: float | None, n_groups: int) -> list[float]:
        """The whole network's rates: the lower of its own suggestion and a tenth of the
        head's (the head's rate moves a trained body far enough to undo it), spread
        ``factor`` x lower per earlier group."""
        top = min(lr_unfrozen or lr / 10, lr / 10)
        return spread_lrs(top, n_groups, factor=self.factor)

    def unfrozen_stages(self, rates: Sequence[float]) -> list[Stage]:
        """Step 8: SGDR with ``cycle_mult=2``, then one cycle at ``final_size``."""
        stages = [Stage(tuple(rates), cycles=self.unfreeze_cycles, cycle_mult=2)]
        if self.final_size is not None:
            stages.append(Stage(tuple(rates), cycles=1, size=self.final_size))
        return stages

    def run(
        self,
        learn: Learner,
        *,
        unfreeze: bool = True,
        listeners: Sequence[object] = (),
        report: Callable[[str], None] = lambda line: None,
    ) -> ChecklistRun:
        """Every step on ``learn`` (a pretrained learner with precompute possible), or
        steps 1-4 with ``unfreeze=False``. ``report`` receives one line per step."""
        learn.precompute = True
        found = learn.lr_find(seed=self.seed)
        lr = head_rate(found)
        report(f"lr_find: {sweep_line(found)} -> lr {lr:.2e}")
        run = ChecklistRun(lr=lr)
        with warnings.catch_warnings():
            # Step 1 sets augmentation up with precompute on, knowingly: the cached head
            # cannot use it, and the next stage, which can, turns precompute off.
            warnings.simplefilter("ignore", PrecomputeWarning)
            run.states += learn.fit_stages(self.head_stages(lr), listeners=listeners)
        if not unfreeze or run.states[-1].status != "done":
            return run
        learn.unfreeze()
        learn.bn_freeze()  # BatchNorm statistics stay as pretrained
        found = learn.lr_find(**self.unfrozen_sweep(learn.iters_per_epoch(), learn.n_groups))
        run.lr_unfrozen = found.suggestion
        run.rates = self.unfrozen_rates(lr, found.suggestion, learn.n_groups)
        report(
            f"lr_find (unfrozen): {sweep_line(found)} -> rates "
            + ", ".join(f"{r:.1e}" for r in run.rates)
        )
        run.states += learn.fit_stages(self.unfrozen_stages(run.rates), listeners=listeners)
        return run


@dataclass
class ChecklistRun:
    """What :meth:`Checklist.run` found and ran."""

    lr: float
    lr_unfrozen: float | None = None
    rates: list[float] = field(default_factory=list)
    states: list[TrainState] = field(default_factory=list)


def head_rate(found: LRRangeResult) -> float:
    """The first range test's suggestion; ValueError (one line) when it has none."""
    if found.suggestion is None:
        notes = "; ".join(found.notes) if found.notes else found.stop_reason
        raise ValueError(f"the range test suggested no rate ({notes}); pick one from its plot")
    return found.suggestion


def sweep_line(found: LRRangeResult) -> str:
    """``40 steps (end); valley 1.2e-02, steepest 3.4e-03`` (rules without a rate left out)."""
    rules = ", ".join(f"{k} {v:.1e}" for k, v in found.suggestions.items() if v)
    return f"{len(found.lrs)} steps ({found.stop_reason}); {rules or 'no suggestion'}"
