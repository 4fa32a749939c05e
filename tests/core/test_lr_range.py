import math
import os
import random
import re
import signal

import pytest
import torch

from nbtrain.core.lr_range import (
    LRRangeResult,
    suggest_minimum,
    suggest_slide,
    suggest_steepest,
    suggest_valley,
    sweep_lrs,
)

from .conftest import (
    StepRecorder,
    assert_same_optimizer,
    assert_same_state,
    model_state,
    optimizer_state,
)


def synthetic_curve(n: int = 100):
    """Flat until 30, falls (steepest near 50) until 70, then rises sharply."""
    lrs = [1e-7 * (1e8) ** (i / (n - 1)) for i in range(n)]
    losses = []
    for i in range(n):
        if i < 30:
            losses.append(2.0)
        elif i < 70:
            losses.append(1.2 + 0.4 * (1 + math.cos(math.pi * (i - 30) / 40)))
        else:
            losses.append(1.2 + 0.3 * (i - 70) ** 1.5)
    return lrs, losses


def test_sweep_is_exponential_and_keeps_group_ratios():
    rates = sweep_lrs([1e-6, 1e-5, 1e-4], 10.0, 5)
    assert rates[0] == pytest.approx((1e-6, 1e-5, 1e-4))
    assert rates[-1] == pytest.approx((0.1, 1.0, 10.0))
    for r in rates:
        assert r[1] / r[0] == pytest.approx(10) and r[2] / r[1] == pytest.approx(10)
    last = [r[-1] for r in rates]
    assert last == pytest.approx([1e-4 * (1e5) ** (i / 4) for i in range(5)])
    with pytest.raises(ValueError, match="0 < start < end"):
        sweep_lrs([1.0], 0.5, 10)


def test_suggestion_rules_on_a_made_up_curve():
    lrs, losses = synthetic_curve()
    valley = suggest_valley(lrs, losses)
    # the valley is the falling stretch 30..70; the rule picks about half-way down it
    assert lrs[40] <= valley <= lrs[60]
    steep = suggest_steepest(lrs, losses)
    assert lrs[45] <= steep <= lrs[55]
    minimum = suggest_minimum(lrs, losses)
    assert minimum == pytest.approx(lrs[70] / 10)
    slide = suggest_slide(lrs, losses)
    assert slide is not None and lrs[10] <= slide <= lrs[94]


def test_valley_skips_a_flat_start_that_still_creeps_down():
    # Flat but creeping down for 50 points, then a clear fall, then a rise.
    n = 100
    lrs = [1e-7 * 1e8 ** (i / (n - 1)) for i in range(n)]
    losses = [0.7 - 0.0002 * i for i in range(50)]
    losses += [losses[-1] - 0.4 * (i / 30) for i in range(1, 31)]
    losses += [losses[-1] + 0.05 * i for i in range(1, 21)]
    ours = suggest_valley(lrs, losses)
    fastai = suggest_valley(lrs, losses, clear_drop=0.0)
    assert lrs[52] <= ours <= lrs[75]  # inside the clear fall
    assert fastai < lrs[50]  # fastai's rule lands in the flat part


def test_suggestions_ignore_the_part_after_a_nan_and_need_points():
    lrs, losses = synthetic_curve()
    cut = losses[:60] + [math.nan] * 40
    assert suggest_minimum(lrs, cut) < lrs[60] / 10
    assert suggest_valley([1e-3], [1.0]) is None
    assert suggest_steepest([], []) is None


def test_result_reports_rules_and_notes():
    lrs, losses = synthetic_curve()
    result = LRRangeResult(lrs, losses, losses, [(lr,) for lr in lrs], "diverged")
    assert result.suggestion == result.suggestions["valley"]
    assert set(result.suggestions) == {"valley", "steep", "minimum", "slide"}
    assert result.notes == []
    flat = LRRangeResult(lrs[:12], [1.0] * 12, [1.0] * 12, [], "end")
    assert any("only" in n for n in flat.notes) and any("flat" in n for n in flat.notes)
    # a loss that falls little (17% after the trimmed start), then rises: the note says by how
    # much and from where to where, and guesses nothing (a random head gave such curves too)
    low = [0.06 - 0.012 * i / 59 for i in range(60)] + [0.048 * 1.1**i for i in range(40)]
    good = LRRangeResult(lrs, low, low, [], "diverged")
    [note] = good.notes
    assert re.fullmatch(
        r"the loss falls only 17% \(0\.0\d+ -> 0\.048\) before it rises, so the suggestion "
        r"is rough",
        note,
    ), note
    rising = [0.5 * 1.05**i for i in range(100)]  # start too high: no fall at all
    assert LRRangeResult(lrs, rising, rising, [], "diverged").notes == []
    slow = [1.0 - 0.002 * i for i in range(100)]  # a slow fall that never turns
    assert LRRangeResult(lrs, slow, slow, [], "end").notes == [
        "the loss never rose at the end; raise end to see where it diverges"
    ]
    cut = LRRangeResult(lrs[:60], low[:60], low[:60], [], "interrupted")
    assert not any("falls only" in note for note in cut.notes)


