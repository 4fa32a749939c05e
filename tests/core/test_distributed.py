"""procs=N: the same fit on N gloo processes ends where one process with the global batch
ends; Stop, a failing rank and a killed rank end every rank; nothing is left running."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbtrain.core import DataLoaders, Learner, Stage
from nbtrain.core.distributed import DistributedError, shard_spans
from nbtrain.core.features import BodyHead, FeatureCache

from .conftest import TensorData, assert_same_state, model_state, xor_data

# Two stages: the head alone, then every group at its own rate (DDP is wrapped anew
# when the trainable set changes).
STAGES = [
    Stage(0.1, cycles=2, freeze_to=2, seed=3),
    Stage((0.01, 0.03, 0.1), cycles=2, cycle_mult=2, freeze_to=0),
]


def make_mlp() -> nn.Module:
    """No BatchNorm, no dropout: one process and two give the same numbers."""
    return nn.Sequential(
        nn.Sequential(nn.Linear(2, 32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, 32), nn.ReLU()),
        nn.Linear(32, 2),
    )


def make(bs: int, tmp_path, model: nn.Module | None = None) -> Learner:
    shuffle = torch.Generator().manual_seed(0)
    train = DataLoader(xor_data(256, seed=0), batch_size=bs, shuffle=True, generator=shuffle)
    valid = DataLoader(xor_data(128, seed=1), batch_size=64)
    torch.manual_seed(0)
    learn = Learner(model or make_mlp(), DataLoaders(train, valid), device="cpu", path=tmp_path)
    learn.checkpoint_dir = False
    return learn


def rank_processes() -> list[psutil.Process]:
    """Live spawned worker processes of this test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.fixture(autouse=True)
def _no_worker_left():
    yield
    deadline = time.monotonic() + 5
    while rank_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rank_processes() == [], "a worker process outlived its fit"


