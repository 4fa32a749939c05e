"""KeyboardInterrupt at 100 random points of a fit, a range test and a cache build: the
learner is consistent every time (finite weights, the optimizer over the model's own
parameters, no gradients left, nothing running, no partial cache), and the next fit runs."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader

import nbtrain.core.checkpoints as checkpoints

from .conftest import TensorData, model_state
from .test_features import make_learner


class InterruptingData(TensorData):
    """TensorData whose cache-building pass (``fix``) is interrupted at one batch."""

    interrupt_fix_at: int | None = None

    @property
    def fix(self):
        loader = DataLoader(self.train_ds, batch_size=self.bs)
        at = self.interrupt_fix_at
        if at is None:
            return loader

        def batches():
            for i, batch in enumerate(loader):
                if i == at:
                    raise KeyboardInterrupt("during the cache build")
                yield batch

        return batches()


class InterruptAt:
    def __init__(self, event: str, it: int) -> None:
        self.event, self.it = event, it

    def __getattr__(self, name: str):
        if name == f"on_{self.event}":
            return self._maybe
        raise AttributeError(name)

    def _maybe(self, state) -> None:
        if state.it == self.it:
            raise KeyboardInterrupt(f"at {self.event} of iteration {self.it}")


def assert_consistent(learn) -> None:
    own = {id(p) for p in learn.model.parameters()}
    optimized = {id(p) for group in learn.opt.param_groups for p in group["params"]}
    assert own == optimized, "the optimizer and the model disagree"
    for name, tensor in learn.model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
    assert all(p.grad is None for p in learn.model.parameters()), "gradients left behind"
    assert learn.running is None
    for state in learn.opt.state.values():  # momentum buffers are the parameters' shapes
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert torch.isfinite(value).all()


def points(n: int = 100) -> list[tuple[str, int]]:
    rng = random.Random(0)
    kinds = ["fit"] * 40 + ["lr_find"] * 30 + ["cache"] * 30
    return [(kind, rng.randrange(64)) for kind in kinds][:n]


@pytest.mark.parametrize(("kind", "at"), points())
def test_an_interrupt_anywhere_leaves_a_consistent_learner(tmp_path, monkeypatch, kind, at):
    data = InterruptingData(256, n_valid=64, bs=32)  # 8 batches an epoch
    learn = make_learner(tmp_path, data)
    learn.checkpoint_dir = tmp_path / "resume"
    monkeypatch.setattr(checkpoints, "SPACING", 0)  # a checkpoint at every epoch end too
    if kind == "fit":
        learn.unfreeze()
        event = ("batch_start", "batch_end")[at % 2]
        with pytest.raises(KeyboardInterrupt):
            learn.fit_cycles(0.1, cycles=3, listeners=[InterruptAt(event, at % 24)])
        assert learn.fits[-1].status == "interrupted"
    elif kind == "lr_find":
        learn.unfreeze()
        before = model_state(learn.model)

        def step(i, lr, loss):
            if i == at:
                raise KeyboardInterrupt("during the range test")

        with pytest.raises(KeyboardInterrupt):
            learn.lr_find(iters=80, on_step=step)
        after = model_state(learn.model)
        assert all(torch.equal(before[k], after[k]) for k in before)
    else:
        learn.precompute = True
        data.interrupt_fix_at = at % 8
        with pytest.raises(KeyboardInterrupt):
            learn.fit_cycles(0.1)
        assert not list((tmp_path / "cache").glob("*")), "a partial cache entry"
        assert learn.feature_cache.last is None
        data.interrupt_fix_at = None
    assert_consistent(learn)
    if kind == "fit":  # the interrupted fit's checkpoint resumes it to its end
        state = learn.resume()[-1]
        assert state.status == "done" and state.it == state.total_iters
        assert_consistent(learn)
    assert learn.fit_cycles(0.05).status == "done"  # the next fit runs
    assert_consistent(learn)
