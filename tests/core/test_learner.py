import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from nbtrain.core import DataLoaders, DivergedWarning, Learner, default_groups

from .conftest import (
    assert_same_optimizer,
    assert_same_state,
    make_mlp,
    model_state,
    optimizer_state,
)


def test_default_groups_split_body_and_head(learn):
    assert [g.name for g in learn.groups] == ["body (early)", "body (late)", "head"]
    head = learn.model[2]
    assert {id(p) for p in learn.groups[2].params} == {id(p) for p in head.parameters()}
    total = sum(g.n_params for g in learn.groups)
    assert total == sum(p.numel() for p in learn.model.parameters())


def test_body_head_attributes_are_used():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 8))
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.body(x))

    net = Net()
    groups = default_groups(net)
    assert len(groups) == 3
    assert {id(p) for p in groups[2].params} == {id(p) for p in net.head.parameters()}


def test_custom_groups_must_cover_every_parameter(data):
    model = make_mlp()
    with pytest.raises(ValueError, match="in no layer group"):
        Learner(model, data, layer_groups=[model[0], model[2]], device="cpu")
    learn = Learner(model, data, layer_groups=[[model[0], model[1]], model[2]], device="cpu")
    assert learn.n_groups == 2


def test_freeze_keeps_frozen_weights_and_batchnorm_statistics(learn):
    learn.freeze()
    before = model_state(learn.model)
    learn.fit_cycles(0.1, cycles=1)
    after = model_state(learn.model)
    body = [k for k in before if not k.startswith("2.")]
    assert body and all(torch.equal(before[k], after[k]) for k in body)  # incl. running stats
    assert not torch.equal(before["2.weight"], after["2.weight"])
    assert after["0.1.num_batches_tracked"] == 0


def test_freeze_to_and_unfreeze(learn):
    learn.freeze_to(1)
    assert learn.trainable == [False, True, True]
    before = model_state(learn.model)
    learn.fit_cycles(0.1)
    after = model_state(learn.model)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("0."))
    assert not torch.equal(before["1.0.weight"], after["1.0.weight"])
    assert not torch.equal(before["1.1.running_mean"], after["1.1.running_mean"])
    learn.unfreeze()
    assert learn.trainable == [True, True, True]
    with pytest.raises(ValueError, match="group index"):
        learn.freeze_to(7)


def test_train_bn_keeps_batchnorm_training_in_frozen_groups(data):
    learn = Learner(make_mlp(), data, device="cpu", train_bn=True)
    learn.freeze()
    before = model_state(learn.model)
    learn.fit_cycles(0.1)
    after = model_state(learn.model)
    assert not torch.equal(before["0.1.running_mean"], after["0.1.running_mean"])
    assert torch.equal(before["0.1.weight"], after["0.1.weight"])  # affine stays frozen


def test_set_trainable_keeps_momentum(learn):
    learn.fit_cycles(0.05)
    opt_id, buffers = id(learn.opt), len(learn.opt.state)
    learn.set_trainable(0, False)
    assert learn.trainable == [False, True, True]
    assert id(learn.opt) == opt_id and len(learn.opt.state) == buffers
    with pytest.raises(ValueError, match="no layer group 3"):
        learn.set_trainable(3, True)


def test_wrong_length_rates_are_rejected_and_change_nothing(learn):
    before = model_state(learn.model)
    with pytest.raises(ValueError, match="got 2 learning rates for 3 layer groups"):
        learn.fit_cycles([1e-3, 1e-2])
    assert_same_state(before, model_state(learn.model))
    assert learn.fits == []


def test_fit_cycles_epochs_history_and_snapshots(learn):
    state = learn.fit_cycles(0.1, cycles=3, cycle_len=1, cycle_mult=2)
    assert state.status == "done" and state.it == state.total_iters == 7 * 8
    assert [r.epoch for r in learn.history] == list(range(7))
    assert [r.cycle for r in learn.history] == [0, 1, 1, 2, 2, 2, 2]
    assert [(s.cycle, s.epoch) for s in learn.snapshots] == [(0, 0), (1, 2), (2, 6)]
    assert_same_state(learn.snapshots[-1].state_dict, model_state(learn.model))
    assert learn.history[-1].metrics["accuracy"] > 0.8
    assert state.eta == 0
    learn.fit_cycles(0.1, cycles=2)  # cycle_mult=1 works
    assert len(learn.history) == 9 and len(learn.snapshots) == 5


