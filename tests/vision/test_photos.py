"""make_photo_dataset: photo-sized JPEGs, deterministic, cached; and a frozen fit over them."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from nbtrain import Learner
from nbtrain.core.features import FeatureCache
from nbtrain.vision import ImageData, make_photo_dataset
from nbtrain.vision import photos as photos_module


def jpegs(root):
    return sorted(root.rglob("*.jpg"))


def test_photos_are_decodable_jpegs_of_the_size_asked(tmp_path):
    root = make_photo_dataset(tmp_path / "p", n_train=5, n_valid=3, classes=3, size=(500, 375))
    assert root == tmp_path / "p"
    counts = {(f.parts[-3], f.parts[-2]) for f in jpegs(root)}
    assert counts == {(s, c) for s in ("train", "valid") for c in ("checks", "spots", "stripes")}
    assert [len(list((root / "train" / c).iterdir())) for c in ("stripes", "spots", "checks")] == [
        2,
        2,
        1,
    ]
    for file in jpegs(root):
        with Image.open(file) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (500, 375))
            img.load()  # decodes completely
        assert 8_000 < file.stat().st_size < 150_000  # like a 500x375 photo at quality 75-90
    data = ImageData.from_folder(root, num_workers=0)
    assert not data.bad_files and len(data.train_items) == 5 and len(data.valid_items) == 3


def test_same_arguments_give_the_same_files_and_a_second_call_reuses_them(tmp_path):
    kw = {"n_train": 4, "n_valid": 2, "size": (120, 90), "seed": 1}
    a, b = make_photo_dataset(tmp_path / "a", **kw), make_photo_dataset(tmp_path / "b", **kw)
    assert [f.read_bytes() for f in jpegs(a)] == [f.read_bytes() for f in jpegs(b)]
    stamps = [f.stat().st_mtime_ns for f in jpegs(a)]
    assert make_photo_dataset(tmp_path / "a", **kw) == a
    assert [f.stat().st_mtime_ns for f in jpegs(a)] == stamps  # not written again
    first = jpegs(a)[0].read_bytes()
    make_photo_dataset(tmp_path / "a", **{**kw, "seed": 2})  # another set replaces it
    assert jpegs(a)[0].read_bytes() != first and len(jpegs(a)) == 6


def test_the_default_folder_is_in_the_cache_and_keyed_by_the_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("NBTRAIN_CACHE", str(tmp_path / "cache"))
    a = make_photo_dataset(n_train=2, n_valid=2, size=(64, 48))
    assert a.parent == tmp_path / "cache" / "datasets" and a.name.startswith("photos-64x48-")
    assert make_photo_dataset(n_train=2, n_valid=2, size=(64, 48)) == a
    assert make_photo_dataset(n_train=2, n_valid=2, size=(64, 48), seed=5) != a
    assert make_photo_dataset(n_train=3, n_valid=2, size=(64, 48)) != a


def test_an_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    draw = photos_module.draw_photo
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return draw(*args)

    monkeypatch.setattr(photos_module, "draw_photo", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_photo_dataset(tmp_path / "p", n_train=4, n_valid=2, size=(64, 48))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 1}, "classes must be >= 2, got 1"),
        ({"size": (500,)}, r"size must be \(width, height\)"),
        ({"size": (500, 16)}, r"size must be \(width, height\)"),
        ({"n_train": 0}, "n_train must be >= 1, got 0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_photo_dataset(tmp_path / "p", **kwargs)


def test_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("not a data set")
    with pytest.raises(ValueError, match="not written by make_photo_dataset"):
        make_photo_dataset(tmp_path, n_train=2, n_valid=2)


def test_a_frozen_augmented_fit_validates_on_cached_activations(tmp_path, monkeypatch):
    """The body runs on the training batches only, and the numbers are the images' ones."""
    root = make_photo_dataset(tmp_path / "photos", n_train=16, n_valid=16, size=(500, 375))
    runs = []
    for use_cache in (True, False):
        data = ImageData.from_folder(root, size=32, bs=8, num_workers=0)
        learn = Learner.pretrained(data, device="cpu", path=tmp_path, head_init="random")
        learn.feature_cache = FeatureCache(tmp_path / "cache")
        if use_cache:
            learn.features()  # as a precompute stage would have
        else:
            monkeypatch.setattr(learn, "_validation", lambda: None)
        calls = []
        learn.model.body.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        learn.fit_cycles(1e-2, cycles=2, seed=0)
        runs.append((learn.history, len(calls), learn.validate(), len(calls)))
    (cached, n_cached, v_cached, n_after), (images, n_images, v_images, _) = runs
    assert n_cached == 2 * 2 and n_after == n_cached  # 2 epochs x 2 training batches
    assert n_images == 2 * (2 + 2)
    for a, b in zip(cached, images, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-5)
        assert a.valid_loss == pytest.approx(b.valid_loss, abs=1e-5)
        assert a.metrics["accuracy"] == pytest.approx(b.metrics["accuracy"], abs=1e-5)
    assert v_cached == pytest.approx(v_images, abs=1e-5)
    assert torch.is_grad_enabled()
