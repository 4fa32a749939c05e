"""``learn.export(path)``: one file that holds what inference needs, for
:class:`nbtrain.predict.Predictor` (``nbtrain.load_model``).

The model goes in as a graph, with ``torch.export``: its weights and its computation, with
a dynamic batch size, so that loading it needs neither the training code's classes nor
timm. Beside it (the archive's ``extra/nbtrain.json``): the class names, the eval
transform (size, resize, centre crop, normalisation), and the nbtrain and torch versions.
A model that ``torch.export`` cannot capture (Python control flow on tensor values, say)
is written as a plain state dict instead, with one warning: loading that needs the
model's class again (``Predictor.load(path, model=...)``).

Files are written atomically (temporary file, rename): an interrupted export leaves
nothing behind, or the previous file whole.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nbtrain.core.data import Inferable, Labelled
from nbtrain.core.loop import user_stacklevel
from nbtrain.core.resume import FILE_MODE, atomic_save

if TYPE_CHECKING:
    from nbtrain.core.learner import Learner

FORMAT = "nbtrain-export"
VERSION = 1
META_FILE = "nbtrain.json"
MAX_BATCH = 65536


class ExportWarning(UserWarning):
    """The model was exported as a plain state dict: loading it needs its class."""


def export_learner(learn: Learner, path: str | os.PathLike | None = None) -> Path:
    """Write ``learn``'s model for inference (see the module doc); returns the file."""
    path = Path(path) if path is not None else learn.path / "export.pt2"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(learn.model).to("cpu", torch.float32).eval()
    example = example_input(learn)
    # Channels-last, as the learner ran: oneDNN's convolutions are faster in it (batches
    # of 64 at 224 px: 1.4x here); the predictor hands its inputs over in that layout.
    channels_last = learn.channels_last and example.dim() == 4
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    example = example.contiguous(memory_format=layout)
    meta = metadata(learn, example)
    meta["channels_last"] = channels_last
    try:
        program = capture(model, example)
    except Exception as exc:  # torch.export cannot follow this model
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        warnings.warn(
            f"torch.export could not capture this model ({type(exc).__name__}: {reason}); "
            f"wrote its weights as a plain state dict to {path}: loading it needs the model's "
            "class (Predictor.load(path, model=...))",
            ExportWarning,
            stacklevel=user_stacklevel(),
        )
        meta["kind"] = "state_dict"
        atomic_save(
            {"format": FORMAT, "meta": json.dumps(meta), "state_dict": model.state_dict()},
            path,
        )
        return path
    meta["kind"] = "torch.export"
    # torch.export.save wants a name ending in .pt2; the leading dot keeps it out of sight
    with _replacing(path, ".part.pt2") as tmp:
        torch.export.save(program, tmp, extra_files={META_FILE: json.dumps(meta)})
    return path


@contextlib.contextmanager
def _replacing(path: Path, suffix: str) -> Iterator[str]:
    """A temporary file beside ``path`` to write (torch wants its ``suffix``), renamed over
    ``path`` once the block ends well, removed otherwise: never half a file at ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)  # as open() would have made it (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def capture(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The model's graph, for any batch size; checked against the model on ``example``."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        expected, got = model(example), program.module()(example)
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise ValueError("the captured graph computes something else than the model")
    return program


def example_input(learn: Learner) -> torch.Tensor:
    """Two inputs as the model sees them: from the data's image size, or its first
    validation (else training) batch."""
    data = learn.data
    if isinstance(data, Inferable):
        size = int(data.inference_spec()["size"])
        return torch.zeros(2, 3, size, size)
    loader = data.valid if data.valid is not None else data.train
    xb = next(iter(loader))[0]
    if not isinstance(xb, torch.Tensor):
        raise ValueError("export needs batches whose inputs are tensors")
    return xb[:2].to("cpu", torch.float32).contiguous()


def metadata(learn: Learner, example: torch.Tensor) -> dict[str, Any]:
    from nbtrain import __version__

    data = learn.data
    spec = data.inference_spec() if isinstance(data, Inferable) else None
    return {
        "format": FORMAT,
        "version": VERSION,
        "nbtrain": __version__,
        "torch": torch.__version__,
        "classes": list(data.classes) if isinstance(data, Labelled) else None,
        "transform": spec,
        "input_shape": list(example.shape[1:]),
        "model_class": f"{type(learn.model).__module__}.{type(learn.model).__qualname__}",
        "arch": getattr(learn.model, "arch", None),
    }


def export_onnx(
    learn: Learner, path: str | os.PathLike | None = None, *, check: bool = True
) -> Path:
    """The model as ONNX (any batch size), with the export's metadata (classes,
    transform) in the model's ``metadata_props["nbtrain"]``; checked against torch's
    output on the same inputs with onnxruntime when it is installed. Needs the ``onnx``
    and ``onnxscript`` packages (``pip install "nbtrain[onnx]"``)."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError:
        raise ImportError(
            'ONNX export needs the onnx and onnxscript packages: pip install "nbtrain[onnx]"'
        ) from None
    path = Path(path) if path is not None else learn.path / "export.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(learn.model).to("cpu", torch.float32).eval()
    model = model.to(memory_format=torch.contiguous_format)
    example = example_input(learn).contiguous()
    meta = metadata(learn, example)
    meta["kind"] = "onnx"
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with _replacing(path, ".part.onnx") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            torch.onnx.export(
                model, (example,), tmp, dynamo=True, dynamic_shapes=({0: batch},), verbose=False
            )
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(proto, {"nbtrain": json.dumps(meta)})
        onnx.save(proto, tmp)
        if check:
            check_onnx(model, tmp, example)
    return path


def check_onnx(model: torch.nn.Module, path: str | os.PathLike, example: torch.Tensor) -> None:
    """ValueError unless onnxruntime computes what ``model`` computes on ``example`` and
    on a batch of another size (nothing to check without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for x in (example, torch.cat([example, example, example[:1]])):
        got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        with torch.no_grad():
            expected = model(x)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
            worst = float((got - expected).abs().max())
            raise ValueError(f"the ONNX model computes something else (off by {worst:.2e})")
