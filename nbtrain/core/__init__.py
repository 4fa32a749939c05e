"""nbtrain's training core: torch and the standard library only (no IPython, no widgets)."""

from nbtrain.core.events import EVENT_NAMES, Events
from nbtrain.core.groups import LayerGroup, default_groups, freeze_to
from nbtrain.core.learner import DataLoaders, Learner, seed_everything, sgd_momentum
from nbtrain.core.loop import DivergedWarning, fit
from nbtrain.core.lr_range import (
    LRRangeResult,
    run_lr_range,
    suggest_minimum,
    suggest_slide,
    suggest_steepest,
    suggest_valley,
)
from nbtrain.core.schedules import SGDRSchedule, cycle_epochs, resolve_lrs, sgdr_lr, spread_lrs
from nbtrain.core.state import EpochRecord, Snapshot, TrainState
from nbtrain.core.stepper import Stepper, accuracy, default_device

__all__ = [
    "EVENT_NAMES",
    "DataLoaders",
    "DivergedWarning",
    "EpochRecord",
    "Events",
    "LRRangeResult",
    "LayerGroup",
    "Learner",
    "SGDRSchedule",
    "Snapshot",
    "Stepper",
    "TrainState",
    "accuracy",
    "cycle_epochs",
    "default_device",
    "default_groups",
    "fit",
    "freeze_to",
    "resolve_lrs",
    "run_lr_range",
    "seed_everything",
    "sgd_momentum",
    "sgdr_lr",
    "spread_lrs",
    "suggest_minimum",
    "suggest_slide",
    "suggest_steepest",
    "suggest_valley",
]
