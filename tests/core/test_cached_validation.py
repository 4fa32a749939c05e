"""Validation from cached activations with the body frozen and precompute off."""

import pytest
import torch
from torch import nn

from nbtrain.core.features import FeatureCache

from .test_features import CountingBody, make_learner

N_TRAIN_BATCHES, N_VALID_BATCHES = 8, 4  # TensorData: 256 + 128 rows, bs 32


def with_dropout(learn):
    """Dropout at the end of the body: numbers only repeat if validation runs it in eval."""
    learn.model.body.net.append(nn.Dropout(0.5))
    return learn


def images_only(learn, monkeypatch):
    monkeypatch.setattr(learn, "_validation", lambda: None)
    return learn


def assert_same_history(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.train_loss == pytest.approx(y.train_loss, abs=1e-5)
        assert x.valid_loss == pytest.approx(y.valid_loss, abs=1e-5)
        assert x.metrics["accuracy"] == pytest.approx(y.metrics["accuracy"], abs=1e-5)


def test_a_frozen_fit_without_precompute_validates_on_the_cache(tmp_path, monkeypatch):
    cached = with_dropout(make_learner(tmp_path / "a"))
    plain = images_only(with_dropout(make_learner(tmp_path / "b")), monkeypatch)
    cached.features()  # e.g. an earlier precompute stage
    assert not cached.precompute and not cached.uses_cache
    body = cached.model.body
    calls = body.calls
    cached.fit_cycles(0.5, cycles=2, seed=1)
    assert body.calls - calls == 2 * N_TRAIN_BATCHES  # training batches only
    calls = plain.model.body.calls
    plain.fit_cycles(0.5, cycles=2, seed=1)
    assert plain.model.body.calls - calls == 2 * (N_TRAIN_BATCHES + N_VALID_BATCHES)
    assert_same_history(cached.history, plain.history)
    calls = body.calls
    assert cached.validate() == pytest.approx(plain.validate(), abs=1e-5)
    assert body.calls == calls


def test_the_first_validation_pass_records_the_activations(tmp_path):
    learn = with_dropout(make_learner(tmp_path))
    learn.feature_cache = FeatureCache(directory=None)
    body = learn.model.body
    first = learn.validate()  # through the images, keeping what the body outputs
    assert body.calls == N_VALID_BATCHES
    assert learn.validate() == pytest.approx(first, abs=1e-5)
    assert body.calls == N_VALID_BATCHES
    learn.precompute = True  # the recorded half of the cache is not computed again
    feats = learn.features()
    assert body.calls == N_VALID_BATCHES + N_TRAIN_BATCHES
    assert feats.valid_x.shape == (128, 32) and feats.train_x.shape == (256, 32)


def test_a_changed_or_training_body_goes_through_the_images(tmp_path):
    learn = make_learner(tmp_path)
    learn.feature_cache = FeatureCache(directory=None)
    body = learn.model.body
    before = learn.validate()["loss"]
    with torch.no_grad():
        body.net[0].weight[0, 0] += 0.5  # other weights: the key misses
    changed = learn.validate()["loss"]
    assert body.calls == 2 * N_VALID_BATCHES and changed != pytest.approx(before, abs=1e-6)
    learn.unfreeze()  # a training body is never cached
    learn.validate()
    learn.validate()
    assert body.calls == 4 * N_VALID_BATCHES


def test_frozen_batchnorm_that_trains_is_not_recorded(tmp_path):
    learn = make_learner(tmp_path, train_bn=True)  # frozen BatchNorm still updates its stats
    learn.feature_cache = FeatureCache(directory=None)
    learn.validate()
    learn.validate()
    assert learn.model.body.calls == 2 * N_VALID_BATCHES


def test_an_interrupted_validation_pass_records_nothing(tmp_path, monkeypatch):
    learn = make_learner(tmp_path)
    learn.feature_cache = FeatureCache(directory=None)
    forward = CountingBody.forward

    def interrupted(self, x):
        if self.calls == 2:
            raise KeyboardInterrupt
        return forward(self, x)

    monkeypatch.setattr(CountingBody, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        learn.validate()
    monkeypatch.undo()
    assert learn.model.body._forward_hooks == {}  # the recording hook is gone
    calls = learn.model.body.calls
    learn.validate()
    assert learn.model.body.calls == calls + N_VALID_BATCHES
