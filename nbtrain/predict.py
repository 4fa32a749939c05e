"""Inference from a file written by ``learn.export()``: :class:`Predictor`.

    from nbtrain import load_model
    model = load_model("export.pt2")
    model.predict("photo.jpg")            # ('bees', tensor([0.0312, 0.9688]))
    model.predict(["a.jpg", "b.jpg"])     # (['ants', 'bees'], tensor of shape (2, 2))

Needs torch, numpy and PIL only: not timm, not torchvision's models, not IPython, not
nbtrain's training code (``nbtrain.vision`` stays unimported). An image goes through the
transform the model was validated with (RGB, shorter side to ``size / 0.875``, centre
crop, normalisation), so ``predict`` gives what ``learn.predict`` gave.

Loading is safe: the archive is checked before ``torch.export.load`` reads it, and one
that holds a pickle able to run code (``torch.export.load`` would unpickle some parts
without ``weights_only``) is refused in one line; a plain state-dict export is read with
``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nbtrain.core.export import FORMAT, META_FILE
from nbtrain.core.resume import CheckpointError, read_safely
from nbtrain.imaging import EvalTransform, open_rgb, resize_size


class ExportError(ValueError):
    """A file that is not an nbtrain export, or one that cannot be loaded safely."""


class Predictor:
    """A trained classifier and what it needs to see images: ``predict`` takes one image
    (a path, a PIL image, an HWC uint8 array, or a ``(3, H, W)`` tensor already
    transformed; any model input tensor for other data) or a batch (a list of those, or
    a tensor with a batch dimension in front).

    ``classes`` are the class names (None for a model without), ``meta`` everything the
    export recorded, ``kind`` how the model is held (``"torch.export"``: a graph that needs
    no model code; ``"state_dict"``: weights for a model class given to :meth:`load`).
    """

    def __init__(self, module: torch.nn.Module, meta: dict[str, Any], *, device: str = "cpu"):
        self.module = module
        self.meta = meta
        self.kind: str = meta.get("kind", "torch.export")
        self.classes: list[str] | None = meta.get("classes")
        self.device = torch.device(device)
        self.input_shape: list[int] = list(meta.get("input_shape") or [3, 0, 0])
        self.channels_last = bool(meta.get("channels_last"))
        spec = meta.get("transform")
        self.transform: EvalTransform | None = None
        if spec is not None:
            size = int(spec["size"])
            if spec.get("resize") != resize_size(size) or spec.get("crop") != "center":
                raise ExportError(
                    f"this export's transform {spec} is not one this nbtrain knows; "
                    "load it with the nbtrain version that wrote it"
                )
            self.transform = EvalTransform(size, spec["mean"], spec["std"])

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        model: torch.nn.Module | None = None,
        device: str = "cpu",
    ) -> Predictor:
        """Read an export safely. ``model``: an instance of the exported model's class,
        needed only for a plain state-dict export."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no export at {path}")
        module: torch.nn.Module
        if _is_export_archive(path):
            meta = _check_archive(path)
            extra = {META_FILE: ""}
            with warnings.catch_warnings():  # torch's note on weights that share storage
                warnings.filterwarnings("ignore", message="No complete tensor found")
                program = torch.export.load(str(path), extra_files=extra)
            module = program.module()
        else:
            try:
                payload = read_safely(path)
            except CheckpointError as exc:
                raise ExportError(str(exc).replace("checkpoint", "export")) from None
            if not isinstance(payload, dict) or payload.get("format") != FORMAT:
                raise ExportError(f"{path} is not an nbtrain export (learn.export())")
            meta = json.loads(payload["meta"])
            if model is None:
                raise ExportError(
                    f"{path} holds a plain state dict of a {meta.get('model_class')}: pass "
                    "an instance of that class, Predictor.load(path, model=...)"
                )
            model.load_state_dict(payload["state_dict"])
            module = model.eval()
        return cls(module.to(device), meta, device=device)

    # ---- inputs ----------------------------------------------------------------------
    def prepare(self, item: Any) -> torch.Tensor:
        """One image as the model's input, ``(3, size, size)``."""
        if isinstance(item, torch.Tensor):
            if item.dim() != len(self.input_shape):
                raise ValueError(
                    f"one input is a tensor of shape {tuple(self.input_shape)}, "
                    f"got {tuple(item.shape)}"
                )
            return item
        if self.transform is None:
            raise ValueError(
                "this export has no image transform (its data was not image data); "
                "give input tensors"
            )
        return self.transform(open_rgb(item))

    def _batch(self, items: Any) -> tuple[torch.Tensor, bool]:
        if isinstance(items, torch.Tensor) and items.dim() == len(self.input_shape) + 1:
            return items, True
        if isinstance(items, Sequence) and not isinstance(items, str | bytes):
            if not items:
                raise ValueError("an empty batch")
            return torch.stack([self.prepare(item) for item in items]), True
        return self.prepare(items).unsqueeze(0), False

    # ---- predictions ------------------------------------------------------------------
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if self.channels_last:  # the layout the graph was captured in
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.module(x).float()

    def probabilities(self, items: Any) -> torch.Tensor:
        """Class probabilities, ``(N, classes)`` (a batch of one for one image)."""
        x, _ = self._batch(items)
        return self._logits(x).softmax(dim=-1).cpu()

    def predict(self, items: Any) -> tuple[Any, torch.Tensor]:
        """``(class, probabilities)`` for one image; ``([classes], (N, C) probabilities)``
        for a batch. A class is its name, or its index without names."""
        x, batched = self._batch(items)
        probs = self._logits(x).softmax(dim=-1).cpu()
        labels = [self._label(int(i)) for i in probs.argmax(dim=-1)]
        return (labels, probs) if batched else (labels[0], probs[0])

    __call__ = predict

    def _label(self, index: int) -> Any:
        return self.classes[index] if self.classes else index

    def __repr__(self) -> str:
        size = self.transform.size if self.transform is not None else None
        return (
            f"Predictor({self.kind}, classes={self.classes}, size={size}, "
            f"nbtrain {self.meta.get('nbtrain')})"
        )