def test_events_arrive_in_order_with_state(learn):
    seen = []

    class Listener:
        def __getattr__(self, name):
            if name.startswith("on_"):
                return lambda state: seen.append((name[3:], state.epoch, state.cycle))
            raise AttributeError(name)

    learn.fit_cycles(0.1, cycles=2, listeners=[Listener()])
    names = [s[0] for s in seen]
    assert names[:3] == ["fit_start", "cycle_start", "epoch_start"]
    assert names.count("batch_start") == names.count("batch_end") == 16
    assert names.count("cycle_end") == 2 and names[-1] == "fit_end"
    assert ("cycle_start", 1, 1) in seen
    learn.fit_cycles(0.1)  # listeners were for that fit only
    assert len(seen) == len(names)


def test_seed_makes_a_run_repeat_exactly(data):
    results = []
    for _ in range(2):
        torch.manual_seed(5)
        learn = Learner(make_mlp(), data, device="cpu")
        learn.fit_cycles(0.1, cycles=2, seed=11)
        results.append(model_state(learn.model))
    assert_same_state(*results)


def test_nan_loss_stops_and_restores_last_good_weights(learn):
    learn.fit_cycles(0.05)
    calls = {"n": 0}
    good = {}
    ce = torch.nn.functional.cross_entropy

    def poisoned(logits, y):
        calls["n"] += 1
        return ce(logits, y) * (float("inf") if calls["n"] == 8 + 3 else 1.0)

    learn.loss_fn = poisoned
    learn.events.on("epoch_end", lambda s: good.update(model_state(learn.model)))
    opt_after_epoch = {}
    learn.events.on("epoch_end", lambda s: opt_after_epoch.update(optimizer_state(learn.opt)))
    with pytest.warns(DivergedWarning, match="loss became inf at iteration 9 .epoch 2."):
        state = learn.fit_cycles(0.1, cycles=3)
    assert state.status == "diverged" and len(state.history) == 1
    assert_same_state(good, model_state(learn.model))
    assert_same_optimizer(opt_after_epoch, optimizer_state(learn.opt))
    learn.loss_fn = ce
    assert learn.validate()["accuracy"] > 0


def test_keyboard_interrupt_leaves_the_learner_usable(learn):
    weights = {}

    def on_batch_end(state):
        weights.update(model_state(learn.model))
        if state.it == 13:
            raise KeyboardInterrupt

    learn.events.on("batch_end", on_batch_end)
    with pytest.raises(KeyboardInterrupt):
        learn.fit_cycles(0.1, cycles=3)
    learn.events.off("batch_end", on_batch_end)
    state = learn.fits[-1]
    assert state.status == "interrupted" and state.it == 13 and len(learn.history) == 1
    assert_same_state(weights, model_state(learn.model))
    assert all(p.grad is None for p in learn.model.parameters())
    assert learn.validate()["loss"] > 0
    assert learn.fit_cycles(0.05).status == "done"


def test_sigint_stops_at_the_next_batch_boundary(learn):
    def on_batch_end(state):
        if state.it == 5:
            os.kill(os.getpid(), signal.SIGINT)

    learn.events.on("batch_end", on_batch_end)
    with pytest.raises(KeyboardInterrupt, match="interrupted after iteration 5/24"):
        learn.fit_cycles(0.1, cycles=3)
    assert learn.fits[-1].status == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_request_stop_ends_the_fit_cleanly(learn):
    learn.events.on("batch_end", lambda s: s.it == 10 and learn.request_stop())
    state = learn.fit_cycles(0.1, cycles=3)
    assert state.status == "stopped" and state.it == 10
    assert "stopped after iteration 10/24" in state.message
    assert learn.request_stop() is False  # nothing running


def test_checkpoint_round_trip(learn, tmp_path):
    learn.fit_cycles(0.1)
    learn.freeze_to(1)
    saved, opt_saved = model_state(learn.model), optimizer_state(learn.opt)
    path = learn.save("stage1")
    assert path == tmp_path / "models" / "stage1.pth" and path.exists()
    assert [p.name for p in path.parent.iterdir() if p.is_file()] == ["stage1.pth"]  # no temp left
    learn.unfreeze()
    learn.fit_cycles(0.1)
    assert learn.load("stage1") == path
    assert_same_state(saved, model_state(learn.model))
    assert_same_optimizer(opt_saved, optimizer_state(learn.opt))
    assert learn.trainable == [False, True, True]


def test_loading_a_checkpoint_that_does_not_fit_changes_nothing(learn, tmp_path, data):
    other = Learner(
        nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 2)), data, device="cpu", path=tmp_path
    )
    path = other.save("other")
    before = model_state(learn.model)
    with pytest.raises(ValueError, match="does not fit this model"):
        learn.load(path)
    assert_same_state(before, model_state(learn.model))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        learn.load("missing")