def _rng_fingerprint():
    return torch.get_rng_state().clone(), random.getstate()


def _train_a_bit(learn):
    learn.fit_cycles(0.05, cycles=1)  # momentum buffers and BN statistics exist


def test_lr_find_leaves_everything_bit_for_bit(learn):
    _train_a_bit(learn)
    learn.freeze_to(1)
    before, opt_before = model_state(learn.model), optimizer_state(learn.opt)
    grads_flags = [p.requires_grad for p in learn.model.parameters()]
    torch_rng, py_rng = _rng_fingerprint()
    result = learn.lr_find(iters=40)
    assert len(result.lrs) >= 20 and result.suggestion is not None
    assert_same_state(before, model_state(learn.model))
    assert_same_optimizer(opt_before, optimizer_state(learn.opt))
    assert [p.requires_grad for p in learn.model.parameters()] == grads_flags
    assert torch.equal(torch.get_rng_state(), torch_rng) and random.getstate() == py_rng
    assert all(p.grad is None for p in learn.model.parameters())


def test_lr_find_restores_after_keyboard_interrupt(learn):
    _train_a_bit(learn)
    before, opt_before = model_state(learn.model), optimizer_state(learn.opt)
    torch_rng, _ = _rng_fingerprint()

    def interrupt(i, lr, loss):
        if i == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn.lr_find(iters=50, on_step=interrupt)
    assert_same_state(before, model_state(learn.model))
    assert_same_optimizer(opt_before, optimizer_state(learn.opt))
    assert torch.equal(torch.get_rng_state(), torch_rng)


def test_lr_find_restores_after_a_real_sigint(learn):
    before = model_state(learn.model)
    steps = []

    def interrupt(i, lr, loss):
        steps.append(i)
        if i == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="as before"):
        learn.lr_find(iters=50, on_step=interrupt)
    assert steps[-1] == 5  # stopped at the next batch boundary, not later
    assert_same_state(before, model_state(learn.model))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_lr_find_stops_on_nan_and_restores(learn):
    _train_a_bit(learn)
    before, opt_before = model_state(learn.model), optimizer_state(learn.opt)
    calls = {"n": 0}
    ce = torch.nn.functional.cross_entropy

    def poisoned(logits, y):
        calls["n"] += 1
        loss = ce(logits, y)
        return loss * math.nan if calls["n"] == 12 else loss

    learn.loss_fn = poisoned
    result = learn.lr_find(iters=50)
    assert result.stop_reason == "not finite"
    assert len(result.lrs) == 11 and math.isnan(result.raw_losses[-1])
    assert_same_state(before, model_state(learn.model))
    assert_same_optimizer(opt_before, optimizer_state(learn.opt))


def test_lr_find_restores_when_the_model_fails(learn):
    before = model_state(learn.model)
    calls = {"n": 0}
    ce = torch.nn.functional.cross_entropy

    def broken(logits, y):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")
        return ce(logits, y)

    learn.loss_fn = broken
    with pytest.raises(RuntimeError, match="boom"):
        learn.lr_find(iters=20)
    assert_same_state(before, model_state(learn.model))


def test_lr_find_loops_small_data_and_keeps_ratios(learn, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recorder = StepRecorder(learn.opt)
    result = learn.lr_find(start=[1e-6, 1e-5, 1e-4], end=1e-2, iters=30)  # 8 batches/epoch
    assert result.stop_reason == "end"
    assert len(result.lrs) == 30 and len(recorder.lrs) == 30
    for used in recorder.lrs:
        assert used[1] / used[0] == pytest.approx(10) and used[2] / used[1] == pytest.approx(10)
    assert recorder.lrs[0] == pytest.approx((1e-6, 1e-5, 1e-4))
    assert recorder.lrs[-1][2] == pytest.approx(1e-2)
    assert result.group_suggestion()[2] == pytest.approx(result.suggestion)
    assert list(tmp_path.iterdir()) == []  # no temporary files


def test_lr_find_stops_when_the_loss_diverges(learn):
    result = learn.lr_find(start=1e-4, end=1e4, iters=100)
    assert result.stop_reason in {"diverged", "not finite"}
    assert len(result.lrs) < 100


def test_lr_find_is_repeatable_with_a_seed(learn):
    a = learn.lr_find(iters=30, seed=3)
    b = learn.lr_find(iters=30, seed=3)
    assert a.raw_losses == b.raw_losses


def test_lr_find_rejects_bad_arguments(learn):
    with pytest.raises(ValueError, match="got 2 learning rates for 3 layer groups"):
        learn.lr_find(start=[1e-7, 1e-6])
    with pytest.raises(ValueError, match="iters must be an integer >= 2"):
        learn.lr_find(iters=1)
    with pytest.raises(ValueError, match="0 < start < end"):
        learn.lr_find(start=1.0, end=0.1)
    for g in range(3):
        learn.set_trainable(g, False)
    with pytest.raises(ValueError, match="frozen"):
        learn.lr_find()
