"""Resumable checkpoints: a run stopped anywhere goes on to the very weights of a run
that never stopped; bad checkpoints are refused in one line and change nothing."""

from __future__ import annotations

import pickle
import random

import pytest
import torch
from torch.utils.data import DataLoader

from nbtrain.core import DataLoaders, Learner, Stage
from nbtrain.core.resume import CheckpointError, CheckpointStore, read_checkpoint
from tests.core.conftest import full_disk, make_mlp, xor_data

# 8 batches an epoch; stage 1: 2 one-epoch cycles (iterations 0-15), stage 2: cycles of
# 1 and 2 epochs (16-39), with differential rates.
PLAN = [
    Stage(0.1, cycles=2, seed=0),
    Stage((0.01, 0.03, 0.1), cycles=2, cycle_mult=2),
]
ITERS = 40


def new_learner(tmp_path, *, init_seed: int = 0, generator: bool = True) -> Learner:
    torch.manual_seed(init_seed)
    shuffle = torch.Generator().manual_seed(5) if generator else None
    train = DataLoader(xor_data(256), batch_size=32, shuffle=True, generator=shuffle)
    valid = DataLoader(xor_data(128, seed=1), batch_size=64)
    return Learner(make_mlp(), DataLoaders(train, valid), device="cpu", path=tmp_path)


