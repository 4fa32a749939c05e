"""Precompute: a content-keyed cache of frozen-body activations."""


import pytest
import torch
from torch import nn

from nbtrain.core import Learner
from nbtrain.core.features import BodyHead, CacheWarning, FeatureCache
from nbtrain.core.learner import PrecomputeWarning

from .conftest import TensorData, full_disk, model_state, xor_data


class CountingBody(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()
        )
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def make_learner(tmp_path, data=None, **kw):
    torch.manual_seed(0)
    model = BodyHead(CountingBody(), nn.Linear(32, 2))
    learn = Learner(
        model,
        data or TensorData(),
        layer_groups=[model.body.net[:2], model.body.net[2:], model.head],
        device="cpu",
        path=tmp_path,
        **kw,
    )
    learn.feature_cache = FeatureCache(tmp_path / "cache")
    learn.freeze()
    return learn


def test_head_trains_on_cached_activations_and_body_stays(tmp_path):
    learn = make_learner(tmp_path)
    learn.precompute = True
    assert learn.uses_cache
    before = model_state(learn.model.body)
    untrained = learn.validate()["loss"]
    learn.fit_cycles(0.5, cycles=2)
    feats = learn.feature_cache.last
    assert feats.train_x.shape == (256, 32) and feats.valid_x.shape == (128, 32)
    assert learn.feature_cache.misses == 1
    calls = learn.model.body.calls
    learn.fit_cycles(0.5)  # memory hit: no body forward at all
    assert learn.model.body.calls == calls and learn.feature_cache.last.source == "memory"
    after = model_state(learn.model.body)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learn.validate()["loss"] < untrained * 0.9


def test_an_interrupt_while_caching_leaves_everything_as_it_was(tmp_path, monkeypatch):
    learn = make_learner(tmp_path)
    learn.precompute = True
    body = learn.model.body
    forward = CountingBody.forward

    def interrupted(self, x):
        if self.calls == 3:
            raise KeyboardInterrupt
        return forward(self, x)

    monkeypatch.setattr(CountingBody, "forward", interrupted)
    before, rng = model_state(learn.model), torch.get_rng_state()
    with pytest.raises(KeyboardInterrupt):
        learn.fit_cycles(0.5)
    assert body.training and torch.equal(torch.get_rng_state(), rng)
    after = model_state(learn.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learn.feature_cache.last is None and not list((tmp_path / "cache").glob("*"))
    monkeypatch.undo()
    state = learn.fit_cycles(0.5)  # the same learner goes on: the cache is built now
    assert state.status == "done" and learn.feature_cache.misses == 2


def test_an_interrupted_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    learn = make_learner(tmp_path)
    learn.precompute = True

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        learn.features()
    assert not list((tmp_path / "cache").glob("*"))
    monkeypatch.undo()
    assert learn.features().source == "memory"  # computed before the write: kept


def test_snapshots_of_a_cached_fit_hold_the_whole_model(tmp_path):
    learn = make_learner(tmp_path)
    learn.precompute = True
    learn.fit_cycles(0.5, cycles=2)
    assert learn.snapshots[0].state_dict.keys() == learn.model.state_dict().keys()
    final = model_state(learn.model)
    learn.load_snapshot(0)
    assert not torch.equal(final["head.weight"], learn.model.head.weight)
    learn.load_snapshot(-1)
    assert torch.equal(final["head.weight"], learn.model.head.weight)
    with pytest.raises(ValueError, match=r"no snapshot 2; there are 2 \(0..1, or -1..-2 from"):
        learn.load_snapshot(2)
    with pytest.raises(ValueError, match=r"a snapshot index is a whole number, got 1\.5"):
        learn.load_snapshot(1.5)
    assert torch.equal(final["head.weight"], learn.model.head.weight)  # nothing changed


def test_precompute_changes_speed_not_results(tmp_path):
    results = []
    for precompute in (False, True):
        learn = make_learner(tmp_path / str(precompute))
        learn.precompute = precompute
        learn.fit_cycles(0.5, cycles=2, seed=3)
        results.append(model_state(learn.model.head))
    for k in results[0]:
        assert torch.allclose(results[0][k], results[1][k], atol=1e-5), k


def test_second_learner_reads_the_disk_cache_without_a_body_pass(tmp_path):
    first = make_learner(tmp_path)
    first.precompute = True
    first.features()
    assert (tmp_path / "cache").exists() and len(list((tmp_path / "cache").glob("*.pt"))) == 1
    second = make_learner(tmp_path)
    second.precompute = True
    calls = second.model.body.calls
    feats = second.features()
    assert feats.source == "disk" and second.model.body.calls == calls
    assert torch.equal(feats.train_x, first.feature_cache.last.train_x)


def test_any_change_means_recomputing(tmp_path):
    learn = make_learner(tmp_path)
    learn.precompute = True
    key = learn.features().key
    learn.set_size(2)  # eval transform / size
    assert learn.features().key != key and learn.feature_cache.misses == 2
    with torch.no_grad():
        learn.model.body.net[0].weight[0, 0] += 1e-3  # body weights
    assert learn.features().source == "computed" and learn.feature_cache.misses == 3
    learn.data.train_ds = xor_data(256, seed=9)  # the files
    assert learn.features().source == "computed" and learn.feature_cache.misses == 4
    learn.model.body.net[1].running_mean += 0.1  # buffers count too
    assert learn.features().source == "computed" and learn.feature_cache.misses == 5


def test_unfreezing_goes_back_to_images(tmp_path):
    learn = make_learner(tmp_path)
    learn.precompute = True
    learn.unfreeze()
    assert learn.precompute and not learn.uses_cache
    calls = learn.model.body.calls
    learn.fit_cycles(0.1)
    assert learn.model.body.calls > calls + 8  # one call per batch: images went through
    learn.freeze()
    assert learn.uses_cache
    learn.precompute = False
    assert not learn.uses_cache


def test_augmentation_with_precompute_warns(tmp_path):
    learn = make_learner(tmp_path, data=TensorData(augment=True))
    learn.precompute = True
    with pytest.warns(PrecomputeWarning, match="augmentation has no effect"):
        learn.fit_cycles(0.1)


def test_precompute_needs_a_body_and_head(tmp_path, data):
    learn = Learner(nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 2)), data, device="cpu")
    with pytest.raises(ValueError, match="not a body \\+ head"):
        learn.precompute = True
    assert learn.precompute is False
    model = BodyHead(CountingBody(), nn.Linear(32, 2))
    learn = Learner(model, data, device="cpu")
    with pytest.raises(ValueError, match="no fix, file_signature, eval_signature"):
        learn.precompute = True


