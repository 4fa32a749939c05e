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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = [
    "HEAD_INITS",
    "HeadInitWarning",
    "PretrainedClasses",
    "check_head_init",
    "head_init_summary",
    "match_class",
    "resolve_head_init",
    "warn_head_init",
]

HEAD_INITS = ("auto", "pretrained", "random")
_IRREGULAR = {
    "geese": "goose",
    "mice": "mouse",
    "lice": "louse",
    "men": "man",
    "women": "woman",
    "children": "child",
    "teeth": "tooth",
    "feet": "foot",
    "oxen": "ox",
}
_SHOWN = 5  # mismatches named in one error line
_WNID = re.compile(r"n\d{8}")


class HeadInitWarning(UserWarning):
    """The new head starts from pretrained classifier rows picked by name: says which, so that
    a name that means something else in ImageNet (``planes``: a carpenter's plane) is seen."""


@dataclass(frozen=True, eq=False)
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
        is ``("ant", "emmet", "pismire")``), then its WordNet id where known (``"n02219486"``:
        folders named like ImageNet's own, as in Imagenette, match too).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    names: tuple[tuple[str, ...], ...]

    @cached_property
    def _index(self) -> dict[str, list[int]]:
        return name_index(self.names)

    def match(self, name: str) -> list[int]:
        """:func:`match_class` against these names, through an index built once."""
        return _lookup(name, self._index)

    def label(self, index: int) -> str:
        """Class ``index``'s names, without its WordNet id."""
        return ", ".join(n for n in self.names[index] if not _WNID.fullmatch(n))


def normalize(name: str) -> str:
    """Lower case; ``_``, ``-`` and runs of spaces become one space."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def _forms(name: str) -> set[str]:
    """A class folder's name and its possible singulars: folders are often plural (``ants``,
    ``butterflies``, ``boxes``, ``wolves``, ``tomatoes``, ``geese``); the last word counts
    (``golden retrievers``)."""
    base = normalize(name)
    head, _, last = base.rpartition(" ")
    singular = set()
    if last in _IRREGULAR:
        singular.add(_IRREGULAR[last])
    if last.endswith("ies") and len(last) > 4:
        singular.add(last[:-3] + "y")
    if last.endswith(("ches", "shes", "sses", "xes", "zes", "oes", "ses")):
        singular.add(last[:-2])
    if last.endswith("ves") and len(last) > 4:
        singular.update({last[:-3] + "f", last[:-3] + "fe"})
    if last.endswith("s") and not last.endswith("ss") and len(last) > 3:
        singular.add(last[:-1])
    return {base} | {f"{head} {word}".strip() for word in singular}


def match_class(name: str, names: Sequence[Sequence[str]]) -> list[int]:
    """Indices of the pretrained classes one of whose names is ``name`` (or its singular),
    ignoring case, ``_`` and ``-``."""
    return _lookup(name, name_index(names))


def name_index(names: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    """Each normalized name -> the indices of the classes that have it, in order."""
    index: dict[str, list[int]] = {}
    for i, synonyms in enumerate(names):
        for key in {normalize(s) for s in synonyms}:
            index.setdefault(key, []).append(i)
    return index


def _lookup(name: str, index: dict[str, list[int]]) -> list[int]:
    return sorted({i for form in _forms(name) for i in index.get(form, ())})


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
    check_head_init(head_init)
    if head_init is None or head_init == "random":
        return None
    if isinstance(head_init, Mapping):
        return _from_mapping(head_init, classes, _need(pretrained, "a dict"))
    if pretrained is None and head_init == "auto":
        return None
    pretrained = _need(pretrained, "head_init='pretrained'")
    found = {c: pretrained.match(c) for c in classes}
    if all(len(hits) == 1 for hits in found.values()) and _distinct(found):
        return [found[c][0] for c in classes]
    if head_init == "auto":
        return None
    raise ValueError(
        "head_init='pretrained': "
        + _mismatches(found, pretrained)
        + "; pass a dict {class: pretrained index or name}, or head_init='random'"
    )


def check_head_init(head_init: object) -> None:
    """Raise ValueError unless ``head_init`` is one of the accepted kinds (before any work)."""
    if head_init is None or isinstance(head_init, Mapping) or head_init in HEAD_INITS:
        return
    raise ValueError(
        f"head_init must be 'auto', 'pretrained', 'random' or a dict "
        f"{{class: pretrained index or name}}, got {head_init!r}"
    )


def _need(pretrained: PretrainedClasses | None, what: str) -> PretrainedClasses:
    if pretrained is None:
        raise ValueError(
            f"{what} needs the body's pretrained classifier: one linear layer over the pooled "
            "features with known (ImageNet) class names; this body has none (a module of "
            "your own, pretrained=False, or another kind of head)"
        )
    return pretrained


def _distinct(found: dict[str, list[int]]) -> bool:
    firsts = [hits[0] for hits in found.values()]
    return len(set(firsts)) == len(firsts)


def _mismatches(found: dict[str, list[int]], pretrained: PretrainedClasses) -> str:
    parts = []
    unnamed = [name for name, hits in found.items() if not hits]
    if unnamed:
        shown = ", ".join(map(repr, unnamed[:_SHOWN]))
        more = f" and {len(unnamed) - _SHOWN} more" if len(unnamed) > _SHOWN else ""
        parts.append(f"no pretrained class is named {shown}{more}")
    for name, hits in found.items():
        if len(hits) > 1:
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
    if len(parts) > _SHOWN:
        parts = [*parts[:_SHOWN], f"and {len(parts) - _SHOWN} more"]
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
        hits = pretrained.match(target)
        if len(hits) != 1:
            problem = _mismatches({target: hits}, pretrained)
            raise ValueError(f"head_init[{name!r}]: {problem}; give its index instead")
        indices.append(hits[0])
    return indices


def head_init_summary(
    classes: Sequence[str], indices: list[int] | None, pretrained: PretrainedClasses | None
) -> str:
    """One line for ``learn.model.head_init``: where the head's starting weights came from."""
    if indices is None or pretrained is None:
        return "random"
    pairs = ", ".join(
        f"{c} = {i} {pretrained.label(i)!r}" for c, i in zip(classes, indices, strict=True)
    )
    return f"pretrained classes: {pairs}"


def warn_head_init(summary: str, *, stacklevel: int = 2) -> None:
    """One line saying which pretrained rows the head starts from (see HeadInitWarning)."""
    shown = summary.removeprefix("pretrained classes: ")
    warnings.warn(
        f"the new head starts from the pretrained (ImageNet) classifier's rows {shown} "
        "(head_init='random' starts it at random)",
        HeadInitWarning,
        stacklevel=stacklevel + 1,
    )
