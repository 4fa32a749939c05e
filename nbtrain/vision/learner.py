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
from nbtrain.vision.models import OFFLINE_ARCH, BodySpec, body_groups, concat_pool, create_body

if TYPE_CHECKING:  # the core imports this module, never the other way round
    from nbtrain.core.learner import Learner

L = TypeVar("L", bound="Learner")


HEADS = ("auto", "linear", "mlp")
HIDDEN = 512  # the mlp head's hidden width (fastai's)


class ImageClassifier(BodyHead):
    """``head(body(x))``: a pretrained body ending in global pooling, and a new head.

    Heads (``head=``):

    - ``"linear"``: dropout, then one linear layer over the average-pooled features. It
      can start from the body's pretrained classifier rows (``head_init``).
    - ``"mlp"``: fastai's head. The body pools average and max side by side (twice the
      width; the activation cache holds both), then BatchNorm, dropout/2, a hidden linear
      layer of 512, ReLU, BatchNorm, dropout, the linear layer to the classes. Always starts
      at random.
    - ``"auto"``: ``"linear"`` when its rows start from pretrained classes (``head_init``
      matched every class), ``"mlp"`` otherwise. Measured in ``bench/head_form.py``: from
      pretrained rows the linear head starts where the body already is; from a random start
      the mlp head ends higher on fine-grained classes.

    ``self.head_kind`` says which head was built and ``self.head_init`` where it started.
    """

    def __init__(
        self,
        spec: BodySpec,
        n_classes: int,
        *,
        head: str = "auto",
        dropout: float | None = None,
        classes: Sequence[str] | None = None,
        head_init: str | Mapping[str, int | str] | None = "auto",
    ) -> None:
        check_head(head, head_init)
        dropout = default_dropout(head) if dropout is None else dropout
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        classes = list(classes) if classes is not None else [str(i) for i in range(n_classes)]
        if len(classes) != n_classes:
            raise ValueError(f"{len(classes)} class names for {n_classes} classes")
        rows = None if head == "mlp" else resolve_head_init(head_init, classes, spec.classifier)
        kind = head if head != "auto" else "linear" if rows is not None else "mlp"
        if kind == "mlp":
            spec = concat_pool(spec) or spec  # a body it cannot change pools as it did
            layers = mlp_head(spec.n_features, n_classes, dropout=dropout)
        else:
            layers = linear_head(spec, n_classes, rows, dropout=dropout)
        super().__init__(spec.body, layers)
        self.head_kind = kind
        self.dropout = dropout
        self.head_init = head_init_summary(classes, rows, spec.classifier)
        self.spec = replace(spec, classifier=None)  # its 1000 rows are not needed any more

    @property
    def arch(self) -> str:
        return self.spec.arch


def check_head(head: object, head_init: object) -> None:
    """Raise ValueError for an unknown head, or pretrained rows asked of the mlp head."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(map(repr, HEADS))}, got {head!r}")
    check_head_init(head_init)
    if head == "mlp" and head_init not in ("auto", "random", None):
        raise ValueError(
            f"head_init={head_init!r} needs head='linear' (the mlp head's hidden layer "
            "has no pretrained rows to start from)"
        )


def default_dropout(head: str) -> float:
    """The dropout of the head's last layer when none is given: 0.25 before a lone linear
    layer, fastai's 0.5 in the mlp head (``"auto"`` resolves first, so it has none)."""
    return 0.5 if head == "mlp" else 0.25


def linear_head(
    spec: BodySpec, n_classes: int, rows: list[int] | None, *, dropout: float
) -> nn.Sequential:
    linear = nn.Linear(spec.n_features, n_classes)
    if rows is not None and spec.classifier is not None:
        with torch.no_grad():
            linear.weight.copy_(spec.classifier.weight[rows])
            linear.bias.copy_(spec.classifier.bias[rows])
    return nn.Sequential(nn.Dropout(dropout), linear)


def mlp_head(width: int, n_classes: int, *, dropout: float, hidden: int = HIDDEN) -> nn.Sequential:
    """fastai's head over pooled features: BatchNorm, dropout/2, linear, ReLU, BatchNorm,
    dropout, linear (no biases before a BatchNorm; He init before the ReLU)."""
    first = nn.Linear(width, hidden, bias=False)
    nn.init.kaiming_normal_(first.weight, nonlinearity="relu")
    return nn.Sequential(
        nn.BatchNorm1d(width),
        nn.Dropout(dropout / 2),
        first,
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_classes),
    )


def pretrained_learner(
    learner_cls: type[L],
    data: Any,
    arch: str | nn.Module = OFFLINE_ARCH,
    *,
    precompute: bool = False,
    pretrained: bool = True,
    head: str = "auto",
    dropout: float | None = None,
    head_init: str | Mapping[str, int | str] | None = "auto",
    seed: int | None = 0,
    **kwargs: Any,
) -> L:
    """See :meth:`nbtrain.Learner.pretrained`; ``learner_cls`` is the class it was
    called on (the core passes it in, so this module never imports the core's Learner)."""
    classes = getattr(data, "classes", None)
    if not classes:
        raise ValueError("the data has no classes; build it with ImageData.from_folder/from_csv")
    check_head(head, head_init)  # before the body is built (it may download)
    with torch.random.fork_rng(devices=[]):  # the user's RNG stream is left alone
        if seed is not None:
            torch.manual_seed(seed)  # the new head starts the same in every kernel
        spec = create_body(arch, pretrained=pretrained)
        model = ImageClassifier(
            spec, len(classes), head=head, dropout=dropout, classes=classes, head_init=head_init
        )
    if hasattr(data, "set_normalization"):
        data.set_normalization(spec.mean, spec.std)  # inputs as the body was trained on
    early, late = body_groups(spec)
    learn = learner_cls(model, data, layer_groups=[early, late, model.head], **kwargs)
    for group, name in zip(learn.groups, ("body (early)", "body (late)", "head"), strict=True):
        group.name = name
    learn.freeze()
    learn.precompute = precompute
    learn.source = _source(data, arch, pretrained, model, head_init, seed, kwargs)
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
    model: ImageClassifier,
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
        "head": model.head_kind,
        "dropout": model.dropout,
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
