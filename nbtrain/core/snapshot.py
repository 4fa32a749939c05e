"""In-memory snapshots of model, optimizer and RNG state, restored bit for bit.

The LR range test and the divergence guard use these instead of checkpoint files:
no temporary files (read-only file systems, parallel runs) and a restore that also
runs on KeyboardInterrupt.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nbtrain.core.resume import RNGStates


def clone_state_dict(module: nn.Module, *, device: str | torch.device | None = None) -> dict:
    """Detached copies of every parameter and buffer (optionally moved to ``device``)."""
    return {
        k: (v.detach().to(device, copy=True) if device is not None else v.detach().clone())
        for k, v in module.state_dict().items()
    }


def _clone_tree(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone_tree(v) for v in obj)
    return copy.deepcopy(obj)


@dataclass
class TrainingSnapshot:
    """Everything a few training steps change, held in memory.

    Model parameters and buffers (BatchNorm running statistics included), which
    modules are in training mode, ``requires_grad`` flags, the optimizer's state and
    hyper-parameters, a gradient scaler's state, and the RNGs.
    """

    model_state: dict[str, torch.Tensor]
    training_flags: list[bool]
    requires_grad: list[bool]
    grads: list[torch.Tensor | None]
    optimizer_state: dict | None
    scaler_state: dict | None
    rng: RNGStates | None

    @classmethod
    def capture(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
        *,
        rng: bool = True,
    ) -> TrainingSnapshot:
        params = list(model.parameters())
        return cls(
            model_state=clone_state_dict(model),
            training_flags=[m.training for m in model.modules()],
            requires_grad=[p.requires_grad for p in params],
            grads=[None if p.grad is None else p.grad.detach().clone() for p in params],
            optimizer_state=_clone_tree(optimizer.state_dict()) if optimizer else None,
            scaler_state=_clone_tree(scaler.state_dict()) if scaler is not None else None,
            rng=RNGStates.capture() if rng else None,
        )

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
        *,
        rng: bool = True,
    ) -> None:
        with torch.no_grad():
            # In-place copies: the optimizer keeps pointing at the same tensors.
            model.load_state_dict(self.model_state)
        for m, flag in zip(model.modules(), self.training_flags, strict=True):
            m.training = flag
        for p, flag, grad in zip(model.parameters(), self.requires_grad, self.grads, strict=True):
            p.requires_grad_(flag)
            p.grad = None if grad is None else grad.clone()
        if optimizer is not None and self.optimizer_state is not None:
            optimizer.load_state_dict(_clone_tree(self.optimizer_state))
        if scaler is not None and self.scaler_state is not None:
            scaler.load_state_dict(_clone_tree(self.scaler_state))
        if rng and self.rng is not None:
            self.rng.restore()


def check_state_dict(model: nn.Module, state: dict, *, source: str) -> None:
    """Raise one clear ValueError unless ``state`` has exactly ``model``'s keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (first: {extra[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of another shape (first: {k} {tuple(state[k].shape)} "
                f"vs {tuple(own[k].shape)})"
            )
        raise ValueError(f"{source} does not fit this model: " + "; ".join(parts))
