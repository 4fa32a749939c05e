"""A pretrained body plus a new head, split into three layer groups, body frozen."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nbtrain.core.features import BodyHead
from nbtrain.core.learner import Learner
from nbtrain.vision.models import OFFLINE_ARCH, BodySpec, body_groups, create_body


class ImageClassifier(BodyHead):
    """``head(body(x))``: a pretrained body ending in global pooling, and a new head
    (dropout, then a linear layer to the classes)."""

    def __init__(self, spec: BodySpec, n_classes: int, *, dropout: float = 0.25) -> None:
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(spec.n_features, n_classes))
        super().__init__(spec.body, head)
        self.spec = spec

    @property
    def arch(self) -> str:
        return self.spec.arch


def pretrained_learner(
    data: Any,
    arch: str | nn.Module = OFFLINE_ARCH,
    *,
    precompute: bool = False,
    pretrained: bool = True,
    dropout: float = 0.25,
    seed: int | None = 0,
    **kwargs: Any,
) -> Learner:
    """See :meth:`nbtrain.Learner.pretrained`."""
    classes = getattr(data, "classes", None)
    if not classes:
        raise ValueError("the data has no classes; build it with ImageData.from_folder/from_csv")
    with torch.random.fork_rng(devices=[]):  # the user's RNG stream is left alone
        if seed is not None:
            torch.manual_seed(seed)  # the new head starts the same in every kernel
        spec = create_body(arch, pretrained=pretrained)
        model = ImageClassifier(spec, len(classes), dropout=dropout)
    if hasattr(data, "set_normalization"):
        data.set_normalization(spec.mean, spec.std)  # inputs as the body was trained on
    early, late = body_groups(spec)
    learn = Learner(model, data, layer_groups=[early, late, model.head], **kwargs)
    for group, name in zip(learn.groups, ("body (early)", "body (late)", "head"), strict=True):
        group.name = name
    learn.freeze()
    learn.precompute = precompute
    return learn
