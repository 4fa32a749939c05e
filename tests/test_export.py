"""learn.export() and nbtrain.load_model(): a file a user can ship, loaded without the
training code, predicting what the learner predicts; loading it is safe."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbtrain import Learner, load_model
from nbtrain.core import DataLoaders, Stage
from nbtrain.core.export import ExportWarning
from nbtrain.predict import ExportError, Predictor
from nbtrain.vision import ImageData, make_shapes_dataset
from tests.core.conftest import make_mlp, xor_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A learner after a short checklist (cached head, then the whole network), exported."""
    root = make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), n_per_class=8, n_valid_per_class=4, size=48, seed=0
    )
    folder = tmp_path_factory.mktemp("learn")
    data = ImageData.from_folder(root, size=40, bs=8, num_workers=0)
    learn = Learner.pretrained(data, precompute=True, device="cpu", path=folder)
    learn.fit_stages(
        [
            Stage(1e-2, cycles=2, precompute=True),
            Stage((1e-4, 3e-4, 1e-3), cycles=1, freeze_to=0, precompute=False),
        ]
    )
    path = learn.export()
    return learn, path


def test_the_export_is_one_file_with_the_graph_classes_and_transform(trained):
    learn, path = trained
    assert path == learn.path / "export.pt2" and path.is_file()
    with zipfile.ZipFile(path) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("extra/nbtrain.json")]
        meta = json.loads(archive.read(name))
    assert meta["kind"] == "torch.export" and meta["classes"] == learn.data.classes
    assert meta["transform"] == {
        "size": 40,
        "resize": 46,
        "crop": "center",
        "interpolation": "bilinear, antialiased",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    assert meta["arch"] == "tf_efficientnet_lite0" and meta["nbtrain"]
    assert meta["channels_last"] is True  # the layout the learner ran in
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() makes files
    assert not list(path.parent.glob(".export.pt2.*"))  # no temporary file left


LOAD_ELSEWHERE = """
import json, sys
from nbtrain import load_model
model = load_model(sys.argv[1])
files = json.loads(sys.argv[2])
labels, probs = model.predict(files)
single = [model.predict(f) for f in files]
assert [s[0] for s in single] == labels
assert all(float((s[1] - p).abs().max()) < 1e-5 for s, p in zip(single, probs))
loaded = [m for m in ("timm", "nbtrain.vision", "IPython", "ipywidgets", "torchvision.models")
          if m in sys.modules]
print(json.dumps({"labels": labels, "probs": probs.tolist(), "loaded": loaded,
                  "repr": repr(model)}))
"""


def test_a_fresh_process_predicts_what_the_learner_predicts_without_the_training_code(trained):
    learn, path = trained
    files = [str(p) for p in learn.data.valid_files]
    out = subprocess.run(
        [sys.executable, "-c", LOAD_ELSEWHERE, str(path), json.dumps(files)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [], f"loading the export imported {result['loaded']}"
    assert "torch.export" in result["repr"]
    for file, label, probs in zip(files, result["labels"], result["probs"], strict=True):
        expected_label, expected = learn.predict(file)
        assert label == expected_label
        assert torch.allclose(torch.tensor(probs), expected, atol=1e-5, rtol=0), file


def test_images_arrays_and_tensors_predict_alike(trained):
    learn, path = trained
    model = load_model(path)
    file = learn.data.valid_files[0]
    import numpy as np
    from PIL import Image

    with Image.open(file) as img:
        rgb = img.convert("RGB")
    by_path = model.predict(file)
    by_image = model.predict(rgb)
    by_array = model.predict(np.asarray(rgb))
    by_tensor = model.predict(learn.data.prepare(file))
    for label, probs in (by_image, by_array, by_tensor):
        assert label == by_path[0] and torch.equal(probs, by_path[1])
    labels, probs = model.predict(torch.stack([learn.data.prepare(file)] * 3))
    assert labels == [by_path[0]] * 3 and probs.shape == (3, len(learn.data.classes))


class Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_an_export_that_would_run_code_is_refused(trained, tmp_path, monkeypatch):
    _, path = trained
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("sample_inputs/model.pt"):
                buffer = __import__("io").BytesIO()
                torch.save(Evil(), buffer)  # torch.export.load unpickles this part freely
                data = buffer.getvalue()
            dst.writestr(item, data)
    with pytest.raises(ExportError, match="could run as code; refused") as info:
        load_model(bad)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(ExportError, match="not an nbtrain export"):
        torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
        load_model(tmp_path / "other.pt")


class Branchy(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_mlp()

    def forward(self, x):
        out = self.net(x)
        if float(out.sum()) > 1e9:
            return out * 0
        return out


def test_a_model_torch_export_cannot_capture_is_written_as_a_state_dict(tmp_path):
    torch.manual_seed(0)
    loaders = DataLoaders(
        DataLoader(xor_data(64), batch_size=16), DataLoader(xor_data(32, seed=1), batch_size=16)
    )
    learn = Learner(Branchy(), loaders, device="cpu", path=tmp_path)
    learn.fit_cycles(0.05)
    with pytest.warns(ExportWarning, match="torch.export could not capture this model") as w:
        path = learn.export(tmp_path / "branchy.pt2")
    assert "\n" not in str(w[0].message)
    with pytest.raises(ExportError, match=r"plain state dict of a .*Branchy: pass an instance"):
        load_model(path)
    model = Predictor.load(path, model=Branchy())
    x = xor_data(8, seed=3).tensors[0]
    learn.model.eval()
    with torch.no_grad():
        expected = learn.model(x).softmax(-1)
    labels, probs = model.predict(x)
    assert torch.allclose(probs, expected, atol=1e-6) and labels == expected.argmax(-1).tolist()
    with pytest.raises(ValueError, match="no image transform"):
        model.predict("photo.jpg")


def test_onnx_export_computes_what_torch_computes_for_any_batch(trained, tmp_path):
    onnx = pytest.importorskip("onnx", reason="the [onnx] extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    learn, _ = trained
    path = learn.export_onnx(tmp_path / "model.onnx")
    meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["nbtrain"])
    assert meta["kind"] == "onnx" and meta["classes"] == learn.data.classes
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    files = learn.data.valid_files[:5]
    x = torch.stack([learn.data.prepare(f) for f in files])
    logits = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    for file, row in zip(files, logits.softmax(-1), strict=True):
        _, expected = learn.predict(file)
        assert torch.allclose(row, expected, atol=1e-5, rtol=0)


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask
