"""Views in plain pytest: widgets on the no-op comm, acted on through traits and twins.

Every click has a programmatic twin (``plot.pick``, ``panel.toggle``, ``view.stop``) and
the widget message a browser would send is replayed where it matters (``_handle_msg``).
The text view is driven by the same fit loop events.
"""

from __future__ import annotations

import base64
import io
import math

import pytest
import torch
import traitlets
from torch.utils.data import DataLoader

from nbtrain.core import DataLoaders, Learner
from nbtrain.core.lr_range import LRRangeResult
from nbtrain.core.schedules import SGDRSchedule
from nbtrain.core.state import EpochRecord, TrainState
from nbtrain.views import frontend
from nbtrain.views.format import fmt_seconds, plan_summary, text_table
from nbtrain.views.freeze_panel import FreezePanel, LayersReport, refresh_panels
from nbtrain.views.lr_plot import LRFinderPlot, LRFinderReport
from nbtrain.views.progress import ProgressView
from nbtrain.views.text import TextProgress
from tests.core.conftest import make_mlp, xor_data

PNG = b"\x89PNG"


def custom_msg(widget, content) -> None:
    """Deliver a front end's custom widget message, as the kernel does for a comm_msg."""
    widget._handle_msg(
        {"content": {"data": {"method": "custom", "content": content}}, "buffers": []}
    )


@pytest.fixture
def learn(tmp_path) -> Learner:
    torch.manual_seed(0)
    train = DataLoader(xor_data(64, seed=0), batch_size=16, shuffle=True)
    valid = DataLoader(xor_data(32, seed=1), batch_size=32)
    return Learner(make_mlp(), DataLoaders(train, valid), device="cpu", path=tmp_path)


def synthetic_result(n: int = 60) -> LRRangeResult:
    """A range test's typical curve: flat, falling, then diverging."""
    lrs = [1e-6 * (1e6) ** (i / (n - 1)) for i in range(n)]
    losses = [
        1.0 - 0.6 / (1 + math.exp(-(math.log10(lr) + 3) * 3)) + (lr > 0.1) * lr * 3 for lr in lrs
    ]
    return LRRangeResult(
        lrs=lrs,
        losses=losses,
        raw_losses=losses,
        group_lrs=[(lr,) for lr in lrs],
        stop_reason="diverged",
    )


# ------------------------------------------------------------------- LR finder
def test_lr_plot_preselects_the_suggestion_and_writes_it():
    result, ns = synthetic_result(), {}
    plot = LRFinderPlot(result, namespace=ns, into="my_lr")
    assert plot.suggestion == result.suggestion is not None
    assert plot.selected_lr == result.suggestion == ns["my_lr"]
    assert plot.picked_by == "valley"
    assert plot.image.value.tobytes().startswith(PNG)
    assert "nbtrain-lr-finder" in plot._dom_classes
    assert "nbtrain-lr-plot" in plot.image._dom_classes


def test_pick_snaps_to_the_sweep_and_lands_in_the_namespace_at_once():
    result, ns = synthetic_result(), {}
    plot = LRFinderPlot(result, namespace=ns)
    picked = plot.pick(1.01e-3)
    assert picked in result.lrs
    assert ns["lr"] == picked == plot.selected_lr
    assert min(result.lrs, key=lambda lr: abs(math.log(lr / 1.01e-3))) == picked
    plot.selected_lr = 2e-2  # the trait itself is the state: also snapped, also written
    assert plot.selected_lr in result.lrs and ns["lr"] == plot.selected_lr
    assert "picked on the plot" in plot.picked.value or plot.picked_by != "click"
    with pytest.raises(traitlets.TraitError):
        plot.selected_lr = -1.0
    assert ns["lr"] == plot.selected_lr


def test_a_click_on_the_image_picks_the_rate_under_it():
    result, ns = synthetic_result(), {}
    plot = LRFinderPlot(result, namespace=ns)
    target = result.lrs[40]
    x, y = plot.pixel_of(target)
    custom_msg(plot._events, {"event": "click", "arrayX": x, "arrayY": y})  # what ipyevents sends
    assert plot.selected_lr == target == ns["lr"]
    # one CSS pixel off (Chromium rounds the mouse position) still picks a neighbour
    assert plot.click_at(round(x) + 0.5, y) in result.lrs[39:42]
    before = plot.selected_lr
    assert plot.click_at(2, y) is None  # the left margin: nothing changes
    assert plot.selected_lr == before


def test_use_suggestion_button_takes_the_default_back():
    result, ns = synthetic_result(), {}
    plot = LRFinderPlot(result, namespace=ns)
    plot.pick(result.lrs[5])
    plot.use_button.click()
    assert plot.selected_lr == result.suggestion == ns["lr"]
    plot.pick(result.lrs[5])
    assert plot.use_suggestion() == result.suggestion


def test_lr_plot_without_a_suggestion_leaves_the_variable_alone():
    result = LRRangeResult(
        lrs=[1e-5, 1e-4],
        losses=[1.0, float("nan")],
        raw_losses=[1.0, 1.0],
        group_lrs=[(1e-5,), (1e-4,)],
        stop_reason="not finite",
    )
    ns = {"lr": 0.5}
    plot = LRFinderPlot(result, namespace=ns)
    assert plot.selected_lr is None and plot.use_button.disabled
    assert ns == {"lr": 0.5}
    assert "click the plot" in plot.picked.value


def test_lr_plot_and_report_bundles_have_text_and_png():
    result = synthetic_result()
    plot = LRFinderPlot(result, namespace={}, into="lr")
    bundle = plot._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == plot.model_id
    text = bundle["text/plain"]
    assert "suggestions: valley" in text and "stored in `lr`" in text
    assert base64.b64decode(bundle["image/png"]).startswith(PNG)
    report = LRFinderReport(result, result.suggestion, "lr")._repr_mimebundle_()
    assert set(report) == {"text/plain", "image/png"}
    assert f"lr = {result.suggestion:.2e}" in report["text/plain"]


def test_lr_plot_does_not_touch_pyplot():
    import matplotlib

    backend = matplotlib.get_backend()
    LRFinderPlot(synthetic_result(), namespace={})
    assert matplotlib.get_backend() == backend
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


# --------------------------------------------------------------- freeze panel
def test_freeze_panel_rows_and_toggle_twin(learn):
    momentum_opt = learn.opt
    panel = FreezePanel(learn)
    assert "nbtrain-freeze-panel" in panel._dom_classes
    assert panel.trainable == [True, True, True] == learn.trainable
    assert len(panel.toggles) == 3
    assert panel.toggle(0) is False
    assert learn.trainable == [False, True, True] == panel.trainable
    assert not any(p.requires_grad for p in learn.groups[0].params)
    assert panel.toggles[0].value is False and panel.toggles[0].description == "frozen"
    assert panel.labels[0][4].value == "eval"  # frozen group's BatchNorm keeps its stats
    assert learn.opt is momentum_opt  # the optimizer is never rebuilt
    assert "1 of 3 groups frozen" in panel.summary


def test_freeze_panel_toggle_widget_acts_like_a_click(learn):
    panel = FreezePanel(learn)
    panel.toggles[1].value = False  # what the browser's ToggleButton sends
    assert learn.trainable == [True, False, True]
    panel.unfreeze_button.click()
    assert learn.trainable == [True, True, True]
    panel.freeze_button.click()
    assert learn.trainable == [False, False, True] == panel.trainable
    panel.freeze_to(1)
    assert learn.trainable == [False, True, True]


def test_freeze_panel_bn_freeze_checkbox(learn):
    panel = FreezePanel(learn)
    panel.bn_toggle.value = True  # the checkbox, as clicked
    assert learn.bn_frozen and panel.bn_frozen
    assert [row[4].value for row in panel.labels] == ["eval", "eval", "-"]
    panel.set_bn_frozen(False)
    assert not learn.bn_frozen and panel.bn_toggle.value is False
    assert [row[4].value for row in panel.labels] == ["train", "train", "-"]


