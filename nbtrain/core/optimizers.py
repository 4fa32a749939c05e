"""The optimizers a learner can train with, by name: what ``Stage(opt=...)``,
``%fit_cycles --opt`` and ``Learner(opt_func="adamw")`` choose from.

Each is ``opt_func(param_groups, wd=...) -> Optimizer``: one param group per layer group,
whose ``lr`` the loop writes at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def sgd_momentum(params: list[dict], *, wd: float = 0.0) -> torch.optim.Optimizer:
    """The default optimizer: SGD with momentum 0.9, as in fastai 0.7's course."""
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=wd)


def adamw(params: list[dict], *, wd: float = 0.0) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, arXiv:1711.05101) with fastai's betas (0.9, 0.99):
    weight decay apart from the gradient's moments. Its rates are some 10x lower than
    SGD's for the same fit: run the range test again after switching."""
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": sgd_momentum,
    "adamw": adamw,
}
"""The optimizers a stage (``Stage(opt=...)``, ``%fit_cycles --opt``) names."""


def resolve_optimizer(
    opt_func: Callable[..., torch.optim.Optimizer] | str,
) -> Callable[..., torch.optim.Optimizer]:
    """``opt_func`` itself, or the optimizer of that name; ValueError in one line."""
    if isinstance(opt_func, str):
        if opt_func not in OPTIMIZERS:
            raise ValueError(f"no optimizer {opt_func!r}; these are: {', '.join(OPTIMIZERS)}")
        return OPTIMIZERS[opt_func]
    if not callable(opt_func):
        raise ValueError(f"opt_func must be a function or a name, got {opt_func!r}")
    return opt_func