def load_model(
    path: str | os.PathLike, *, model: torch.nn.Module | None = None, device: str = "cpu"
) -> Predictor:
    """:meth:`Predictor.load`."""
    return Predictor.load(path, model=model, device=device)


# ------------------------------------------------------------------- safe loading
def _is_export_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/archive_format") for name in archive.namelist())


def _check_archive(path: Path) -> dict[str, Any]:
    """The export's metadata, once every part ``torch.export.load`` would unpickle has
    been shown to unpickle with ``weights_only=True``; ExportError otherwise."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        meta_names = [n for n in names if n.endswith(f"/extra/{META_FILE}")]
        if not meta_names:
            raise ExportError(f"{path} is a torch.export archive, but not an nbtrain export")
        meta = json.loads(archive.read(meta_names[0]))
        if meta.get("format") != FORMAT:
            raise ExportError(f"{path} is not an nbtrain export")
        for name in names:
            if name.endswith("_config.json") and "/data/" in name:
                for fqn, entry in json.loads(archive.read(name)).get("config", {}).items():
                    pickled = entry.get("use_pickle") or not str(
                        entry.get("path_name", "")
                    ).startswith(("weight_", "tensor_"))
                    if pickled:
                        raise ExportError(
                            f"{path} holds a pickled object ({fqn}) that loading could run "
                            "as code; refused"
                        )
            elif name.endswith(".pt"):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    raise ExportError(
                        f"{path} holds a part ({name.split('/', 1)[-1]}) that loading could run "
                        "as code; refused"
                    ) from None
    return meta


__all__ = ["ExportError", "Predictor", "load_model"]
