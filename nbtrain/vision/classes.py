"""Start a new head from the pretrained classifier when the data's classes are among its
classes.

A body pretrained on ImageNet comes with a classifier that already tells 1000 classes apart,
from 1.3 million images. When a data set's classes are ImageNet classes (``ants``, ``bees``;
``golden_retriever``, ``tabby``), copying those classifier rows into the new head starts
training where the pretrained network already is, instead of from a random head fitted to a
few hundred photos. On the hymenoptera photos (244 training images, 3 epochs on cached
224-px EfficientNet-Lite0 activations, 3 seeds, 3 peak rates) a random head ends at
93.5-96.1%; the copied rows give 97.4% before any training and 97.4-98.7% after
(``python bench/head_init.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "HEAD_INITS",
    "PretrainedClasses",
    "head_init_summary",
    "match_class",
    "resolve_head_init",
]

HEAD_INITS = ("auto", "pretrained", "random")


@dataclass(frozen=True)
class PretrainedClasses:
    """The classifier a pretrained body came with.

    Attributes
    ----------
    weight : Tensor
        ``(n_pretrained, n_features)``: one row per pretrained class.
    bias : Tensor
        ``(n_pretrained,)``.
    names : tuple of tuple of str
        Each pretrained class's names, synonyms included (ImageNet's ``"ant, emmet, pismire"``
        is ``("ant", "emmet", "pismire")``).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    names: tuple[tuple[str, ...], ...]

    def label(self, index: int) -> str:
        return ", ".join(self.names[index])


def normalize(name: str) -> str:
    """Lower case; ``_``, ``-`` and runs of spaces become one space."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def _forms(name: str) -> set[str]:
    """A class folder's name and its singular forms: folders are often plural (``ants``)."""
    base = normalize(name)
    forms = {base}
    if base.endswith("ies") and len(base) > 4:
        forms.add(base[:-3] + "y")
    if base.endswith(("ches", "shes", "sses", "xes")):
        forms.add(base[:-2])
    if base.endswith("s") and not base.endswith("ss") and len(base) > 3:
        forms.add(base[:-1])
    return forms


def match_class(name: str, names: Sequence[Sequence[str]]) -> list[int]:
    """Indices of the pretrained classes one of whose names is ``name`` (or its singular),
    ignoring case, ``_`` and ``-``."""
    forms = _forms(name)
    return [i for i, synonyms in enumerate(names) if forms & {normalize(s) for s in synonyms}]


def resolve_head_init(
    head_init: str | Mapping[str, int | str] | None,
    classes: Sequence[str],
    pretrained: PretrainedClasses | None,
) -> list[int] | None:
    """The pretrained class behind each of ``classes``, or None for a random head.

    Parameters
    ----------
    head_init : {"auto", "pretrained", "random"}, dict or None
        ``"auto"``: the pretrained rows when every class matches exactly one pretrained class
        by name (see :func:`match_class`), a random head otherwise. ``"pretrained"``: the same,
        but a class without exactly one match is an error. ``"random"`` or None: a random head.
        A dict maps every class to a pretrained class index or name.
    classes : sequence of str
        The data's class names, in label order.
    pretrained : PretrainedClasses or None
        The body's classifier; None when it has none (a module body, ``pretrained=False``).

    Raises
    ------
    ValueError
        An unknown ``head_init``; ``"pretrained"`` or a dict when the body has no classifier, a
        class matching no pretrained class or several, a dict missing a class or naming one
        the data does not have, an index out of range. The message names the classes.
    """
    if head_init is None or head_init == "random":
        return None
    if isinstance(head_init, Mapping):
        return _from_mapping(head_init, classes, _need(pretrained, "a dict"))
    if head_init not in ("auto", "pretrained"):
        raise ValueError(
            f"head_init must be 'auto', 'pretrained', 'random' or a dict "
            f"{{class: pretrained index or name}}, got {head_init!r}"
        )
    if pretrained is None:
        if head_init == "auto":
            return None
        _need(pretrained, "head_init='pretrained'")
    found = {c: match_class(c, pretrained.names) for c in classes}
    if all(len(hits) == 1 for hits in found.values()) and _distinct(found):
        return [found[c][0] for c in classes]
    if head_init == "auto":
        return None
    raise ValueError(
        "head_init='pretrained': "
        + _mismatches(found, pretrained)
        + "; pass a dict {class: pretrained index or name}, or head_init='random'"
    )


def _need(pretrained: PretrainedClasses | None, what: str) -> PretrainedClasses:
    if pretrained is None:
        raise ValueError(
            f"{what} needs a body with its pretrained classifier (a timm or torchvision model "
            "name with pretrained=True); this one has none"
        )
    return pretrained


def _distinct(found: dict[str, list[int]]) -> bool:
    firsts = [hits[0] for hits in found.values()]
    return len(set(firsts)) == len(firsts)


def _mismatches(found: dict[str, list[int]], pretrained: PretrainedClasses) -> str:
    parts = []
    for name, hits in found.items():
        if not hits:
            parts.append(f"no pretrained class is named {name!r}")
        elif len(hits) > 1:
            shown = ", ".join(f"{i} {pretrained.label(i)!r}" for i in hits[:4])
            parts.append(f"{name!r} matches several ({shown})")
    if not parts:  # two classes on one pretrained class
        by_index: dict[int, list[str]] = {}
        for name, hits in found.items():
            by_index.setdefault(hits[0], []).append(name)
        parts = [
            f"{' and '.join(map(repr, names))} both match {i} {pretrained.label(i)!r}"
            for i, names in by_index.items()
            if len(names) > 1
        ]
    return "; ".join(parts)


def _from_mapping(
    mapping: Mapping[str, int | str], classes: Sequence[str], pretrained: PretrainedClasses
) -> list[int]:
    unknown = [k for k in mapping if k not in classes]
    missing = [c for c in classes if c not in mapping]
    if unknown or missing:
        what = [f"the data has no class {', '.join(map(repr, unknown))}"] if unknown else []
        what += [f"no entry for {', '.join(map(repr, missing))}"] if missing else []
        raise ValueError(f"head_init dict: {'; '.join(what)} (classes: {list(classes)})")
    n = len(pretrained.names)
    indices = []
    for name in classes:
        target = mapping[name]
        if isinstance(target, bool) or not isinstance(target, int | str):
            raise ValueError(
                f"head_init[{name!r}] must be a pretrained class index or name, got {target!r}"
            )
        if isinstance(target, int):
            if not 0 <= target < n:
                raise ValueError(f"head_init[{name!r}] = {target} is not in 0..{n - 1}")
            indices.append(target)
            continue
        hits = match_class(target, pretrained.names)
        if len(hits) != 1:
            problem = _mismatches({target: hits}, pretrained)
            raise ValueError(f"head_init[{name!r}]: {problem}; give its index instead")
        indices.append(hits[0])
    return indices


def head_init_summary(
    classes: Sequence[str], indices: list[int] | None, pretrained: PretrainedClasses | None
) -> str:
    """One line for ``learn.head_init``: where the head's starting weights came from."""
    if indices is None or pretrained is None:
        return "random"
    pairs = ", ".join(
        f"{c} = {i} {pretrained.names[i][0]!r}" for c, i in zip(classes, indices, strict=True)
    )
    return f"pretrained classes: {pairs}"