def weights(learn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(learn: Learner) -> list[tuple]:
    return [(r.train_loss, r.valid_loss, r.metrics["accuracy"]) for r in learn.history]


class Interrupt:
    """Raise ``error`` when the run reaches global iteration ``at`` (``where``: at the
    batch's start, after its step, or in the validation pass that follows it)."""

    def __init__(self, at: int, where: str, error: type[BaseException] = KeyboardInterrupt):
        self.at, self.where, self.error, self.fired = at, where, error, False

    def _global(self, state) -> int:
        return sum(s.total_iters for s in state.plan.schedules[: state.stage]) + state.it

    def _fire(self) -> None:
        self.fired = True
        raise self.error(f"injected at {self.at}")

    def on_batch_start(self, state) -> None:
        if self.where == "batch_start" and self._global(state) == self.at:
            self._fire()

    def on_batch_end(self, state) -> None:
        if self.where == "batch_end" and self._global(state) == self.at + 1:
            self._fire()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its final weights and its per-epoch figures."""
    learn = new_learner(tmp_path_factory.mktemp("reference"))
    learn.fit_stages(PLAN)
    return weights(learn), losses(learn)


def resume_elsewhere(folder, tmp_path) -> Learner:
    """A new learner (other initial weights, other global RNG: a restarted kernel)
    that resumes from the newest checkpoint in ``folder``."""
    learn = new_learner(tmp_path / "fresh", init_seed=99)
    learn.checkpoint_dir = folder
    torch.manual_seed(1234)
    random.seed(1234)
    learn.resume()
    return learn


def interrupted_run(tmp_path, interrupt: Interrupt) -> Learner:
    learn = new_learner(tmp_path / "run")
    with pytest.raises(interrupt.error):
        learn.fit_stages(PLAN, listeners=[interrupt])
    assert interrupt.fired
    return learn


# 20 points: the first and last batch of every cycle, the stage boundary, and others
POINTS = [0, 1, 7, 8, 15, 16, 17, 23, 24, 25, 30, 38, 39, 3, 11, 19, 27, 33, 35, 12]


@pytest.mark.parametrize("at", POINTS)
def test_a_run_interrupted_at_any_batch_resumes_bit_for_bit(reference, tmp_path, at):
    ref_weights, ref_losses = reference
    where = "batch_start" if at % 2 == 0 else "batch_end"
    run = interrupted_run(tmp_path, Interrupt(at, where))
    assert run.fits[-1].status == "interrupted"
    resumed = resume_elsewhere(run.checkpoints.folder, tmp_path)
    assert same(weights(resumed), ref_weights)
    assert losses(resumed) == ref_losses
    assert [s.status for s in resumed.fits][-1] == "done"


def test_an_interrupt_during_validation_resumes_bit_for_bit(reference, tmp_path):
    ref_weights, ref_losses = reference
    calls = {"n": 0}

    def metric(logits, targets):
        calls["n"] += 1
        if calls["n"] == 5:  # the validation pass of epoch 3 (stage 2's first epoch)
            raise KeyboardInterrupt("during validation")
        return (logits.argmax(-1) == targets).float().mean()

    metric.__name__ = "accuracy"
    run = new_learner(tmp_path / "run")
    run.metrics = (metric,)
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN)
    payload = read_checkpoint(run.checkpoints.latest())
    assert payload["position"]["validating"] and payload["stage"] == 1
    resumed = resume_elsewhere(run.checkpoints.folder, tmp_path)
    assert same(weights(resumed), ref_weights)
    assert losses(resumed) == ref_losses


@pytest.mark.parametrize("how", ["stop", "exception"])
def test_stop_and_a_failing_handler_resume_too(reference, tmp_path, how):
    ref_weights, _ = reference
    run = new_learner(tmp_path / "run")
    if how == "stop":

        class StopAt:
            def on_batch_end(self, state):
                if state.stage == 1 and state.it == 5:
                    run.request_stop()

        run.fit_stages(PLAN, listeners=[StopAt()])
        assert run.fits[-1].status == "stopped"
    else:
        with pytest.raises(RuntimeError):
            run.fit_stages(PLAN, listeners=[Interrupt(21, "batch_end", RuntimeError)])
        assert run.fits[-1].status == "failed"
    # in the same kernel: the learner goes on itself
    run.resume()
    assert same(weights(run), ref_weights)


def test_a_loader_without_a_generator_resumes_bit_for_bit(tmp_path):
    ref = new_learner(tmp_path / "ref", generator=False)
    ref.fit_stages(PLAN)
    run = new_learner(tmp_path / "run", generator=False)
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN, listeners=[Interrupt(13, "batch_end")])
    fresh = new_learner(tmp_path / "fresh", init_seed=7, generator=False)
    fresh.checkpoint_dir = run.checkpoints.folder
    fresh.resume()
    assert same(weights(fresh), weights(ref))


def test_a_finished_stage_resumes_at_the_next_one(reference, tmp_path, monkeypatch):
    ref_weights, ref_losses = reference
    run = new_learner(tmp_path / "run")
    # the first checkpoint of stage 2 is throttled away: the newest is stage 1's end
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN, listeners=[Interrupt(16, "batch_start")])
    store = run.checkpoints
    newest = read_checkpoint(store.latest())
    assert (newest["stage"], newest["position"]["batch"]) == (1, 0)
    older = read_checkpoint(store.paths()[-2])
    assert (older["stage"], older["status"]) == (0, "done")
    store.latest().unlink()  # as if the kernel died before stage 2's checkpoint
    resumed = resume_elsewhere(store.folder, tmp_path)
    assert same(weights(resumed), ref_weights)
    assert losses(resumed) == ref_losses


def test_an_epoch_end_checkpoint_is_what_a_dead_kernel_leaves(reference, tmp_path, monkeypatch):
    # With no throttle every epoch end writes one; the newest before the "death" resumes.
    import nbtrain.core.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "SPACING", 0)
    ref_weights, _ = reference
    run = new_learner(tmp_path / "run")
    run.keep_checkpoints = 10
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN, listeners=[Interrupt(29, "batch_end")])
    store = run.checkpoints
    store.latest().unlink()  # the interrupt's own checkpoint: a killed kernel writes none
    newest = read_checkpoint(store.latest())
    assert newest["status"] == "running" and newest["position"]["batch"] == 0
    resumed = resume_elsewhere(store.folder, tmp_path)
    assert same(weights(resumed), ref_weights)


def test_each_run_keeps_its_newest_and_the_folder_its_newest_runs(tmp_path):
    store = CheckpointStore(tmp_path, keep=2, keep_runs=2)
    a, b, c = "a" * 12, "b" * 12, "c" * 12
    for i in range(4):
        store.write({"format": "x", "i": i}, a)
    assert [p.name for p in store.paths(a)] == [f"{a}-00000003.ckpt", f"{a}-00000004.ckpt"]
    (tmp_path / f".{a}-00000005.ckpt.x1.tmp").write_bytes(b"half a file")
    (tmp_path / f".{b}-00000001.ckpt.x2.tmp").write_bytes(b"another run's write")
    assert store.latest(a).name == f"{a}-00000004.ckpt"  # a temporary file is never listed
    assert store.remove_partial(a) == 1  # its own only: b may be writing right now
    assert (tmp_path / f".{b}-00000001.ckpt.x2.tmp").exists()
    store.write({"format": "x"}, b)
    assert store.latest().name == f"{b}-00000001.ckpt" and store.runs() == [a, b]
    store.write({"format": "x"}, b, finished=True)  # a finished run keeps its last only
    assert [p.name for p in store.paths(b)] == [f"{b}-00000002.ckpt"]
    store.write({"format": "x"}, c)  # three runs: the oldest goes
    assert store.runs() == [b, c] and store.paths(a) == []


def test_a_finished_run_has_nothing_to_resume(tmp_path):
    learn = new_learner(tmp_path)
    learn.fit_stages(PLAN)
    with pytest.raises(CheckpointError, match="that run finished; there is nothing to resume"):
        learn.resume()
    fresh = new_learner(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"no checkpoint to resume in .*a fit writes one"):
        fresh.resume()


class Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_checkpoint_that_would_run_code_is_refused_by_resume_and_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "0123456789ab-00000001.ckpt"
    with open(bad, "wb") as f:
        pickle.dump({"format": "nbtrain-resume", "evil": Evil()}, f)
    learn = new_learner(tmp_path)
    before = weights(learn)
    for call in (learn.resume, learn.load):
        with pytest.raises(CheckpointError, match="cannot be read safely") as info:
            call(bad)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "PWNED").exists()
    assert same(weights(learn), before)


def test_a_truncated_checkpoint_and_another_models_are_refused_in_one_line(tmp_path):
    run = new_learner(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN, listeners=[Interrupt(9, "batch_end")])
    good = run.checkpoints.latest()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:1000])
    other = Learner(
        torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
        run.data,
        device="cpu",
        path=tmp_path,
    )
    before = weights(other)
    for learn, path, message in [
        (run, truncated, "cannot be read safely"),
        (other, good, "does not fit this model"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            learn.resume(path)
        assert "\n" not in str(info.value)
    assert same(weights(other), before)


def test_a_checkpoint_folder_that_cannot_be_written_stops_the_fit_cleanly(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    learn = new_learner(tmp_path)
    learn.checkpoint_dir = blocker / "resume"
    with pytest.warns(UserWarning, match="cannot write a checkpoint to .*the fit stops here"):
        states = learn.fit_stages(PLAN)
    assert states[-1].status == "stopped"
    assert states[-1].message.startswith("cannot write a checkpoint")
    assert all(torch.isfinite(v).all() for v in weights(learn).values() if v.is_floating_point())
    learn.checkpoint_dir = False  # no checkpoints at all: the fit runs through
    assert learn.fit_stages(PLAN)[-1].status == "done"


class NoisyXor(torch.utils.data.Dataset):
    """A pipeline that draws from Python's and numpy's RNGs (as many transforms do)."""

    def __init__(self) -> None:
        self.base = xor_data(256)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        import numpy as np

        x, y = self.base[i]
        noise = random.gauss(0, 0.05) + float(np.random.normal(0, 0.05))
        return x + noise, y


def noisy_learner(tmp_path, *, init_seed: int = 0) -> Learner:
    torch.manual_seed(init_seed)
    train = DataLoader(NoisyXor(), batch_size=32, shuffle=True)
    valid = DataLoader(xor_data(128, seed=1), batch_size=64)
    return Learner(make_mlp(), DataLoaders(train, valid), device="cpu", path=tmp_path)


@pytest.mark.parametrize("at", [5, 12, 30])
def test_a_pipeline_drawing_from_python_and_numpy_resumes_bit_for_bit(tmp_path, at):
    import numpy as np

    def seeded(learn):
        random.seed(0)
        np.random.seed(0)
        return learn

    ref = seeded(noisy_learner(tmp_path / "ref"))
    ref.fit_stages(PLAN)
    run = seeded(noisy_learner(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN, listeners=[Interrupt(at, "batch_end")])
    fresh = noisy_learner(tmp_path / "fresh", init_seed=3)
    random.seed(99)
    np.random.seed(99)
    fresh.checkpoint_dir = run.checkpoints.folder
    fresh.resume()
    assert same(weights(fresh), weights(ref))


def test_a_full_disk_stops_the_fit_cleanly_in_one_line(tmp_path, monkeypatch):
    # torch.save to a full disk fails in its zip writer: a RuntimeError raised while
    # handling the OSError (ENOSPC); bench/faults.py does it on a real, full tmpfs.
    import nbtrain.core.resume as resume

    learn = new_learner(tmp_path)
    monkeypatch.setattr(resume.torch, "save", full_disk)
    with pytest.warns(UserWarning, match=r"No space left on device; the fit stops here") as w:
        state = learn.fit_stages(PLAN)[-1]
    assert len(w) == 1 and "\n" not in str(w[0].message)
    assert state.status == "stopped" and not list(learn.checkpoints.folder.glob("*"))
    monkeypatch.undo()
    learn.checkpoint_dir = False
    assert learn.fit_cycles(0.05).status == "done"  # the learner goes on


# ---------------------------------------------------------------- what a review found
def test_a_stop_at_an_epochs_last_batch_resumes_bit_for_bit(reference, tmp_path):
    # The loader must still run out after the last batch: its RandomSampler draws once
    # more from the loader's generator then.
    ref_weights, ref_losses = reference
    run = new_learner(tmp_path / "run")

    class StopAtLastBatch:
        def on_batch_end(self, state):
            if state.stage == 0 and state.it == 8:  # the last batch of the first epoch
                run.request_stop()

    run.fit_stages(PLAN, listeners=[StopAtLastBatch()])
    assert run.fits[-1].status == "stopped"
    resumed = resume_elsewhere(run.checkpoints.folder, tmp_path)
    assert same(weights(resumed), ref_weights)
    assert losses(resumed) == ref_losses


def test_a_second_interrupt_inside_a_step_is_raised_after_the_position_is_whole(
    reference, tmp_path
):
    import signal

    ref_weights, _ = reference
    run = new_learner(tmp_path / "run")
    step, steps = run.opt.step, []

    def step_interrupted_twice(*args, **kwargs):
        out = step(*args, **kwargs)
        steps.append(1)
        if len(steps) == 11:  # the guard holds the second interrupt until the step is whole
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return out

    run.opt.step = step_interrupted_twice
    with pytest.raises(KeyboardInterrupt, match="interrupted twice"):
        run.fit_stages(PLAN)
    run.opt.step = step
    assert read_checkpoint(run.last_checkpoint)["position"]["it"] == 11 == len(steps)
    resumed = resume_elsewhere(run.checkpoints.folder, tmp_path)
    assert same(weights(resumed), ref_weights)


def test_an_interrupt_in_an_epoch_end_handler_records_the_epoch_once(reference, tmp_path):
    ref_weights, ref_losses = reference

    class InterruptAtEpochEnd:
        def on_epoch_end(self, state):
            if state.stage == 1 and state.epoch == 0:
                raise KeyboardInterrupt("in a handler")

    run = new_learner(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN, listeners=[InterruptAtEpochEnd()])
    run.resume()  # the same kernel
    assert same(weights(run), ref_weights)
    assert losses(run) == ref_losses  # no epoch twice
    assert [s.status for s in run.fits] == ["done", "done"]


def test_a_resumed_run_goes_on_with_the_same_fit(reference, tmp_path):
    # In the same kernel the interrupted stage's state is replaced, not followed by a new
    # one: the history has each epoch once, the snapshots one fit per stage.
    _, ref_losses = reference
    run = new_learner(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run.fit_stages(PLAN, listeners=[Interrupt(21, "batch_end")])
    run.resume()
    assert [s.stage for s in run.fits] == [0, 1] and [s.fit for s in run.fits] == [0, 1]
    assert losses(run) == ref_losses
    assert [(s.fit, s.cycle) for s in run.snapshots] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    three, _ = run.snapshot_ensemble(2)  # stage 2's two cycle ends
    default, _ = run.snapshot_ensemble()
    assert torch.equal(default, three)


def test_two_learners_in_one_folder_resume_their_own_runs(tmp_path):
    a, b = new_learner(tmp_path), new_learner(tmp_path, init_seed=5)
    with pytest.raises(KeyboardInterrupt):
        a.fit_stages(PLAN, listeners=[Interrupt(13, "batch_end")])
    b.fit_stages([Stage(0.01, cycles=3)])  # another run, in the same models/resume
    with pytest.raises(KeyboardInterrupt):
        b.fit_stages([Stage(0.01, cycles=3)], listeners=[Interrupt(5, "batch_end")])
    point = a.resume_point()
    assert point.plan.stages == tuple(PLAN) and point.start.it == 14  # after iteration 13
    reference = new_learner(tmp_path / "reference")
    reference.fit_stages(PLAN)
    a.resume()
    assert same(weights(a), weights(reference))
    assert b.resume_point().start.it == 6  # b's run is still there


def test_values_from_numpy_in_the_learners_source_still_load(tmp_path):
    import numpy as np

    learn = new_learner(tmp_path)
    learn.source = {"from": "mine", "dropout": np.float64(0.25), "sizes": (np.int64(3),)}
    with pytest.raises(KeyboardInterrupt):
        learn.fit_stages(PLAN, listeners=[Interrupt(3, "batch_end")])
    payload = read_checkpoint(learn.last_checkpoint)
    assert payload["source"] == {"from": "mine", "dropout": 0.25, "sizes": [3]}
    learn.resume()


def test_fit_cycles_resume_true_and_what_cannot_go_with_it(tmp_path):
    learn = new_learner(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        learn.fit_cycles(0.1, cycles=3, listeners=[Interrupt(9, "batch_end")])
    with pytest.raises(ValueError, match="cycles cannot be given with it"):
        learn.fit_cycles(cycles=2, resume=True)
    state = learn.fit_cycles(resume=True)
    assert state.status == "done" and state.it == state.total_iters
    with pytest.raises(ValueError, match="fit_cycles needs a rate"):
        learn.fit_cycles()
