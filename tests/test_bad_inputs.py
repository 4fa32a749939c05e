"""Fifty bad inputs through the magics and the Python API: each is one clear line (a
UsageError in a notebook, a ValueError or FileNotFoundError in Python), and nothing
changes (weights, freeze state, fits, precompute, the namespace)."""

from __future__ import annotations

import math

import pytest
import torch
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from torch import nn
from torch.utils.data import DataLoader

from nbtrain.core import DataLoaders, Learner, Stage
from nbtrain.views import frontend
from nbtrain.vision import ImageData
from tests.core.conftest import make_mlp, model_state, xor_data
from tests.vision.conftest import write_image


@pytest.fixture
def learn(ip, tmp_path):
    frontend.set_mode("text")
    torch.manual_seed(0)
    train = DataLoader(xor_data(64), batch_size=16, shuffle=True)
    valid = DataLoader(xor_data(32, seed=1), batch_size=32)
    learner = Learner(make_mlp(), DataLoaders(train, valid), device="cpu", path=tmp_path)
    learner.fit_cycles(0.05)  # a fit and a snapshot exist before
    ip.user_ns.update(learn=learner, lr=1e-2, x=3)
    yield learner
    frontend.set_mode(None)
    for name in ("learn", "lr", "x", "picked"):
        ip.user_ns.pop(name, None)


def fingerprint(learn: Learner, ip) -> tuple:
    return (
        model_state(learn.model),
        list(learn.trainable),
        len(learn.fits),
        len(learn.snapshots),
        learn.precompute,
        learn.opt.state_dict()["state"].keys(),
        sorted(k for k in ip.user_ns if not k.startswith("_")),
    )


def assert_same(a: tuple, b: tuple) -> None:
    weights_a, *rest_a = a
    weights_b, *rest_b = b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert rest_a == rest_b


MAGICS = [
    ("fit_cycles", "nothing --lr 0.1", None),
    ("fit_cycles", "x --lr 0.1", None),  # a name that is not a learner
    ("fit_cycles", "learn --lr 1/0", None),  # an expression that raises
    ("fit_cycles", "learn --lr [0.1,0.2]", None),  # 2 rates for 3 groups
    ("fit_cycles", "learn --lr -1", None),
    ("fit_cycles", "learn --lr 'abc'", None),
    ("fit_cycles", "learn --lr nan", None),
    ("fit_cycles", "learn --cycles 0", None),
    ("fit_cycles", "learn --cycles 1.5", None),
    ("fit_cycles", "learn --cycle-len -2", None),
    ("fit_cycles", "learn --cycle-mult 0", None),
    ("fit_cycles", "learn --size 64", None),  # not image data
    ("fit_cycles", "learn --precompute", None),  # not a body + head
    ("fit_cycles", "learn --freeze-to 7", None),
    ("fit_cycles", "learn --seed 0.5", None),
    ("fit_cycles", "learn --precompute --no-precompute", None),
    ("fit_cycles", "learn --unfreeze --freeze", None),
    ("fit_cycles", "learn --resume --lr 0.1", None),
    ("fit_cycles", "learn --bogus 1", None),
    ("fit_cycles", "learn", "lr=0.1 cycles=undefined_name\n"),
    ("fit_cycles", "learn", "lrr=0.1\n"),
    ("fit_cycles", "learn", "freeze unfreeze lr=0.1\n"),
    ("fit_cycles", "learn", "lr=0.1\nlr=0.1 cycles=-1\n"),
    ("fit_cycles", "learn", "lr=0.1 cycles=1 cycles=2\n"),
    ("fit_cycles", "learn --resume", "lr=0.1\n"),
    ("lr_find", "nothing", None),
    ("lr_find", "learn --iters 1", None),
    ("lr_find", "learn --end -1", None),
    ("lr_find", "learn --start [1e-7]*5", None),
    ("lr_find", "learn --into 1abc", None),
    ("freeze", "learn --to 9", None),
    ("freeze", "nothing", None),
    ("layers", "3", None),
    ("unfreeze", "x", None),
]


@pytest.mark.parametrize(("magic", "line", "cell"), MAGICS)
def test_a_bad_magic_is_one_usage_line_and_changes_nothing(ip, learn, magic, line, cell):
    before = fingerprint(learn, ip)
    with capture_output(), pytest.raises(UsageError) as info:
        if cell is None:
            ip.run_line_magic(magic, line)
        else:
            ip.run_cell_magic(magic, line, cell)
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 300, message
    assert "Traceback" not in message
    assert_same(fingerprint(learn, ip), before)


def bad_folders(tmp_path):
    root = tmp_path / "photos"
    for split in ("train", "valid"):
        write_image(root / split / "cats" / "a.jpg", seed=1)
    (root / "train" / "dogs").mkdir(parents=True)  # an empty class
    text_only = tmp_path / "text"
    for split in ("train", "valid"):
        folder = text_only / split / "cats"
        folder.mkdir(parents=True)
        (folder / "a.jpg").write_text("not an image")
    return {"empty class": root, "no images at all": text_only, "missing": tmp_path / "nowhere"}


API = [
    ("a model that is not a module", lambda learn, f: Learner("resnet", learn.data)),
    ("data that is not data", lambda learn, f: Learner(make_mlp(), [1, 2, 3])),
    ("rates of the wrong length", lambda learn, f: learn.fit_cycles([0.1, 0.2])),
    ("no cycles", lambda learn, f: learn.fit_cycles(0.1, cycles=0)),
    ("a NaN rate", lambda learn, f: learn.fit_cycles(math.nan)),
    ("no stages", lambda learn, f: learn.fit_stages([])),
    ("a stage that is not one", lambda learn, f: learn.fit_stages(["lr=0.1"])),
    ("size zero", lambda learn, f: Stage(0.1, size=0)),
    ("freeze_to out of range", lambda learn, f: learn.freeze_to(5)),
    ("no such group", lambda learn, f: learn.set_trainable(7, True)),
    ("a one-step range test", lambda learn, f: learn.lr_find(iters=1)),
    ("no such snapshot", lambda learn, f: learn.load_snapshot(3)),
    ("no such checkpoint", lambda learn, f: learn.load("missing")),
    ("no checkpoint to resume", lambda learn, f: learn.resume(f["missing"] / "x.ckpt")),
    ("an ensemble of none", lambda learn, f: learn.evaluate(ensemble=0)),
    ("precompute without a body", lambda learn, f: setattr(learn, "precompute", True)),
    ("resizing non-image data", lambda learn, f: learn.set_size(64)),
    ("a missing data folder", lambda learn, f: ImageData.from_folder(f["missing"])),
    ("an empty class folder", lambda learn, f: ImageData.from_folder(f["empty class"])),
    ("files that are not images", lambda learn, f: ImageData.from_folder(f["no images at all"])),
]


@pytest.mark.parametrize(("what", "call"), API, ids=[name for name, _ in API])
def test_a_bad_call_is_one_line_and_changes_nothing(ip, learn, tmp_path, what, call):
    folders = bad_folders(tmp_path)
    before = fingerprint(learn, ip)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        call(learn, folders)
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 300, message
    assert_same(fingerprint(learn, ip), before)


def test_there_are_fifty_bad_inputs():
    assert len(MAGICS) + len(API) >= 50


def test_a_tiny_model_without_groups_is_refused_in_one_line(ip, learn):
    with pytest.raises(ValueError) as info:
        Learner(nn.Linear(2, 2), learn.data, layer_groups=[[]])
    assert "\n" not in str(info.value)