def test_freeze_panel_refuses_while_a_fit_runs(learn):
    panel = FreezePanel(learn)
    learn._running = TrainState(schedule=learn.plan(0.1))  # as inside fit_cycles
    try:
        panel.refresh()
        assert panel.busy and panel.toggles[0].disabled
        with pytest.raises(ValueError, match="a fit is running"):
            panel.toggle(0)
        panel.toggles[0].value = False  # a stale click from the browser
        assert learn.trainable == [True, True, True] and panel.toggles[0].value is True
    finally:
        learn._running = None


def test_live_panels_follow_changes_made_elsewhere(learn):
    panel = FreezePanel(learn)
    learn.freeze()
    refresh_panels(learn)
    assert panel.trainable == [False, False, True]
    learn.fit_cycles(0.05, 1)
    panel.refresh()
    assert panel.labels[2][5].value == "1"  # rate multiplier of the last fit
    assert "head" in LayersReport(learn)._repr_mimebundle_()["text/plain"]


# ------------------------------------------------------------- progress view
def test_progress_view_follows_a_fit(learn):
    plan = learn.plan(0.05, 2, 1, 2)  # 1 + 2 epochs
    view = ProgressView([plan], learn=learn)
    assert view.total_iters == plan.total_iters and view.epochs == 3 and view.cycles == 2
    assert view.plot.value.tobytes().startswith(PNG)  # the planned curve, before the first batch
    state = learn.fit_cycles(0.05, 2, 1, 2, listeners=[view])
    assert view.status == "running" or view.status == "done"
    line = view.finish()
    assert view.status == "done" and line.startswith("done: 3 epochs")
    assert view.it == plan.total_iters == state.it
    assert view.epoch == 3 and view.cycle == 2 and view.eta == 0
    assert [r["epoch"] for r in view.rows] == [1, 2, 3]
    assert view.rows[-1]["valid_loss"] == pytest.approx(state.history[-1].valid_loss)
    assert view.lrs == state.lrs
    assert "<table" in view.table.value and "accuracy" in view.table.value
    assert view.bar.value == view.bar.max == plan.total_iters
    assert view.stop_button.layout.display == "none"
    bundle = view._repr_mimebundle_()
    assert "train_loss" in bundle["text/plain"] and "done: 3 epochs" in bundle["text/plain"]
    assert base64.b64decode(bundle["image/png"]).startswith(PNG)


def test_stop_button_ends_the_fit_at_a_batch_boundary(learn):
    view = ProgressView([learn.plan(0.05, 3)], learn=learn)

    class ClickAt:  # the click arrives while batch 3 trains
        def on_batch_start(self, state):
            if state.it == 2:
                custom_msg(view.stop_button, {"event": "click"})

    state = learn.fit_cycles(0.05, 3, listeners=[view, ClickAt()])
    assert view.stop_requested and state.status == "stopped" and state.it == 3
    assert view.finish().startswith("stopped: stopped after iteration 3/")
    assert learn.fit_cycles(0.05, 1).status == "done"  # the learner is consistent


def test_stop_before_a_stage_starts_stops_it_at_once(learn):
    view = ProgressView([learn.plan(0.05, 2)], learn=learn)
    view.stop()
    state = learn.fit_cycles(0.05, 2, listeners=[view])
    assert state.status == "stopped" and state.it == 1


def test_multi_stage_counts_run_wide(learn):
    plans = [learn.plan(0.05, 1), learn.plan(0.01, 2)]
    view = ProgressView(plans, labels=["head", "all"], learn=learn)
    assert view.stages == 2 and view.total_iters == sum(p.total_iters for p in plans)
    learn.fit_cycles(0.05, 1, listeners=[view])
    learn.fit_cycles(0.01, 2, listeners=[view])
    view.finish()
    assert view.stage == 2 and view.it == view.total_iters
    assert [(r["stage"], r["epoch"], r["cycle"]) for r in view.rows] == [
        (1, 1, 1),
        (2, 2, 2),
        (2, 3, 3),
    ]
    assert ">stage</th>" in view.table.value
    assert "stage 1: head; stage 2: all" in view.text()


