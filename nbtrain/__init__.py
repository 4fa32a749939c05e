"""nbtrain: train image classifiers from a Jupyter notebook, the fast.ai 2018 way.

``%load_ext nbtrain`` registers the magics; ``nbtrain.Learner`` is the Python API.
"""

from nbtrain.core import (
    DataLoaders,
    Learner,
    LRRangeResult,
    SGDRSchedule,
    Stage,
    accuracy,
    seed_everything,
    spread_lrs,
)
from nbtrain.core.distributed import load_result, save_job

__version__ = "0.1.0"


def load_model(path: str, **kwargs: object) -> object:
    """A :class:`~nbtrain.predict.Predictor` for a file written by ``learn.export()``:
    ``load_model(path).predict(image)`` gives the class and the probabilities. Needs
    torch, numpy and PIL only (see :mod:`nbtrain.predict`)."""
    from nbtrain.predict import load_model as load

    return load(path, **kwargs)  # type: ignore[arg-type]


def load_ipython_extension(ip: object) -> None:
    """``%load_ext nbtrain``: register the magics (imported only now: IPython stays out
    of ``import nbtrain``)."""
    from nbtrain.magics import load_ipython_extension as load

    load(ip)


def unload_ipython_extension(ip: object) -> None:
    """``%unload_ext nbtrain``: remove the magics and the async rewrite of fit cells."""
    from nbtrain.magics import unload_ipython_extension as unload

    unload(ip)


__all__ = [
    "DataLoaders",
    "LRRangeResult",
    "Learner",
    "SGDRSchedule",
    "Stage",
    "__version__",
    "accuracy",
    "load_model",
    "load_result",
    "save_job",
    "seed_everything",
    "spread_lrs",
]