def test_bad_data_is_rejected():
    with pytest.raises(ValueError, match=r"data must have \.train and \.valid"):
        Learner(make_mlp(), [1, 2, 3], device="cpu")
    with pytest.raises(ValueError, match=r"nn\.Module"):
        Learner("resnet", DataLoaders([], []), device="cpu")


def test_core_imports_no_notebook_libraries():
    code = (
        "import sys, nbtrain.core, nbtrain\n"
        "bad = [m for m in ('IPython', 'ipywidgets', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bn_freeze_keeps_running_statistics_in_trainable_groups(learn):
    learn.unfreeze()
    learn.bn_freeze()
    before = model_state(learn.model)
    learn.fit_cycles(0.1)
    after = model_state(learn.model)
    stats = [k for k in before if "running" in k or "num_batches" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert not torch.equal(before["0.0.weight"], after["0.0.weight"])  # still trains
    learn.bn_freeze(False)
    learn.fit_cycles(0.1)
    assert not torch.equal(after["0.1.running_mean"], model_state(learn.model)["0.1.running_mean"])


def test_bn_freeze_leaves_a_new_heads_batchnorm_learning_this_datas_statistics(data, tmp_path):
    # The mlp head's BatchNorm is new: fixed, its statistics from one image size broke the
    # checklist's last, larger size (training loss x30)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(2, 32), nn.BatchNorm1d(32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, 32), nn.ReLU()),
        nn.Sequential(nn.BatchNorm1d(32), nn.Linear(32, 2)),
    )
    learn = Learner(model, data, device="cpu", path=tmp_path)
    learn.unfreeze()
    learn.bn_freeze()
    before = model_state(learn.model)
    learn.fit_cycles(0.1)
    after = model_state(learn.model)
    assert torch.equal(before["0.1.running_mean"], after["0.1.running_mean"])  # the body's: kept
    assert not torch.equal(before["2.0.running_mean"], after["2.0.running_mean"])  # the head's


def test_nothing_trains_is_refused_before_anything_changes(learn):
    with pytest.raises(ValueError, match=r"at least the last group must train"):
        learn.freeze_to(3)
    assert learn.trainable == [True, True, True]
    for g in range(3):
        learn.set_trainable(g, False)
    with pytest.raises(ValueError, match="every layer group is frozen"):
        learn.fit_cycles(0.1)
    assert learn.fits == []
    with pytest.raises(ValueError, match="no snapshots yet"):
        learn.load_snapshot(0)
    with pytest.raises(ValueError, match="earlier groups higher rates"):
        learn.resolve_lrs(slice(1e-2, 1e-4))


def test_the_best_snapshot_is_one_call_away_by_rank_or_by_fit_and_cycle(learn):
    learn.fit_cycles(0.3, cycles=2)
    learn.fit_cycles(0.05, cycles=2, cycle_len=2)
    assert [(s.fit, s.cycle) for s in learn.snapshots] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # make the second snapshot the best by accuracy, and tie the fourth on it
    figures = zip(learn.snapshots, (0.5, 0.9, 0.7, 0.9), (0.4, 0.3, 0.2, 0.1), strict=True)
    for snap, acc, loss in figures:
        snap.metrics["accuracy"], snap.valid_loss = acc, loss
    best = learn.best_snapshot()
    assert (best.fit, best.cycle) == (1, 1)  # equal accuracy: the lower loss wins
    assert learn.best_snapshot("accuracy") is best
    final = model_state(learn.model)
    assert learn.load_snapshot(fit=0, cycle=1) is learn.snapshots[1]
    assert_same_state(model_state(learn.model), learn.snapshots[1].state_dict)
    assert learn.load_snapshot("best") is best
    assert_same_state(model_state(learn.model), final)  # the last cycle's end
    assert learn.load_snapshot(fit=-2) is learn.snapshots[1]  # that fit's last cycle


def test_a_bad_snapshot_choice_is_one_line_and_loads_nothing(learn):
    learn.fit_cycles(0.3, cycles=2)
    before = model_state(learn.model)
    for kwargs, message in [
        ({"fit": 1}, r"no fit 1; there are 1 \(0..0, or -1..-1\)"),
        ({"fit": 0, "cycle": 2}, r"fit 0 has snapshots of 2 cycles; no cycle 2"),
        ({"fit": 0.5}, r"fit is a whole number, got 0.5"),
        ({"index": 0, "fit": 0}, r"give a snapshot index or fit= and cycle=, not both"),
        ({"index": "worst"}, r"a snapshot index is a whole number, got 'worst' \(or 'best'"),
    ]:
        with pytest.raises(ValueError, match=message):
            learn.load_snapshot(**kwargs)
    with pytest.raises(ValueError, match=r"no metric 'f1' in the snapshots; they have accuracy"):
        learn.best_snapshot("f1")
    assert_same_state(model_state(learn.model), before)
