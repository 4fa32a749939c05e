"""One optimisation step and one validation pass, shared by the fit loop and lr_find.

Also the device and mixed-precision choices, and the interrupt guard that turns a
kernel interrupt (SIGINT) into a stop at the next batch boundary.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nbtrain.core.groups import LayerGroup, set_batchnorm_modes

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose highest logit is the target class."""
    return (logits.argmax(dim=-1) == targets).float().mean()


def default_device() -> torch.device:
    """CUDA when present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(device: torch.device, mixed_precision: bool | None) -> torch.dtype | None:
    """Autocast dtype: bfloat16 (or float16) on CUDA by default, none on the CPU.

    bfloat16 autocast on a CPU is slower than float32 on most CPUs, so it is used there
    only when asked for (``mixed_precision=True``).
    """
    if mixed_precision is None:
        mixed_precision = device.type == "cuda"
    if not mixed_precision:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def to_device(batch: Any, device: torch.device, *, channels_last: bool = False) -> Any:
    """Move a batch (tensors, or tuples/lists of them) to ``device``; image batches
    (4-d floating tensors) go channels-last when asked, to match the model."""
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(b, device, channels_last=channels_last) for b in batch)
    return batch


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@dataclass
class Stepper:
    """Runs training steps and validation passes of one model with one optimizer.

    ``lrs`` written by :meth:`train_step` go straight into the optimizer's param
    groups: the param groups are the one place the rate lives.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    groups: Sequence[LayerGroup]
    device: torch.device
    dtype: torch.dtype | None = None
    train_bn: bool = False
    scaler: Any = None
    metrics: Sequence[Metric] = field(default_factory=tuple)
    channels_last: bool = False
    freeze_bn: bool = False
    # Called at the start of each validation pass: (module, batches) to run instead of
    # ``model`` over the loader given, e.g. the head over cached activations.
    validation: Callable[[], tuple[nn.Module, Any] | None] | None = None
    # In a rank of a distributed fit: whether every rank's loss is finite (one
    # all-reduce), so that all skip the backward pass, and its all-reduce, together.
    all_finite: Callable[[bool], bool] | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def set_train_mode(self) -> None:
        self.model.train()
        set_batchnorm_modes(
            self.groups, training=True, train_bn=self.train_bn, freeze_all=self.freeze_bn
        )

    def set_lrs(self, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    def forward_loss(self, batch: Any) -> torch.Tensor:
        xb, yb = to_device(batch, self.device, channels_last=self.channels_last)
        with self.autocast():
            return self.loss_fn(self.model(xb), yb)

    def train_step(
        self, batch: Any, lrs: Sequence[float], guard: InterruptGuard, *, hold: bool = False
    ) -> float:
        """Forward, backward and one optimizer step; returns the loss as a float.

        A non-finite loss returns before the backward pass, so the weights are those
        of the last finite step. The optimizer step runs inside ``guard.critical()``: a
        kernel interrupt there waits until the step is whole (and, with ``hold``, until the
        caller calls ``guard.raise_pending()``).
        """
        self.set_lrs(lrs)
        loss = self.forward_loss(batch)
        value = loss.item()  # one sync per step; the smoothed loss and NaN check need it
        finite = math.isfinite(value)
        if self.all_finite is not None and not self.all_finite(finite):
            return value if not finite else math.nan  # another rank's loss diverged
        if not finite:
            return value
        opt = self.optimizer
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            with guard.critical(hold=hold):
                self.scaler.step(opt)
                self.scaler.update()
                opt.zero_grad(set_to_none=True)
        else:
            loss.backward()
            with guard.critical(hold=hold):
                opt.step()
                opt.zero_grad(set_to_none=True)
        return value

    def validate(self, loader: Any) -> tuple[float, dict[str, float]]:
        """Mean loss and metrics over ``loader`` (weighted by batch size), in eval mode;
        over what :attr:`validation` gives instead, when it gives something."""
        model = self.model
        found = self.validation() if self.validation is not None else None
        if found is not None:
            model, loader = found
        was_training = self.model.training
        self.model.eval()
        total, loss_sum = 0, torch.zeros((), dtype=torch.float64, device=self.device)
        sums = [torch.zeros((), dtype=torch.float64, device=self.device) for _ in self.metrics]
        try:
            with torch.inference_mode(), self.autocast():
                for batch in loader:
                    xb, yb = to_device(batch, self.device, channels_last=self.channels_last)
                    out = model(xb).float()
                    n = yb.shape[0]
                    total += n
                    loss_sum += self.loss_fn(out, yb).double() * n
                    for i, metric in enumerate(self.metrics):
                        sums[i] += metric(out, yb).double() * n
        finally:
            if was_training:
                self.set_train_mode()
        if total == 0:
            return math.nan, {}
        names = [getattr(m, "__name__", f"metric_{i}") for i, m in enumerate(self.metrics)]
        return (loss_sum / total).item(), {
            name: (s / total).item() for name, s in zip(names, sums, strict=True)
        }


class InterruptGuard:
    """Turns SIGINT into a graceful stop while a loop runs in the main thread.

    The first interrupt sets ``interrupted`` and asks the loop (``on_interrupt``) to stop
    at the next batch boundary; a second one raises KeyboardInterrupt at once, except
    inside :meth:`critical` (an optimizer step), where it is held back until the step
    is whole. Outside the main thread (where signals cannot be caught) it does nothing.
    """

    def __init__(self, on_interrupt: Callable[[], None] | None = None) -> None:
        self.on_interrupt = on_interrupt
        self.interrupted = False
        self._in_critical = False
        self._pending = False
        self._previous: Any = None
        self._active = False

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.interrupted:
            self.interrupted = True
            if self.on_interrupt is not None:
                self.on_interrupt()
            return
        if self._in_critical:
            self._pending = True
            return
        raise KeyboardInterrupt

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handler)
                self._active = True
            except ValueError:  # pragma: no cover - e.g. an embedded interpreter
                self._active = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._previous)
            self._active = False

    @contextlib.contextmanager
    def critical(self, *, hold: bool = False) -> Iterator[None]:
        """A section a second interrupt does not cut: it is raised at the end, or, with
        ``hold``, kept until :meth:`raise_pending` (after the caller's bookkeeping)."""
        self._in_critical = True
        try:
            yield
        finally:
            self._in_critical = False
        if not hold:
            self.raise_pending()

    def raise_pending(self) -> None:
        """Raise the interrupt held back by :meth:`critical`, if one came."""
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt("interrupted twice; stopped after the step in progress")
