"""SGDR snapshot ensembles: the average of the last k cycle ends' predictions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .conftest import assert_same_state, model_state


def by_hand(learn, k):
    kept = {n: t.clone() for n, t in learn.model.state_dict().items()}
    probs = []
    for snap in learn.snapshots[-k:]:
        learn.model.load_state_dict(snap.state_dict)
        probs.append(learn.get_preds()[0])
    learn.model.load_state_dict(kept)
    return torch.stack(probs).mean(0)


def test_the_ensemble_averages_the_last_snapshots_and_keeps_the_weights(learn):
    learn.fit_cycles(0.1, cycles=3, seed=0)
    before = model_state(learn.model)
    last, targets = learn.get_preds()
    one, y = learn.snapshot_ensemble(1)  # the last cycle end is the model as it is
    assert torch.equal(one, last) and torch.equal(y, targets)
    three, _ = learn.snapshot_ensemble(3)
    assert torch.allclose(three, by_hand(learn, 3), rtol=0, atol=1e-7)
    assert not torch.equal(three, last)
    assert_same_state(model_state(learn.model), before)
    scores = learn.evaluate(ensemble=3)
    logits = three.clamp_min(1e-12).log()
    assert scores["loss"] == pytest.approx(nn.functional.nll_loss(logits, y).item())
    assert scores["accuracy"] == pytest.approx((three.argmax(1) == y).float().mean().item())
    assert torch.equal(learn.snapshot_ensemble()[0], three)  # default: the last fit's 3
    learn.fit_cycles(0.1, cycles=2, seed=1)  # a later fit: the default is its own 2
    assert torch.equal(learn.snapshot_ensemble()[0], learn.snapshot_ensemble(2)[0])


@pytest.mark.parametrize(
    ("k", "message"),
    [(4, "an ensemble of 4 snapshots needs 4 cycle ends; there are 3"), (0, "k must be >= 1")],
)
def test_a_bad_ensemble_size_is_one_line(learn, k, message):
    learn.fit_cycles(0.1, cycles=3, seed=0)
    with pytest.raises(ValueError, match=message):
        learn.evaluate(ensemble=k)
