import itertools
import math

import pytest

from nbtrain.core.schedules import (
    SGDRSchedule,
    cycle_epochs,
    resolve_lrs,
    sgdr_lr,
    spread_lrs,
)

from .conftest import StepRecorder


def closed_form(lr_max: float, t: int, period: int) -> float:
    return lr_max / 2 * (1 + math.cos(math.pi * t / period))


@pytest.mark.parametrize(
    ("it", "t", "period"),
    [(0, 0, 20), (5, 5, 20), (10, 10, 20), (19, 19, 20), (20, 0, 20), (33, 13, 20), (59, 19, 20)],
)
def test_cycle_mult_1_restarts_every_cycle_len_epochs(it, t, period):
    lr = sgdr_lr(it, lr_max=0.1, iters_per_epoch=10, cycle_len=2, cycle_mult=1)
    assert lr == pytest.approx(closed_form(0.1, t, period), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("it", "t", "period"),
    # T0 = 10 iterations: cycles start at 0 (10 long), 10 (20 long), 30 (40 long), 70 (80).
    [
        (0, 0, 10),
        (9, 9, 10),
        (10, 0, 20),
        (20, 10, 20),
        (29, 19, 20),
        (30, 0, 40),
        (50, 20, 40),
        (69, 39, 40),
        (70, 0, 80),
        (149, 79, 80),
    ],
)
def test_cycle_mult_2_doubles_each_cycle(it, t, period):
    lr = sgdr_lr(it, lr_max=1.0, iters_per_epoch=5, cycle_len=2, cycle_mult=2)
    assert lr == pytest.approx(closed_form(1.0, t, period), rel=1e-12, abs=1e-15)


def test_cycle_mult_3_boundaries_are_exact():
    # T0 = 7: starts 0, 7, 28, 91, 280
    starts = [0, 7, 28, 91, 280]
    for prev, s in itertools.pairwise(starts):
        assert sgdr_lr(s, lr_max=2.0, iters_per_epoch=7, cycle_mult=3) == 2.0
        last = sgdr_lr(s - 1, lr_max=2.0, iters_per_epoch=7, cycle_mult=3)
        assert last == pytest.approx(closed_form(2.0, s - 1 - prev, s - prev))


def test_midpoint_is_half_and_min_floor():
    assert sgdr_lr(10, lr_max=1.0, iters_per_epoch=20) == pytest.approx(0.5)
    assert sgdr_lr(10, lr_max=1.0, iters_per_epoch=20, lr_min=0.2) == pytest.approx(0.6)


def test_epoch_counts():
    assert cycle_epochs(3, 1, 2) == [1, 2, 4]
    assert SGDRSchedule((0.1,), 10, cycles=3, cycle_len=1, cycle_mult=2).epochs == 7
    assert SGDRSchedule((0.1,), 10, cycles=4, cycle_len=2, cycle_mult=3).epochs == 80
    sched = SGDRSchedule((0.1,), 10, cycles=3, cycle_len=2, cycle_mult=1)
    assert (sched.epochs, sched.total_iters) == (6, 60)
    assert sched.cycle_starts == [0, 20, 40]
    assert sched.cycle_end_epochs == [1, 3, 5]


def test_schedule_differential_groups_follow_one_cosine():
    sched = SGDRSchedule((1e-4, 1e-3, 1e-2), iters_per_epoch=4, cycles=2, cycle_len=1, cycle_mult=2)
    assert sched.total_iters == 12
    for it in range(sched.total_iters):
        expected = sgdr_lr(it, lr_max=1.0, iters_per_epoch=4, cycle_mult=2)
        lrs = sched.lrs_at(it)
        assert lrs == pytest.approx((1e-4 * expected, 1e-3 * expected, 1e-2 * expected))
    assert sched.lrs_at(4) == pytest.approx((1e-4, 1e-3, 1e-2))  # the restart
    assert [sched.cycle_of(i) for i in (0, 3, 4, 11)] == [0, 0, 1, 1]
    assert len(sched.curve()) == 12
    with pytest.raises(ValueError, match="outside the plan"):
        sched.lrs_at(12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cycles": 0}, "cycles must be >= 1"),
        ({"cycles": -2}, "cycles must be >= 1"),
        ({"cycle_len": 1.5}, "cycle_len must be a whole number"),
        ({"cycle_mult": 0}, "cycle_mult must be >= 1"),
        ({"lrs": (float("nan"),)}, "finite"),
        ({"lrs": ()}, "at least one"),
    ],
)
def test_bad_plans_are_rejected(kwargs, message):
    args = {"lrs": (0.1,), "iters_per_epoch": 10} | kwargs
    with pytest.raises(ValueError, match=message):
        SGDRSchedule(**args)


def test_resolve_lrs():
    assert resolve_lrs(0.1, 3) == (0.1, 0.1, 0.1)
    assert resolve_lrs([1e-3, 1e-2, 0.1], 3) == (1e-3, 1e-2, 0.1)
    assert resolve_lrs(slice(1e-4, 1e-2), 3) == pytest.approx((1e-4, 1e-3, 1e-2))
    assert resolve_lrs(slice(None, 1e-2), 3) == pytest.approx((1e-3, 1e-3, 1e-2))
    with pytest.raises(ValueError, match="got 2 learning rates for 3 layer groups"):
        resolve_lrs([0.1, 0.2], 3)
    with pytest.raises(ValueError, match="must be a number"):
        resolve_lrs("fast", 3)
    with pytest.raises(ValueError, match="finite"):
        resolve_lrs([0.1, -1.0, 0.2], 3)


def test_spread_lrs_gives_3x_lower_per_earlier_group():
    assert spread_lrs(9e-2, 3) == pytest.approx([1e-2, 3e-2, 9e-2])
    assert spread_lrs(1e-2, 3, factor=10) == pytest.approx([1e-4, 1e-3, 1e-2])
    with pytest.raises(ValueError, match="factor"):
        spread_lrs(1e-2, 3, factor=0.5)


def test_optimizer_gets_exactly_the_scheduled_rates(learn):
    recorder = StepRecorder(learn.opt)
    lrs = [1e-3, 1e-2, 1e-1]
    state = learn.fit_cycles(lrs, cycles=2, cycle_len=1, cycle_mult=2)
    sched = state.schedule
    assert state.status == "done"
    assert len(recorder.lrs) == sched.total_iters == 3 * 8
    for it, used in enumerate(recorder.lrs):
        assert used == pytest.approx(sched.lrs_at(it), rel=1e-12)
    # restarts are visible in what the optimizer used
    assert recorder.lrs[8] == pytest.approx(tuple(lrs))
    assert recorder.lrs[7][2] < 0.01
