"""Training to convergence: a stage with patience ends once the validation loss stops
improving, and keeps the best epoch's weights."""

from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from torch.utils.data import DataLoader

from nbtrain.core import DataLoaders, Learner, Stage
from nbtrain.views import frontend

from .conftest import make_mlp, model_state, xor_data


def learner(tmp_path, *, valid: bool = True) -> Learner:
    torch.manual_seed(0)
    train = DataLoader(xor_data(256), batch_size=32, shuffle=True, generator=torch.Generator())
    loader = DataLoader(xor_data(128, seed=1), batch_size=64) if valid else None
    learn = Learner(make_mlp(), DataLoaders(train, loader), device="cpu", path=tmp_path)
    learn.checkpoint_dir = False
    return learn


def test_a_stage_ends_when_the_loss_stalls_and_keeps_the_best_epoch(tmp_path):
    learn = learner(tmp_path)
    # a rate far too high for this net: the loss soon stops falling
    states = learn.fit_stages([Stage(2.0, cycles=40, patience=3), Stage(0.01)])
    first = states[0]
    losses = [r.valid_loss for r in first.history]
    best = losses.index(min(losses))
    assert first.status == "done" and len(losses) == best + 4 < 40  # 3 epochs without better
    assert f"trained to convergence in {len(losses)} epochs" in first.message
    assert f"the weights of epoch {best + 1} (the best) are back" in first.message
    # the weights are the best epoch's: its cycle-end snapshot holds them
    snapshot = next(s for s in learn.snapshots if s.fit == first.fit and s.cycle == best)
    after_first = states[1].history  # the next stage ran: "done" lets the run go on
    assert len(after_first) == 1
    learn2 = learner(tmp_path / "again")
    learn2.fit_stages([Stage(2.0, cycles=40, patience=3)])
    got = model_state(learn2.model)
    assert all(torch.equal(got[k], snapshot.state_dict[k]) for k in got)


def test_patience_when_the_planned_epochs_run_out_first(tmp_path):
    learn = learner(tmp_path)
    state = learn.fit_cycles(0.05, cycles=4, patience=10)
    assert len(state.history) == 4
    assert "the 4 planned epochs ran" in state.message


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (dict(lr=0.1, cycles=5, patience=0), "patience must be >= 1"),
        (dict(lr=0.1, cycles=5, cycle_len=2, patience=2), "patience works with one-epoch"),
    ],
)
def test_patience_mistakes_are_one_line(stage, message):
    with pytest.raises(ValueError, match=message):
        Stage(**stage)


def test_patience_needs_validation_data(tmp_path):
    learn = learner(tmp_path, valid=False)
    with pytest.raises(ValueError, match="patience needs validation data"):
        learn.fit_cycles(0.1, cycles=5, patience=2)
    assert learn.fits == []


def test_the_magics_take_patience_and_say_how_it_ended(tmp_path):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nbtrain")
    frontend.set_mode("text")
    try:
        ip.user_ns["learn"] = learner(tmp_path)
        with capture_output() as out:
            ip.run_cell_magic("fit_cycles", "learn", "lr=2.0 cycles=40 patience=3\n")
        assert "done: trained to convergence in" in out.stdout
        with capture_output() as out:
            ip.run_line_magic("fit_cycles", "learn --lr 0.05 --cycles 3 --patience 5")
        assert "done: trained to convergence in 3 epochs (the 3 planned epochs ran)" in out.stdout
        with pytest.raises(UsageError, match="patience works with one-epoch cycles"):
            ip.run_line_magic("fit_cycles", "learn --lr 0.05 --cycle-len 2 --patience 5")
    finally:
        frontend.set_mode(None)
        ip.user_ns.pop("learn", None)
