"""Stages as data: checked on construction and against a learner before anything runs,
planned once, and that one plan is what the loop follows and what views receive."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from nbtrain.core import Learner, Plan, Stage, StageError, plan_stages
from tests.core.conftest import (
    StepRecorder,
    TensorData,
    assert_same_state,
    make_mlp,
    model_state,
)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": 0.1, "cycles": 0}, "cycles must be >= 1, got 0"),
        ({"lr": 0.1, "cycle_len": 1.5}, "cycle_len must be a whole number, got 1.5"),
        ({"lr": 0.1, "cycle_mult": True}, "cycle_mult must be a whole number, got True"),
        ({"lr": 0.1, "size": 0}, "size must be >= 1, got 0"),
        ({"lr": 0.1, "precompute": "yes"}, "precompute must be True or False, got 'yes'"),
        ({"lr": "fast"}, "lr must be a number, a list of numbers or a slice, got 'fast'"),
        ({"lr": [0.1, "x"]}, "lr must be a number, a list of numbers or a slice"),
        ({"lr": 0.1, "seed": 0.5}, "seed must be a whole number, got 0.5"),
    ],
)
def test_a_bad_stage_is_one_line(values, message):
    with pytest.raises(ValueError) as err:
        Stage(**values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_stage_is_plain_data():
    stage = Stage([1e-3, 3e-3, 1e-2], cycles=3, cycle_mult=2, size=64, freeze_to=0, seed=1)
    assert stage.lr == (1e-3, 3e-3, 1e-2)  # a list becomes a tuple: hashable, comparable
    assert Stage(1) == Stage(1.0) and isinstance(Stage(1).lr, float)
    assert pickle.loads(pickle.dumps(stage)) == stage  # can go to another process
    text = json.dumps(stage.as_dict())  # and into a checkpoint
    assert Stage.from_dict(json.loads(text)) == stage
    sliced = Stage(slice(1e-4, 1e-2))
    assert Stage.from_dict(json.loads(json.dumps(sliced.as_dict()))) == sliced
    with pytest.raises(ValueError, match="unknown stage keys \\['cycle_lenn'\\]"):
        Stage.from_dict({"lr": 0.1, "cycle_lenn": 2})


def test_every_stage_is_checked_against_the_learner_before_anything_runs(learn):
    before = model_state(learn.model)
    trainable = learn.trainable
    good = Stage(0.1)
    for stages, message in [
        ([good, Stage([0.1, 0.2])], "stage 2: got 2 learning rates for 3 layer groups"),
        ([good, good, Stage(0.1, freeze_to=3)], "stage 3: freeze_to needs a group index in"),
        ([Stage(0.1, size=64)], "size needs image data; this learner's data (DataLoaders)"),
        ([good, Stage(0.1, precompute=True)], "stage 2: precompute is not possible here"),
    ]:
        with pytest.raises(StageError) as err:
            learn.fit_stages(stages)
        assert message in str(err.value)
        assert err.value.index == len(stages) - 1
    assert learn.fits == [] and learn.trainable == trainable
    assert_same_state(model_state(learn.model), before)


def test_the_freeze_state_is_followed_from_stage_to_stage(learn):
    for group in range(learn.n_groups):
        learn.set_trainable(group, False)
    with pytest.raises(StageError, match="stage 1: every layer group is frozen") as err:
        learn.plan_stages([Stage(0.1), Stage(0.1, freeze_to=0)])
    assert err.value.reason.startswith("every layer group is frozen")
    plan = learn.plan_stages([Stage(0.1, freeze_to=-1), Stage(0.1)])  # the first unfreezes one
    assert len(plan) == 2 and learn.trainable == [False, False, False]


def test_the_loop_follows_the_plan_that_every_view_receives(learn):
    stages = [Stage(0.1, cycles=2), Stage([0.01, 0.03, 0.1], cycles=2, cycle_mult=2, freeze_to=0)]
    plan = learn.plan_stages(stages)
    seen = []

    class Listener:
        def on_fit_start(self, state):
            seen.append((state.plan, state.stage, state.schedule, learn.trainable))

    steps = StepRecorder(learn.opt)
    states = learn.fit_stages(plan, listeners=[Listener()])
    assert [s.status for s in states] == ["done", "done"] and learn.fits == states
    assert [(p, i, s) for p, i, s, _ in seen] == [
        (plan, 0, plan.schedules[0]),
        (plan, 1, plan.schedules[1]),
    ]
    assert seen[0][0] is plan and seen[1][2] is plan.schedules[1]  # the same objects
    assert seen[1][3] == [True, True, True]  # the stage's unfreeze came first
    planned = [
        lr
        for schedule in plan.schedules
        for it in range(schedule.total_iters)
        for lr in schedule.lrs_at(it)
    ]
    trained = [lr for lrs in steps.lrs for lr in lrs]
    assert trained == pytest.approx(planned, rel=1e-12)
    assert plan.total_iters * learn.n_groups == len(trained) and plan.epochs == 2 + 3


def test_a_plan_made_for_other_data_is_refused(learn, data):
    plan = learn.plan_stages([Stage(0.1)])
    other = Learner(make_mlp(), TensorData(512), device="cpu")  # 16 batches, not 8
    with pytest.raises(ValueError, match="the plan no longer fits this learner"):
        other.fit_stages(plan)
    assert other.fits == []
    assert isinstance(plan, Plan) and plan_stages(learn, plan.stages) == plan


def test_stop_between_two_stages_ends_the_run(learn):
    class StopAfterFirst:
        def on_fit_end(self, state):
            if state.stage == 0:
                assert learn.request_stop() is True  # the run is still going

    states = learn.fit_stages([Stage(0.1), Stage(0.1), Stage(0.1)], listeners=[StopAfterFirst()])
    assert [s.status for s in states] == ["done"] and len(learn.fits) == 1
    assert learn.request_stop() is False  # nothing runs any more


def test_stages_give_the_same_weights_as_fit_cycles_one_by_one(data, tmp_path):
    def learner():
        torch.manual_seed(0)
        return Learner(make_mlp(), data, device="cpu", path=tmp_path)

    by_stages = learner()
    by_stages.fit_stages(
        [Stage(0.1, cycles=2, seed=3), Stage([0.01, 0.03, 0.1], cycle_mult=2, cycles=2)]
    )
    by_calls = learner()
    by_calls.fit_cycles(0.1, cycles=2, seed=3)
    by_calls.fit_cycles([0.01, 0.03, 0.1], cycles=2, cycle_mult=2)
    assert_same_state(model_state(by_stages.model), model_state(by_calls.model))
    assert [s.schedule for s in by_stages.fits] == [s.schedule for s in by_calls.fits]
