"""A pretrained body plus a new head, split into three layer groups, body frozen."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from nbtrain.core.features import BodyHead
from nbtrain.vision.classes import (
    check_head_init,
    head_init_summary,
    resolve_head_init,
    warn_head_init,
)
from nbtrain.vision.models import OFFLINE_ARCH, BodySpec, body_groups, create_body

if TYPE_CHECKING:  # the core imports this module, never the other way round
    from nbtrain.core.learner import Learner

L = TypeVar("L", bound="Learner")


class ImageClassifier(BodyHead):
    """``head(body(x))``: a pretrained body ending in global pooling, and a new head
    (dropout, then a linear layer to the classes).

    ``classes`` and ``head_init`` (see :func:`nbtrain.vision.classes.resolve_head_init`) decide
    whether the linear layer starts from the body's pretrained classifier rows or at random;
    ``self.head_init`` says which, in one line.
    """

    def __init__(
        self,
        spec: BodySpec,
        n_classes: int,
        *,
        dropout: float = 0.25,
        classes: Sequence[str] | None = None,
        head_init: str | Mapping[str, int | str] | None = "auto",
    ) -> None:
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        classes = list(classes) if classes is not None else [str(i) for i in range(n_classes)]
        if len(classes) != n_classes:
            raise ValueError(f"{len(classes)} class names for {n_classes} classes")
        rows = resolve_head_init(head_init, classes, spec.classifier)
        linear = nn.Linear(spec.n_features, n_classes)
        if rows is not None and spec.classifier is not None:
            with torch.no_grad():
                linear.weight.copy_(spec.classifier.weight[rows])
                linear.bias.copy_(spec.classifier.bias[rows])
        super().__init__(spec.body, nn.Sequential(nn.Dropout(dropout), linear))
        self.head_init = head_init_summary(classes, rows, spec.classifier)
        self.spec = replace(spec, classifier=None)  # its 1000 rows are not needed any more

    @property
    def arch(self) -> str:
        return self.spec.arch


def pretrained_learner(
    learner_cls: type[L],
    data: Any,
    arch: str | nn.Module = OFFLINE_ARCH,
    *,
    precompute: bool = False,
    pretrained: bool = True,
    dropout: float = 0.25,
    head_init: str | Mapping[str, int | str] | None = "auto",
    seed: int | None = 0,
    **kwargs: Any,
) -> L:
    """See :meth:`nbtrain.Learner.pretrained`; ``learner_cls`` is the class it was
    called on (the core passes it in, so this module never imports the core's Learner)."""
    classes = getattr(data, "classes", None)
    if not classes:
        raise ValueError("the data has no classes; build it with ImageData.from_folder/from_csv")
    check_head_init(head_init)  # before the body is built (it may download)
    with torch.random.fork_rng(devices=[]):  # the user's RNG stream is left alone
        if seed is not None:
            torch.manual_seed(seed)  # the new head starts the same in every kernel
        spec = create_body(arch, pretrained=pretrained)
        model = ImageClassifier(
            spec, len(classes), dropout=dropout, classes=classes, head_init=head_init
        )
    if hasattr(data, "set_normalization"):
        data.set_normalization(spec.mean, spec.std)  # inputs as the body was trained on
    early, late = body_groups(spec)
    learn = learner_cls(model, data, layer_groups=[early, late, model.head], **kwargs)
    for group, name in zip(learn.groups, ("body (early)", "body (late)", "head"), strict=True):
        group.name = name
    learn.freeze()
    learn.precompute = precompute
    learn.source = _source(data, arch, pretrained, dropout, head_init, seed, kwargs)
    if head_init == "auto" and model.head_init != "random":  # picked by name: say which
        warn_head_init(model.head_init, stacklevel=3)  # the caller of Learner.pretrained
    return learn


PLAIN_OPTIONS = ("wd", "mixed_precision", "train_bn", "channels_last")


def _plain_option(name: str, value: Any) -> bool:
    """Whether a Learner option can be written down (an optimizer by name can)."""
    return name in PLAIN_OPTIONS or (name == "opt_func" and isinstance(value, str))


def _source(
    data: Any,
    arch: str | nn.Module,
    pretrained: bool,
    dropout: float,
    head_init: Any,
    seed: int | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """How to build this learner again (see ``Learner.from_checkpoint``): plain values
    only, and the names of what a checkpoint cannot hold (a module, a function)."""
    module = not isinstance(arch, str)
    return {
        "from": "pretrained",
        "arch": None if module else arch,
        "arch_class": f"{type(arch).__module__}.{type(arch).__qualname__}" if module else None,
        "pretrained": pretrained,
        "dropout": dropout,
        "head_init": dict(head_init) if isinstance(head_init, Mapping) else head_init,
        "seed": seed,
        "data": getattr(data, "source", None),
        "data_class": type(data).__name__,
        "data_settings": {
            name: getattr(data, name)
            for name in ("size", "bs", "num_workers", "augment")
            if isinstance(getattr(data, name, None), int | bool)
        },
        "options": {k: v for k, v in options.items() if _plain_option(k, v)},
        "not_plain": sorted(
            k for k, v in options.items() if k not in ("device", "path") and not _plain_option(k, v)
        ),
    }
