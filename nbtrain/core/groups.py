"""Layer groups: how a network is split for freezing and differential learning rates.

A layer group is a list of parameters (usually gathered from a few modules). The
optimizer gets one param group per layer group, holding *all* of that group's
parameters, frozen or not: a frozen parameter has ``requires_grad=False`` and no
gradient, so every torch optimizer skips it, and freezing or unfreezing never
rebuilds the optimizer (momentum is kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


@dataclass
class LayerGroup:
    """One layer group: a name, its modules (may be empty) and its parameters."""

    name: str
    params: list[nn.Parameter]
    modules: list[nn.Module] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.params)

    def batchnorms(self) -> list[nn.Module]:
        return [m for mod in self.modules for m in mod.modules() if isinstance(m, _BN_TYPES)]


def _as_group(i: int, item: object) -> LayerGroup:
    if isinstance(item, LayerGroup):
        return item
    if isinstance(item, nn.Module):
        return LayerGroup(f"group {i}", list(item.parameters()), [item])
    if isinstance(item, Iterable):
        items = list(item)
        if all(isinstance(x, nn.Module) for x in items):
            mods = list(items)
            return LayerGroup(f"group {i}", [p for m in mods for p in m.parameters()], mods)
        if all(isinstance(x, torch.Tensor) for x in items):
            return LayerGroup(f"group {i}", list(items), [])
    raise ValueError(
        f"layer group {i} must be a module, a list of modules or a list of parameters, "
        f"got {type(item).__name__}"
    )


def make_groups(model: nn.Module, layer_groups: Sequence[object] | None) -> list[LayerGroup]:
    """Build and check the layer groups of ``model``.

    ``layer_groups=None`` splits the model with :func:`default_groups`. Every parameter
    of the model must be in exactly one group.
    """
    groups = (
        default_groups(model)
        if layer_groups is None
        else [_as_group(i, g) for i, g in enumerate(layer_groups)]
    )
    if not groups:
        raise ValueError("layer_groups is empty; give at least one group")
    seen: dict[int, int] = {}
    for i, group in enumerate(groups):
        for p in group.params:
            if id(p) in seen and seen[id(p)] != i:
                raise ValueError(f"a parameter is in layer groups {seen[id(p)]} and {i}")
            seen[id(p)] = i
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise ValueError(
            f"{len(missing)} parameters of the model are in no layer group "
            f"(first: {missing[0]}); every parameter must be in one group"
        )
    return groups


def _split_by_size(modules: list[nn.Module]) -> int:
    """Index that splits ``modules`` into two runs of about equal parameter count."""
    sizes = [sum(p.numel() for p in m.parameters()) for m in modules]
    total, run = sum(sizes), 0
    for i, size in enumerate(sizes):
        run += size
        if run * 2 >= total:
            # Keep at least one module in each half.
            return min(max(i + 1, 1), len(modules) - 1)
    return max(len(modules) - 1, 1)


def _param_children(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.children() if any(True for _ in m.parameters())]


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flatten_children(module: nn.Module, depth: int = 3) -> list[nn.Module]:
    """The body's parts to split: its children, opening a child that dominates.

    A child that holds more than half of the parameters and has at least three parts
    of its own (EfficientNet's ``blocks``, a ResNet's stages) is replaced by them, so
    the split can fall inside it.
    """
    parts = _param_children(module)
    for _ in range(depth):
        total = sum(_size(m) for m in parts)
        opened = False
        for i, part in enumerate(parts):
            inner = _param_children(part)
            if _size(part) * 2 > total and (len(inner) >= 3 or (len(parts) == 1 and inner)):
                parts = parts[:i] + inner + parts[i + 1 :]
                opened = True
                break
        if not opened:
            break
    return parts


def _find_body_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    body, head = getattr(model, "body", None), getattr(model, "head", None)
    if isinstance(body, nn.Module) and isinstance(head, nn.Module):
        return body, head
    kids = [m for m in model.children() if any(True for _ in m.parameters())]
    if len(kids) >= 2:
        return nn.ModuleList(kids[:-1]), kids[-1]
    return None, None


def default_groups(model: nn.Module) -> list[LayerGroup]:
    """fastai 0.7's split: earlier body, later body, head.

    The head is ``model.head`` (with ``model.body``) or the last child holding
    parameters; the body is split where its cumulative parameter count passes half.
    Parameters held directly by ``model`` (not by a child) go to the head. A model
    with too few parts gets fewer groups.
    """
    body, head = _find_body_head(model)
    if body is None or head is None:
        return [LayerGroup("model", list(model.parameters()), [model])]
    parts = _flatten_children(body)
    body_params = list(body.parameters())
    head_ids = {id(p) for p in head.parameters()}
    in_body = {id(p) for p in body_params} - head_ids
    # Parameters held by the model itself, outside body and head, go to the head.
    head_params = list(head.parameters()) + [
        p for p in model.parameters() if id(p) not in in_body and id(p) not in head_ids
    ]
    head_group = LayerGroup("head", head_params, [head])
    if len(parts) < 2:
        return [
            LayerGroup("body", [p for p in body_params if id(p) in in_body], [body]),
            head_group,
        ]
    cut = _split_by_size(parts)
    early, late = parts[:cut], parts[cut:]
    late_params = [p for m in late for p in m.parameters()]
    late_ids = {id(p) for p in late_params}
    # Whatever of the body is not in a late part (including parameters the body holds
    # directly) is in the early group, so every parameter has exactly one group.
    early_params = [p for p in body_params if id(p) in in_body and id(p) not in late_ids]
    return [
        LayerGroup("body (early)", early_params, early),
        LayerGroup("body (late)", late_params, late),
        head_group,
    ]


def set_trainable(group: LayerGroup, trainable: bool) -> None:
    """Freeze or unfreeze one group; a frozen parameter also loses its gradient."""
    for p in group.params:
        p.requires_grad_(trainable)
        if not trainable:
            p.grad = None


def freeze_to(groups: Sequence[LayerGroup], n: int) -> None:
    """Freeze groups ``[0, n)`` and unfreeze ``[n, len)``; ``n`` may be negative (-1: the head).

    ``n == len(groups)`` would freeze everything, leaving nothing to train: refused.
    """
    count = len(groups)
    if isinstance(n, bool) or not isinstance(n, int) or not -count <= n < count:
        raise ValueError(
            f"freeze_to needs a group index in [{-count}, {count - 1}], got {n!r} "
            "(at least the last group must train)"
        )
    n = n % count if n < 0 else n
    for i, group in enumerate(groups):
        set_trainable(group, i >= n)


def param_groups(groups: Sequence[LayerGroup], lrs: Sequence[float]) -> list[dict]:
    """Optimizer param groups, one per layer group, with each group's rate."""
    if len(lrs) != len(groups):
        raise ValueError(f"got {len(lrs)} learning rates for {len(groups)} layer groups")
    return [
        {"params": g.params, "lr": lr, "name": g.name} for g, lr in zip(groups, lrs, strict=True)
    ]


def set_batchnorm_modes(
    groups: Sequence[LayerGroup],
    *,
    training: bool,
    train_bn: bool = False,
    freeze_all: bool = False,
) -> None:
    """Put BatchNorm of frozen groups in eval mode (running statistics untouched).

    Called after ``model.train()``. With ``train_bn=True`` BatchNorm layers of frozen
    groups keep training mode (fastai v2's default); their affine weights stay frozen.
    With ``freeze_all=True`` every BatchNorm layer before the last group (the head) uses
    and keeps its running statistics, trainable groups included (fastai 0.7's
    ``bn_freeze``): fine-tuning a pretrained body on small batches of a small data set can
    otherwise drag those statistics away from what the body was trained with. A head's
    BatchNorm (the mlp head's) is new: its statistics are this data's and keep following
    it (fixed, they broke the checklist's larger last size: loss 30x).
    """
    if not training:
        return
    last = len(groups) - 1
    for i, group in enumerate(groups):
        if (freeze_all and i < last) or (not group.trainable and not train_bn):
            for bn in group.batchnorms():
                bn.eval()