def test_read_only_cache_folder_still_works(tmp_path):
    learn = make_learner(tmp_path)
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the cache folder should be")
    learn.feature_cache = FeatureCache(blocker / "cache")
    learn.precompute = True
    with pytest.warns(CacheWarning, match="cannot write the activation cache to .*goes on") as w:
        assert learn.features().source == "computed"
    assert len(w) == 1 and "\n" not in str(w[0].message)
    learn.fit_cycles(0.1)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong shapes", "code"])
def test_a_damaged_cache_file_is_one_line_and_computed_again(tmp_path, damage):
    learn = make_learner(tmp_path)
    learn.precompute = True
    first = learn.features()
    (path,) = (tmp_path / "cache").glob("*.pt")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    elif damage == "wrong shapes":
        torch.save({"train_x": torch.zeros(3, 4), "train_y": torch.zeros(5).long()}, path)
    else:
        import pickle

        path.write_bytes(pickle.dumps(Evil()))
    learn.feature_cache = FeatureCache(tmp_path / "cache")  # a new session: disk only
    with pytest.warns(CacheWarning, match=r"cached activations in .* are damaged") as w:
        again = learn.features()
    assert len(w) == 1 and "\n" not in str(w[0].message)
    assert again.source == "computed"
    assert torch.equal(again.train_x, first.train_x)
    assert not (tmp_path / "PWNED").exists()


class Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_full_disk_under_the_cache_is_one_line_and_training_goes_on(tmp_path, monkeypatch):
    import nbtrain.core.features as features

    learn = make_learner(tmp_path)
    learn.precompute = True
    learn.checkpoint_dir = False  # torch.save is torch.save everywhere: the cache's alone here
    monkeypatch.setattr(features.torch, "save", full_disk)
    with pytest.warns(CacheWarning, match="No space left on device.*goes on") as w:
        assert learn.fit_cycles(0.1, cycles=2).status == "done"
    assert len(w) == 1
    assert not list((tmp_path / "cache").glob("*"))  # no partial file


def test_a_cache_folder_given_as_a_string(tmp_path):
    learn = make_learner(tmp_path)
    learn.feature_cache = FeatureCache(str(tmp_path / "as-text"))
    learn.precompute = True
    assert learn.features().source == "computed"
    assert list((tmp_path / "as-text").glob("*.pt"))