def test_a_fit_beyond_the_plan_is_appended(learn):
    view = ProgressView(learn=learn)
    learn.fit_cycles(0.05, 1, listeners=[view])
    assert view.stages == 1 and view.total_iters == learn.fits[-1].total_iters


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_state(plan: SGDRSchedule, it: int, elapsed: float) -> TrainState:
    state = TrainState(schedule=plan)
    state.it, state.elapsed, state.lrs, state.smooth_loss = it, elapsed, plan.lrs_at(it), 0.5
    return state


def run_batches(view: ProgressView, clock: ManualClock, plan: SGDRSchedule, seconds: float):
    view.on_fit_start(fake_state(plan, 0, 0.0))
    for it in range(1, int(seconds / 0.01) + 1):  # batches of 10 ms
        clock.now = it * 0.01
        view.on_batch_end(fake_state(plan, it, it * 0.01))


def test_labels_and_plot_are_throttled():
    plan = SGDRSchedule(lrs=(0.1,), iters_per_epoch=10_000, cycles=1)
    clock = ManualClock()
    view = ProgressView(
        [plan], clock=clock, cpu_clock=clock, label_interval=0.25, plot_interval=2.0
    )
    labels = []
    view.label.observe(lambda change: labels.append(change["new"]), names="value")
    run_batches(view, clock, plan, 50.0)
    assert 195 <= len(labels) <= 201  # every 0.25 s, not every batch
    assert 24 <= view.redraws - 1 <= 25  # every 2 s (drawing costs nothing on this clock)
    assert 5000 - 25 <= view.it < 5000  # labels lag by at most 0.25 s...
    view.on_fit_end(fake_state(plan, 5000, 50.0))
    assert view.it == 5000 and view.bar.value == 5000  # ...and are exact at the end


def test_plot_redraws_stay_within_one_percent(monkeypatch):
    plan = SGDRSchedule(lrs=(0.1,), iters_per_epoch=10_000, cycles=1)
    clock = ManualClock()
    view = ProgressView([plan], clock=clock, cpu_clock=clock)
    png = type(view._figure).png

    def slow_png(self, *args):  # a render that costs 50 ms of the clock
        clock.now += 0.05
        return png(self, *args)

    monkeypatch.setattr(type(view._figure), "png", slow_png)
    run_batches(view, clock, plan, 60.0)
    # Throttled draw n (after the one at fit start) waits until the n - 1 draws before it
    # plus 1.5 draws of headroom fit in 0.75 of the 1% budget: 0.05 (n - 1) + 0.075 <=
    # 0.0075 t, so t >= 10 s, 16.7 s, ... 56.7 s: 8 draws in 60 s, not the 30 that
    # plot_interval=2 would allow.
    assert view.redraws - 1 == 8
    assert view.display_seconds == pytest.approx(8 * 0.05)
    assert view.display_seconds <= 0.01 * 60


def test_notes_are_one_line_each():
    view = ProgressView([SGDRSchedule(lrs=(0.1,), iters_per_epoch=2)])
    view.note("precompute is on, so augmentation has no effect")
    view.note("precompute is on, so augmentation has no effect")
    assert view.notes == ["precompute is on, so augmentation has no effect"]
    assert view.notes_html.value.count("&#9888;") == 1


# ------------------------------------------------------------------ text view
def test_text_view_prints_a_line_per_epoch(learn):
    out = io.StringIO()
    view = TextProgress([learn.plan(0.05, 2, 1, 2)], stream=out, live=False)
    learn.fit_cycles(0.05, 2, 1, 2, listeners=[view])
    view.finish()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("fit_cycles 2 cycles of 1 + 2 epochs = 3 epochs")
    assert lines[1].split()[:4] == ["epoch", "cycle", "train_loss", "valid_loss"]
    assert [line.split()[0] for line in lines[2:5]] == ["1", "2", "3"]
    assert lines[5].startswith("done: 3 epochs") and len(lines) == 6


