"""nbtrain's training core: torch and the standard library only (no IPython, no widgets)."""

from nbtrain.core.data import DataLoaders, DataSource
from nbtrain.core.events import EVENT_NAMES, Events
from nbtrain.core.groups import LayerGroup, default_groups, freeze_to
from nbtrain.core.learner import Learner, seed_everything, sgd_momentum
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
from nbtrain.core.stages import Plan, Stage, StageError, plan_stages
from nbtrain.core.state import EpochRecord, Snapshot, TrainState
from nbtrain.core.stepper import Stepper, accuracy, default_device

__all__ = [
    "EVENT_NAMES",
    "DataLoaders",
    "DataSource",
    "DivergedWarning",
    "EpochRecord",
    "Events",
    "LRRangeResult",
    "LayerGroup",
    "Learner",
    "Plan",
    "SGDRSchedule",
    "Snapshot",
    "Stage",
    "StageError",
    "Stepper",
    "TrainState",
    "accuracy",
    "cycle_epochs",
    "default_device",
    "default_groups",
    "fit",
    "freeze_to",
    "plan_stages",
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