@pytest.mark.filterwarnings("ignore:2 processes")
def test_two_processes_end_where_one_process_with_the_global_batch_ends(tmp_path):
    one = make(32, tmp_path / "one")
    one.fit_stages(STAGES)
    two = make(16, tmp_path / "two")
    with pytest.warns(
        UserWarning, match=r"^2 processes \(gloo\): the global batch is 2 x 16 = 32$"
    ):
        states = two.fit_stages(STAGES, procs=2)

    assert [s.status for s in states] == ["done", "done"]
    assert [s.fit for s in states] == [0, 1] and two.fits == states
    expected, got = model_state(one.model), model_state(two.model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
    a, b = one.opt.state_dict()["state"], two.opt.state_dict()["state"]
    for i in a:
        torch.testing.assert_close(
            b[i]["momentum_buffer"], a[i]["momentum_buffer"], atol=1e-5, rtol=0
        )
    assert two.trainable == one.trainable == [True, True, True]
    for mine, theirs in zip(two.history, one.history, strict=True):
        assert mine.lrs == theirs.lrs and mine.valid_loss == pytest.approx(
            theirs.valid_loss, abs=1e-6
        )
        assert mine.train_loss == pytest.approx(theirs.train_loss, abs=1e-6)  # the ranks' mean
    assert [(s.fit, s.cycle) for s in two.snapshots] == [(s.fit, s.cycle) for s in one.snapshots]
    # usable at once: the learner evaluates and trains on in this process
    assert two.evaluate()["loss"] == pytest.approx(one.evaluate()["loss"], abs=1e-6)
    two.fit_cycles(0.01)
    assert len(two.fits) == 3


def test_each_rank_takes_its_run_of_every_global_batch():
    assert shard_spans(10, 2, 0, 2) == [(0, 2), (4, 6)]  # 2 left over: 1 each, dropped
    assert shard_spans(10, 2, 1, 2) == [(2, 4), (6, 8)]
    assert shard_spans(12, 2, 0, 2) == [(0, 2), (4, 6), (8, 10)]
    assert shard_spans(13, 4, 1, 2) == [(4, 8), (10, 12)]  # a last 5 gives 2 each, 1 dropped


@pytest.mark.filterwarnings("ignore:2 processes")
@pytest.mark.filterwarnings("ignore:precompute is on")
def test_a_cached_head_trains_alike_and_the_cache_is_built_once(tmp_path):
    def make_cached(bs: int, folder) -> Learner:
        torch.manual_seed(0)
        body = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        model = BodyHead(body, nn.Linear(32, 2))
        learn = Learner(
            model,
            TensorData(bs=bs),
            layer_groups=[body[:2], body[2:], model.head],
            device="cpu",
            path=folder,
        )
        learn.feature_cache = FeatureCache(tmp_path / "cache")  # one disk cache for both
        learn.checkpoint_dir, learn.precompute = False, True
        learn.freeze()
        return learn

    # no seed: the ranks shuffle alike from the notebook's random state, whether the
    # cache was built (rank 0) or read from disk (rank 1)
    torch.manual_seed(7)
    one = make_cached(32, tmp_path / "one")
    body = model_state(one.model.body)
    one.fit_stages([Stage(0.1, cycles=2)])
    torch.manual_seed(7)
    two = make_cached(16, tmp_path / "two")
    two.fit_stages([Stage(0.1, cycles=2)], procs=2)
    assert_same_state(model_state(two.model.body), body)  # the body stayed frozen
    for name, tensor in model_state(one.model).items():
        torch.testing.assert_close(model_state(two.model)[name], tensor, atol=1e-6, rtol=0)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # read from disk by every rank


class StopAt:
    """Clicks Stop once the ranks have trained a few batches."""

    def __init__(self, learn: Learner) -> None:
        self.learn = learn

    def on_batch_end(self, state) -> None:
        if state.it >= 3:
            self.learn.request_stop()


@pytest.mark.filterwarnings("ignore:2 processes")
def test_stop_reaches_every_rank_at_a_batch_end(tmp_path):
    learn = make(16, tmp_path)
    before = model_state(learn.model)
    [state] = learn.fit_stages([Stage(0.01, cycles=50, seed=0)], procs=2, listeners=[StopAt(learn)])
    assert state.status == "stopped" and 3 <= state.it < state.total_iters
    assert learn.fits == [state] and any(
        not torch.equal(before[k], v) for k, v in model_state(learn.model).items()
    )  # the learner holds the weights of the batch it stopped at


class Boom(nn.Module):
    """Fails on rank 1 at its fourth training step."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.calls = make_mlp(), 0

    def forward(self, x):
        import torch.distributed as dist

        if self.training:
            self.calls += 1
            if dist.is_initialized() and dist.get_rank() == 1 and self.calls == 4:
                raise RuntimeError("boom on rank 1")
        return self.net(x)


@pytest.mark.filterwarnings("ignore:2 processes")
def test_a_failing_rank_ends_the_fit_in_one_line_and_changes_nothing(tmp_path):
    learn = make(16, tmp_path, Boom())
    before = model_state(learn.model)
    started = time.monotonic()
    with pytest.raises(DistributedError) as info:
        learn.fit_stages([Stage(0.1, cycles=3, seed=0)], procs=2)
    assert str(info.value) == (
        "rank 1 failed: RuntimeError: boom on rank 1; the learner is as it was before this fit"
    )
    assert time.monotonic() - started < 60
    assert learn.fits == [] and learn.snapshots == []
    assert_same_state(model_state(learn.model), before)


class KillRank1:
    """kill -9 of the second worker once rank 0 reports training."""

    def __init__(self) -> None:
        self.done = False

    def on_batch_end(self, state) -> None:
        if not self.done:
            self.done = True
            workers = sorted(rank_processes(), key=lambda p: p.create_time())
            workers[-1].kill()


@pytest.mark.filterwarnings("ignore:2 processes")
def test_a_killed_rank_ends_the_fit_in_one_line(tmp_path):
    learn = make(16, tmp_path)
    before = model_state(learn.model)
    with pytest.raises(DistributedError, match=r"^rank 1 was killed by SIGKILL; the learner is"):
        learn.fit_stages([Stage(0.001, cycles=200, seed=0)], procs=2, listeners=[KillRank1()])
    assert learn.fits == []
    assert_same_state(model_state(learn.model), before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"procs": 0}, "procs must be"),
        ({"procs": "many"}, "procs must be a whole number >= 1 or 'auto', got 'many'"),
        ({"procs": 2, "save_snapshots": "snap"}, "save_snapshots works in one process"),
        ({"scale_lr": True}, "scale_lr multiplies the rates by procs"),
    ],
)
def test_a_bad_procs_argument_is_one_line_and_changes_nothing(tmp_path, kwargs, message):
    learn = make(16, tmp_path)
    before = model_state(learn.model)
    with pytest.raises(ValueError, match=message) as info:
        learn.fit_stages([Stage(0.1)], **kwargs)
    assert "\n" not in str(info.value)
    assert learn.fits == [] and rank_processes() == []
    assert_same_state(model_state(learn.model), before)


class Locked(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.base, self.lock = xor_data(64), threading.Lock()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i]


def test_what_cannot_reach_the_workers_is_named_before_any_starts(tmp_path):
    train = DataLoader(Locked(), batch_size=16, shuffle=True)
    learn = Learner(make_mlp(), (train, train), device="cpu", path=tmp_path)
    with pytest.raises(ValueError, match=r"^cannot send the learner's data to worker processes "):
        learn.fit_stages([Stage(0.1)], procs=2)
    assert learn.fits == []


@pytest.mark.filterwarnings("ignore:2 processes")
def test_a_saved_job_runs_under_torchrun_and_the_notebook_loads_its_result(tmp_path):
    import subprocess
    import sys

    import nbtrain

    one = make(32, tmp_path / "one")
    one.fit_stages(STAGES)
    two = make(16, tmp_path / "two")
    job = nbtrain.save_job(two, STAGES, tmp_path / "run.job")
    out = tmp_path / "result.pt"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [*torchrun, "-m", "nbtrain.launch", str(job), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "result: " in done.stdout and out.is_file()
    states = nbtrain.load_result(two, out)
    assert [s.status for s in states] == ["done", "done"] and two.fits == states
    for name, tensor in model_state(one.model).items():
        torch.testing.assert_close(model_state(two.model)[name], tensor, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"is not the result of python -m nbtrain\.launch"):
        torch.save({"model": {}}, tmp_path / "other.pt")
        nbtrain.load_result(two, tmp_path / "other.pt")


class InterruptAt:
    """A kernel interrupt as the magics deliver it to a fit in a worker thread: a
    KeyboardInterrupt from a listener before a batch."""

    def on_batch_start(self, state) -> None:
        if state.it >= 3:
            raise KeyboardInterrupt("kernel interrupt")


@pytest.mark.filterwarnings("ignore:2 processes")
def test_an_interrupt_stops_every_rank_and_the_learner_keeps_where_they_stopped(tmp_path):
    learn = make(16, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        learn.fit_stages([Stage(0.001, cycles=200, seed=0)], procs=2, listeners=[InterruptAt()])
    [state] = learn.fits
    assert state.status == "interrupted" and 3 <= state.it < state.total_iters
    assert learn.evaluate()["loss"] > 0  # usable at once


class NaNOnRank1(nn.Module):
    """A loss that is not finite on rank 1 only, at its third training step."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.calls = make_mlp(), 0

    def forward(self, x):
        import torch.distributed as dist

        out = self.net(x)
        if self.training:
            self.calls += 1
            if dist.is_initialized() and dist.get_rank() == 1 and self.calls == 3:
                return out * float("nan")
        return out


@pytest.mark.filterwarnings("ignore")
def test_a_loss_diverging_on_one_rank_ends_every_rank_diverged(tmp_path):
    learn = make(16, tmp_path, NaNOnRank1())
    started = time.monotonic()
    [state] = learn.fit_stages([Stage(0.1, cycles=3, seed=0)], procs=2)
    assert state.status == "diverged" and time.monotonic() - started < 60
    assert all(torch.isfinite(v).all() for v in model_state(learn.model).values())


class SigintToTheNotebook:
    """The kernel's SIGINT, once the ranks train: it reaches the notebook's process, not
    the ranks (they run in a process group of their own)."""

    def __init__(self) -> None:
        self.sent = False

    def on_batch_end(self, state) -> None:
        if not self.sent and state.it >= 2:
            self.sent = True
            ranks = rank_processes()
            assert ranks and all(os.getpgid(p.pid) != os.getpgrp() for p in ranks)
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.filterwarnings("ignore:2 processes")
def test_a_real_sigint_stops_every_rank_at_one_batch(tmp_path):
    learn = make(16, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        learn.fit_stages(
            [Stage(0.001, cycles=200, seed=0)], procs=2, listeners=[SigintToTheNotebook()]
        )
    [state] = learn.fits
    assert state.status == "interrupted" and 2 <= state.it < state.total_iters