def test_text_view_says_why_a_fit_stopped(learn):
    out = io.StringIO()
    view = TextProgress([learn.plan(0.05, 2)], stream=out, live=False)

    class StopAt:
        def on_batch_end(self, state):
            if state.it == 2:
                state.request_stop()

    learn.fit_cycles(0.05, 2, listeners=[view, StopAt()])
    view.finish()
    assert out.getvalue().splitlines()[-1].startswith("stopped: stopped after iteration 2/")


def test_text_view_in_a_kernel_updates_one_display(learn, monkeypatch):
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj.text()))

    def display(obj, display_id=False):
        shown.append(("display", obj.text()))
        return Handle()

    monkeypatch.setattr("IPython.display.display", display)
    view = TextProgress([learn.plan(0.05, 1)], live=True, status_interval=0.0)
    learn.fit_cycles(0.05, 1, listeners=[view])
    view.finish()
    assert [kind for kind, _ in shown].count("display") == 1
    final = shown[-1][1]
    assert final.splitlines()[0].startswith("fit_cycles 1 cycle") and "done: 1 epoch" in final
    assert any("it 1/4" in text for _, text in shown)  # the throttled status line


# ------------------------------------------------------------------ front end
def test_front_end_is_chosen_per_display(monkeypatch):
    class KernelShell:
        kernel = object()

    monkeypatch.delenv(frontend.ENV_VAR, raising=False)
    frontend.set_mode(None)
    assert frontend.use_widgets(KernelShell()) and not frontend.use_widgets(object())
    monkeypatch.setenv(frontend.ENV_VAR, "text")
    assert not frontend.use_widgets(KernelShell())
    assert "forced by $NBTRAIN_FRONTEND" in frontend.describe(KernelShell())
    try:
        frontend.set_mode("widgets")  # %nbtrain_config wins over the variable
        assert frontend.use_widgets(object())
        frontend.set_mode("auto")
        assert not frontend.use_widgets(KernelShell())
        with pytest.raises(ValueError, match="front end must be one of"):
            frontend.set_mode("gui")
    finally:
        frontend.set_mode(None)


def test_formatting_helpers():
    assert fmt_seconds(7.4) == "0:07" and fmt_seconds(3723) == "1:02:03"
    assert fmt_seconds(None) == "--"
    plan = SGDRSchedule(lrs=(0.1,), iters_per_epoch=8, cycles=3, cycle_mult=2)
    assert plan_summary(plan).startswith("3 cycles of 1 + 2 + 4 epochs = 7 epochs, 56 iterations")
    assert text_table(["a", "bb"], [["1", "2"]]) == "a  bb\n1   2"


def test_the_final_line_names_the_best_cycle_end_as_the_learner_ranks_it(learn):
    plans = [learn.plan(0.3, 2), learn.plan(0.02, 2)]
    view = TextProgress(plans, labels=["head", "all"], stream=io.StringIO(), live=False)
    for plan in plans:
        learn.fit_cycles(plan.lrs, plan.cycles, listeners=[view])
    line = view.finish()
    best, last = learn.best_snapshot(), learn.snapshots[-1]
    assert len(view.tracker.cycle_ends) == len(learn.snapshots) == 4
    acc = f"{best.metrics['accuracy']:.4f}"
    if best is last:
        assert line.endswith(f"; best accuracy {acc}: the last cycle's end")
    else:
        stage, cycle = best.fit + 1, 2 * best.fit + best.cycle + 1  # run-wide, from 1
        assert line.endswith(
            f"; best accuracy {acc} at stage {stage}, cycle {cycle} (last "
            f"{last.metrics['accuracy']:.4f}): learn.load_snapshot(fit={best.fit}, "
            f"cycle={best.cycle})"
        )


def test_the_best_line_is_left_out_with_a_single_cycle_end(learn):
    view = TextProgress([learn.plan(0.05, 1)], stream=io.StringIO(), live=False)
    learn.fit_cycles(0.05, 1, listeners=[view])
    assert "best" not in view.finish()


