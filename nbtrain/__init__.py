"""nbtrain: train image classifiers from a Jupyter notebook, the fast.ai 2018 way.

``%load_ext nbtrain`` registers the magics; ``nbtrain.Learner`` is the Python API.
"""

from nbtrain.core import (
    DataLoaders,
    Learner,
    LRRangeResult,
    SGDRSchedule,
    accuracy,
    seed_everything,
    spread_lrs,
)

__version__ = "0.1.0"

__all__ = [
    "DataLoaders",
    "LRRangeResult",
    "Learner",
    "SGDRSchedule",
    "__version__",
    "accuracy",
    "seed_everything",
    "spread_lrs",
]