def test_best_text_when_the_last_cycle_end_is_the_best():
    from nbtrain.views.format import best_text

    row = {"stage": 2, "cycle": 3, "fit": 1, "fit_cycle": 0, "accuracy": 0.99}
    assert best_text(row, row, metric="accuracy", stages=True) == (
        "best accuracy 0.9900: the last cycle's end"
    )
    first = {**row, "stage": 1, "cycle": 1, "fit": 0, "accuracy": 0.995}
    assert best_text(first, row, metric="accuracy", stages=False) == (
        "best accuracy 0.9950 at cycle 1 (last 0.9900): learn.load_snapshot(fit=0, cycle=0)"
    )


def test_a_resumed_run_shows_the_whole_plan_and_the_part_already_done(learn):
    from nbtrain.core import Stage

    stages = [Stage(0.05, cycles=1), Stage(0.01, cycles=2, cycle_mult=2)]  # 1 + 3 epochs

    class StopInStage2:
        def on_batch_end(self, state):
            if state.stage == 1 and state.it == 6:  # in its second epoch (4 batches each)
                learn.request_stop()

    learn.fit_stages(stages, listeners=[StopInStage2()])
    point = learn.resume_point()
    view = ProgressView(list(point.plan.schedules), learn=learn)
    learn.fit_stages(point, listeners=[view])
    view.finish()
    # stage 1's epoch and stage 2's first were done before; stage 2's last two run now
    assert [(r["stage"], r["epoch"]) for r in view.rows] == [(1, 1), (2, 2), (2, 3), (2, 4)]
    assert view.stage == 2 and view.it == view.total_iters == 16
    train_its = [it for it, _ in view._train]
    assert train_its[:2] == [4, 8]  # the epochs already done, one point each
    assert train_its[2] == 11  # then every batch from where the run went on (it 6 of stage 2)
    assert [it for it, _ in view._valid] == [4, 8, 12, 16]
    assert view.status == "done" and "done: 4 epochs" in view.text()


def test_losses_above_the_first_axis_show_by_the_first_epochs_end(monkeypatch):
    # Draws are dear on this clock (the budget allows none in the first epoch), and the
    # losses (2.3, a ten-class start) sit above the empty plot's 0-1 axis: the first
    # epoch's end draws them anyway, on an axis that holds them.
    plan = SGDRSchedule(lrs=(0.1,), iters_per_epoch=20, cycles=1, cycle_len=2)
    clock = ManualClock()
    view = ProgressView([plan], clock=clock, cpu_clock=clock)
    png = type(view._figure).png

    def slow_png(self, *args):
        clock.now += 0.05
        return png(self, *args)

    monkeypatch.setattr(type(view._figure), "png", slow_png)
    view.on_fit_start(fake_state(plan, 0, 0.0))
    start = view.redraws
    for it in range(1, 21):
        clock.now += 0.01
        state = fake_state(plan, it, clock.now)
        state.smooth_loss = 2.3 - 0.01 * it
        view.on_batch_end(state)
    assert view.redraws == start  # the budget held every frame back
    state.valid_loss, state.metrics, state.epoch = 2.25, {"accuracy": 0.1}, 0
    state.history.append(EpochRecord(0, 0, 2.2, 2.25, {"accuracy": 0.1}, 0.2, (0.1,)))
    view.on_epoch_end(state)
    assert view.redraws == start + 1
    bottom, top = view._figure.ax.get_ylim()
    assert bottom <= 2.1 and top >= 2.29  # every loss drawn so far is inside the axis


def test_the_loss_axis_follows_a_loss_that_jumps_up():
    plan = SGDRSchedule(lrs=(0.1,), iters_per_epoch=100, cycles=1)
    figure = ProgressView([plan])._figure
    falling = [(it, 1.0 - 0.005 * it) for it in range(60)]
    figure.png(falling, [], 60)
    figure.png([*falling, (60, 3.0)], [], 61)  # a restart's rate makes it jump
    assert figure.ax.get_ylim()[1] >= 3.0
