"""The magics through a real IPython shell, and the Stop button through a real kernel."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time

import pytest
import torch
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from torch import nn
from torch.utils.data import DataLoader

from nbtrain.core import DataLoaders, Learner, cpu
from nbtrain.core.features import BodyHead, FeatureCache
from nbtrain.fit_job import run_async, transform_async_cells
from nbtrain.magics import last_view
from nbtrain.stages import split_tokens
from nbtrain.views import frontend
from nbtrain.views.freeze_panel import FreezePanel
from nbtrain.views.lr_plot import LRFinderPlot
from nbtrain.views.progress import ProgressView
from tests.core.conftest import (
    TensorData,
    assert_same_state,
    make_mlp,
    model_state,
    xor_data,
)


def small_data(*, augment: bool = False) -> TensorData:
    return TensorData(64, n_valid=32, augment=augment)


def body_head_learner(tmp_path, data=None) -> Learner:
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU()
    )
    model = BodyHead(body, nn.Linear(16, 2))
    learn = Learner(
        model,
        data or small_data(),
        layer_groups=[body[:2], body[2:], model.head],
        device="cpu",
        path=tmp_path,
    )
    learn.feature_cache = FeatureCache(tmp_path / "cache")
    learn.freeze()
    return learn


@pytest.fixture(autouse=True)
def _clean(ip, monkeypatch):
    monkeypatch.delenv(frontend.ENV_VAR, raising=False)
    frontend.set_mode("text")  # the shell has no kernel; tests that want widgets say so
    yield
    frontend.set_mode(None)
    for name in ("learn", "lr", "my_lr", "other"):
        ip.user_ns.pop(name, None)


@pytest.fixture
def learn(ip, tmp_path) -> Learner:
    torch.manual_seed(0)
    train = DataLoader(xor_data(64, seed=0), batch_size=16, shuffle=True)
    valid = DataLoader(xor_data(32, seed=1), batch_size=32)
    ip.user_ns["learn"] = learner = Learner(
        make_mlp(), DataLoaders(train, valid), device="cpu", path=tmp_path
    )
    return learner


def shown(out) -> str:
    """Everything a captured cell showed as text: printed lines and displayed objects."""
    return out.stdout + "".join(o.data.get("text/plain", "") + "\n" for o in out.outputs)


def snapshot(learn: Learner) -> tuple:
    return model_state(learn.model), list(learn.trainable), len(learn.fits), learn.precompute


def assert_unchanged(learn: Learner, before: tuple) -> None:
    weights, trainable, fits, precompute = before
    assert_same_state(model_state(learn.model), weights)
    assert (list(learn.trainable), len(learn.fits), learn.precompute) == (
        trainable,
        fits,
        precompute,
    )


# ------------------------------------------------------------- load / unload
def test_load_registers_and_unload_removes(ip):
    magics = ip.magics_manager.magics
    names = ("lr_find", "fit_cycles", "freeze", "unfreeze", "layers", "nbtrain_config")
    assert all(name in magics["line"] for name in names) and "fit_cycles" in magics["cell"]
    assert transform_async_cells in ip.input_transformers_cleanup
    ip.run_line_magic("unload_ext", "nbtrain")
    try:
        assert not any(name in magics["line"] for name in names)
        assert "fit_cycles" not in magics["cell"]
        assert transform_async_cells not in ip.input_transformers_cleanup
        assert "NbtrainMagics" not in ip.magics_manager.registry
        with pytest.raises(UsageError, match="not found"):
            ip.run_line_magic("lr_find", "learn")
    finally:
        ip.run_line_magic("load_ext", "nbtrain")
    assert "lr_find" in magics["line"]


def test_help_shows_the_usage(ip, capsys):
    ip.run_cell("%lr_find?")
    out = capsys.readouterr().out
    assert "%lr_find [--start LR] [--end LR] [--iters N] [--seed N] [--procs N]" in out
    assert "Run the LR range test" in out
    doc = ip.find_cell_magic("fit_cycles").__doc__
    assert "--cycle-mult M" in doc and "unfreeze lr=[lr/9, lr/3, lr]" in doc


# ----------------------------------------------------------------- %lr_find
def test_lr_find_sets_the_variable_named_by_into(ip, learn):
    before = model_state(learn.model)
    with capture_output() as out:
        ip.run_line_magic("lr_find", "learn --iters 20 --end 1 --into my_lr")
    view = last_view("lr_find", ip)
    assert ip.user_ns["my_lr"] == view.result.suggestion is not None
    assert "suggestions: valley" in shown(out) and "stored in `my_lr`" in shown(out)
    assert "image/png" in out.outputs[0].data  # the static plot
    assert_same_state(model_state(learn.model), before)  # the range test restores the model


def test_lr_find_widget_pick_updates_the_variable(ip, learn):
    frontend.set_mode("widgets")
    with capture_output():
        ip.run_line_magic("lr_find", 'learn --iters 20 --end 1 --start "1e-6"')
    plot = last_view("lr_find", ip)
    assert isinstance(plot, LRFinderPlot) and ip.user_ns["lr"] == plot.suggestion
    picked = plot.pick(1e-2)
    assert ip.user_ns["lr"] == picked and picked in plot.result.lrs


# -------------------------------------------------------------- UsageErrors
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("lern --lr 0.1", "no learner named 'lern' in the namespace; did you mean 'learn'?"),
        ("nothing --lr 0.1", "create one with nothing = Learner.pretrained(data)"),
        ("3 --lr 0.1", "'3' is not a variable name; give the name of a Learner"),
        ("learn --lr 0.1 --bogus 3", "unrecognized arguments: --bogus 3"),
        ("learn --lr [1e-3,1e-2]", "got 2 learning rates for 3 layer groups"),
        ("learn --lr [1e-3, 1e-2, 1e-1]", "quote an expression with spaces"),
        ("learn --lr 0.1 --cycles -1", "cycles must be >= 1, got -1"),
        ("learn --lr 0.1 --cycles 1.5", "cycles must be a whole number"),
        ("learn --lr lrr", "cannot evaluate 'lrr': NameError"),
        ("learn --lr 0.1 --size 64", "size needs image data"),
        ("learn --lr 0.1 --precompute", "precompute is not possible here"),
        ("learn --lr 0.1 --freeze-to 7", "freeze_to needs a group index in [-3, 2]"),
        ("learn", "no rate given and no variable lr"),
        ("learn --lr 0.1 --unfreeze --freeze-to 1", "--unfreeze and --freeze-to contradict"),
    ],
)
def test_fit_cycles_mistakes_raise_usage_error_and_change_nothing(ip, learn, line, message):
    ip.user_ns["other"] = 1
    before = snapshot(learn)
    with capture_output() as out, pytest.raises(UsageError) as err:
        ip.run_line_magic("fit_cycles", line)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert_unchanged(learn, before)
    assert out.stdout == "" and out.outputs == []  # nothing shown either


def test_a_bad_stage_on_line_3_is_rejected_before_stage_1_runs(ip, learn):
    before = snapshot(learn)
    cell = "lr=0.1 cycles=1\nunfreeze lr=0.01\ncycles=2 cycle_lenn=2\n"
    with pytest.raises(UsageError, match="line 3: unknown key 'cycle_lenn'; did you mean"):
        ip.run_cell_magic("fit_cycles", "learn", cell)
    assert_unchanged(learn, before)
    for cell, message in [
        ("lr=0.1\nunfreez lr=0.1", "line 2: 'unfreez' is neither key=value nor a flag"),
        ("lr=0.1\n\nlr=[0.1, 0.2", "line 3: unclosed '['"),
        ("lr=0.1 lr=0.2", "line 1: lr is given twice"),
        ("lr=0.1 cycles=", "line 1: cycles= needs a value"),
        ("# only a comment\n", "no stages in the cell"),
        ("lr=0.1\nlr=0.1 cycle_mult=0", "line 2: cycle_mult must be >= 1"),
    ]:
        with pytest.raises(UsageError) as err:
            ip.run_cell_magic("fit_cycles", "learn", cell)
        assert message in str(err.value)
    assert_unchanged(learn, before)


def test_other_magics_reject_mistakes(ip, learn):
    with pytest.raises(UsageError, match="--into needs a variable name"):
        ip.run_line_magic("lr_find", "learn --into 1x")
    with pytest.raises(UsageError, match="need 0 < start < end"):
        ip.run_line_magic("lr_find", "learn --start 1 --end 0.1")
    with pytest.raises(UsageError, match="freeze_to needs a group index"):
        ip.run_line_magic("freeze", "learn --to 9")
    ip.user_ns["other"] = 3
    with pytest.raises(UsageError, match="'other' is of type int, not a Learner"):
        ip.run_line_magic("layers", "other")
    for group in range(learn.n_groups):
        learn.set_trainable(group, False)
    with pytest.raises(UsageError, match="every layer group is frozen"):
        ip.run_line_magic("lr_find", "learn")


def test_stage_tokens_respect_brackets_and_quotes():
    assert split_tokens("unfreeze lr=[lr/9, lr/3, lr] cycles=3  # three cycles") == [
        "unfreeze",
        "lr=[lr/9, lr/3, lr]",
        "cycles=3",
    ]
    assert split_tokens("lr=f('a b') seed=int(\"1 \".strip())") == [
        "lr=f('a b')",
        'seed=int("1 ".strip())',
    ]


# ------------------------------------------------------------- %fit_cycles
def test_line_magic_runs_one_sgdr_fit(ip, learn):
    ip.user_ns["lr"] = 0.05
    with capture_output() as out:
        ip.run_line_magic("fit_cycles", "learn --cycles 2 --cycle-mult 2 --seed 1")
    state = learn.fits[-1]
    assert state.status == "done" and state.epochs == 3 and state.schedule.lrs == (0.05,) * 3
    lines = out.stdout.splitlines()
    assert lines[0].startswith("fit_cycles 2 cycles of 1 + 2 epochs = 3 epochs")
    assert lines[-1].startswith("done: 3 epochs")


def test_the_line_seed_seeds_the_run_once(ip, learn):
    ip.user_ns["lr"] = 0.05
    magics = ip.magics_manager.registry["NbtrainMagics"]
    with capture_output():
        job = magics.prepare_fit("learn --seed 3", "cycles=1\ncycles=1\ncycles=1 seed=5\n")
    assert [stage.seed for stage in job.stages] == [3, None, 5]


def test_cell_magic_runs_the_stages_in_order(ip, tmp_path):
    learn = ip.user_ns["learn"] = body_head_learner(tmp_path)
    ip.user_ns["lr"] = 0.05
    cell = """
    # the checklist: head on cached features, then with images, then everything
    lr=lr cycles=1 precompute=True
    lr=lr cycles=2 precompute=False size=2

    unfreeze lr=[lr/9, lr/3, lr] cycles=2 cycle_mult=2
    """
    seen = []
    learn.events.on("fit_start", lambda s: seen.append((learn.uses_cache, learn.trainable)))
    with capture_output() as out:
        ip.run_cell_magic("fit_cycles", "learn", cell)
    assert [s.status for s in learn.fits] == ["done"] * 3
    assert [(s.schedule.cycles, s.epochs) for s in learn.fits] == [(1, 1), (2, 2), (2, 3)]
    assert learn.fits[2].schedule.lrs == pytest.approx((0.05 / 9, 0.05 / 3, 0.05))
    assert seen == [
        (True, [False, False, True]),
        (False, [False, False, True]),
        (False, [True, True, True]),
    ]
    assert learn.data.sizes == [2]
    assert learn.trainable == [True, True, True] and learn.precompute is False
    headers = [line for line in out.stdout.splitlines() if line.startswith("fit_cycles stage")]
    assert [h.split(":")[0] for h in headers] == [f"fit_cycles stage {i}/3" for i in (1, 2, 3)]
    assert out.stdout.splitlines()[-1].startswith("done: 6 epochs")


def test_cell_magic_under_one_progress_view(ip, learn):
    frontend.set_mode("widgets")
    with capture_output():
        ip.run_cell_magic("fit_cycles", "learn --lr 0.05", "cycles=1\nfreeze_to=1 cycles=2\n")
    view = last_view("fit_cycles", ip)
    assert isinstance(view, ProgressView) and view.stages == 2 and view.status == "done"
    assert view.it == view.total_iters == sum(s.total_iters for s in learn.fits)
    assert learn.trainable == [False, True, True]
    assert view.message.startswith("done: 3 epochs")


def test_core_warnings_become_one_line(ip, tmp_path, recwarn):
    learn = ip.user_ns["learn"] = body_head_learner(tmp_path, small_data(augment=True))
    with capture_output() as out:
        ip.run_line_magic("fit_cycles", "learn --lr 0.05 --precompute")
    assert "warning: precompute is on, so the head trains on cached activations" in out.stdout
    ip.user_ns["learn"] = body_head_learner(tmp_path, small_data(augment=True))  # warns again
    with capture_output() as out:  # in a run of several stages, a note says which
        ip.run_cell_magic("fit_cycles", "learn --lr 0.05", "cycles=1 precompute=True\ncycles=1\n")
    assert "warning: stage 1: precompute is on, so the head trains" in out.stdout
    learn = ip.user_ns["learn"]
    with capture_output() as out:
        ip.run_line_magic("fit_cycles", "learn --lr 1e30 --cycles 3 --no-precompute --unfreeze")
    assert learn.fits[-1].status == "diverged"
    assert out.stdout.splitlines()[-1].startswith("diverged: loss became")
    assert not [w for w in recwarn if "nbtrain" in str(w.filename)]


# ------------------------------------------------------- freeze, unfreeze, layers
def test_freeze_unfreeze_and_layers(ip, learn):
    with capture_output() as out:
        ip.run_line_magic("freeze", "learn")
    assert learn.trainable == [False, False, True]
    assert "2 of 3 groups frozen" in shown(out) and "body (early)" in shown(out)
    ip.run_line_magic("freeze", "learn --to 1")
    assert learn.trainable == [False, True, True]
    ip.run_line_magic("unfreeze", "learn")
    assert learn.trainable == [True, True, True]
    frontend.set_mode("widgets")
    with capture_output():
        ip.run_line_magic("layers", "learn")
    panel = last_view("layers", ip)
    assert isinstance(panel, FreezePanel)
    panel.toggle(0)
    assert learn.trainable == [False, True, True]
    ip.run_line_magic("unfreeze", "learn")
    assert panel.trainable == [True, True, True]  # live panels follow the magics


def test_nbtrain_config(ip, capsys, monkeypatch):
    ip.run_line_magic("nbtrain_config", "--auto")
    assert "front end: text (auto" in capsys.readouterr().out
    ip.run_line_magic("nbtrain_config", "--widgets")
    assert frontend.use_widgets(ip)
    monkeypatch.setenv(frontend.ENV_VAR, "widgets")
    ip.run_line_magic("nbtrain_config", "--auto")
    assert "forced by $NBTRAIN_FRONTEND" in capsys.readouterr().out


# ------------------------------------------------- the async path (Stop, interrupt)
def test_cells_are_rewritten_only_when_widgets_are_in_use(ip):
    frontend.set_mode("widgets")
    assert (
        "await __import__('nbtrain.fit_job').fit_job.run_async('fit_cycles', 'learn --lr 1'"
        in ip.transform_cell("%fit_cycles learn --lr 1\nx = 1\n")
    )
    assert "run_async('fit_cycles', 'learn', 'lr=1\\ncycles=2\\n')" in ip.transform_cell(
        "%%fit_cycles learn\nlr=1\ncycles=2\n"
    )
    for cell in (
        "%fit_cycles?",
        "%%time\n%fit_cycles learn\n",
        "if x:\n    %fit_cycles learn\n",
        "%lr_find learn\n",
    ):
        assert "await" not in ip.transform_cell(cell)
    frontend.set_mode("text")
    assert "await" not in ip.transform_cell("%fit_cycles learn --lr 1\n")


def long_fit_learner(tmp_path) -> Learner:
    """256 batches an epoch: time to stop or interrupt a fit while it runs."""
    train = DataLoader(xor_data(4096, seed=0), batch_size=16, shuffle=True)
    valid = DataLoader(xor_data(32, seed=1), batch_size=32)
    return Learner(make_mlp(), DataLoaders(train, valid), device="cpu", path=tmp_path)


def record_stops(learn: Learner) -> list[int | None]:
    """The fit's iteration each time a Stop reached ``learn`` (read once the stop is set)."""
    stops: list[int | None] = []
    request_stop = learn.request_stop

    def record() -> bool:
        running = request_stop()
        state = learn.running
        stops.append(None if state is None else state.it)
        return running

    learn.request_stop = record  # type: ignore[method-assign]
    return stops


def test_a_rewritten_cell_trains_in_a_worker_and_stop_ends_it(ip, tmp_path):
    learn = ip.user_ns["learn"] = long_fit_learner(tmp_path)
    frontend.set_mode("widgets")
    threads, stops, reached = [], record_stops(learn), []
    learn.events.on("fit_start", lambda s: threads.append(threading.current_thread().name))

    def click_stop():  # the event loop is free while the worker trains: a click gets through
        deadline = time.monotonic() + 60  # only against a hang: iteration 5 takes ~0.1 s
        while not (learn.fits and learn.fits[-1].it >= 5) and time.monotonic() < deadline:
            time.sleep(0.01)
        reached.append(bool(learn.fits) and learn.fits[-1].it >= 5)
        last_view("fit_cycles", ip).stop_button.click()

    clicker = threading.Thread(target=click_stop)
    clicker.start()
    with capture_output():
        result = ip.run_cell("%fit_cycles learn --lr 0.05 --cycles 20")
    clicker.join()
    assert reached == [True], "the worker fit never reached iteration 5 in 60 s"
    assert result.success, result.error_in_exec
    # The cell's worker hands the fit to the thread that glibc's main arena serves
    # (nbtrain.core.cpu), where the allocator keeps its memory; elsewhere it trains itself.
    assert threads == ["nbtrain-train" if cpu.arena() is not None else "nbtrain-fit"]
    state = learn.fits[-1]
    assert state.status == "stopped" and 5 <= state.it < state.total_iters
    # the fit ends at the batch boundary after the Stop: at most the batch in progress runs
    assert len(stops) == 1 and stops[0] is not None and 0 <= state.it - stops[0] <= 1, stops
    assert last_view("fit_cycles", ip).message.startswith("stopped: stopped after iteration")


def test_a_kernel_interrupt_ends_the_worker_fit_at_a_batch_boundary(ip, tmp_path):
    learn = ip.user_ns["learn"] = long_fit_learner(tmp_path)
    frontend.set_mode("widgets")

    async def interrupt_after_a_few_batches():
        task = asyncio.ensure_future(run_async("fit_cycles", "learn --lr 0.05 --cycles 20"))
        deadline = time.monotonic() + 60  # only against a hang: iteration 3 takes ~0.1 s
        while not (learn.fits and learn.fits[-1].it >= 3):
            assert not task.done(), task.result()
            assert time.monotonic() < deadline, "the worker fit never reached iteration 3 in 60 s"
            await asyncio.sleep(0.01)
        task.cancel()  # what ipykernel does with an async cell on SIGINT
        await task

    with capture_output(), pytest.raises(KeyboardInterrupt):
        asyncio.run(interrupt_after_a_few_batches())
    state = learn.fits[-1]
    assert state.status == "interrupted" and 3 <= state.it < state.total_iters
    assert "interrupted after iteration" in state.message
    assert all(p.grad is None for p in learn.model.parameters())
    assert learn.request_stop() is False  # no fit left running
    assert math.isfinite(learn.evaluate()["loss"])


# ---------------------------------------------------------- a real kernel
SETUP = """
import torch
torch.set_num_threads(1)
from torch.utils.data import DataLoader
from nbtrain.core import DataLoaders, Learner
from tests.core.conftest import make_mlp, xor_data
%load_ext nbtrain
data = DataLoaders(DataLoader(xor_data(8192), batch_size=16, shuffle=True), None)
learn = Learner(make_mlp(), data, device="cpu")
from tests.test_magics import record_stops
stops = record_stops(learn)
"""


def execute(kc, code, on_msg=None, timeout=120.0):
    """Run ``code``; call ``on_msg(msg)`` for every iopub message meanwhile; return errors.

    ``timeout`` only guards against a hang: each cell here takes a few seconds."""
    import queue

    msg_id, errors, deadline = kc.execute(code), [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            msg = None
        if on_msg is not None:
            on_msg(msg)
        if msg is None or msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "error":
            errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return errors
    raise TimeoutError(f"the kernel was not idle {timeout:.0f} s after it was sent {code!r}")


def test_stop_click_reaches_a_fit_in_a_real_kernel(tmp_path, monkeypatch):
    """A browser's click is a comm_msg on the shell channel: send one mid-fit."""
    pytest.importorskip("ipykernel", minversion="7.4")
    manager = pytest.importorskip("jupyter_client.manager")
    from pathlib import Path

    # This environment's own kernel: no user-level "python3" kernelspec in the way.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    monkeypatch.setenv("NBTRAIN_FRONTEND", "auto")

    repo = Path(__file__).resolve().parents[1]
    km, kc = manager.start_new_kernel(kernel_name="python3", cwd=str(repo))
    try:
        assert execute(kc, SETUP) == []
        assert execute(kc, f"learn.path = __import__('pathlib').Path({str(tmp_path)!r})") == []
        found = {"stop": None, "live": False, "clicked": None}

        def click_when_live(msg):
            if msg is not None and msg["msg_type"] == "comm_open":
                state = msg["content"]["data"].get("state", {})
                if state.get("_model_name") == "ButtonModel" and state.get("description") == "Stop":
                    found["stop"] = msg["content"]["comm_id"]
            if msg is not None and msg["msg_type"] == "comm_msg":
                state = msg["content"]["data"].get("state", {})
                if str(state.get("value", "")).startswith("it ") and not state["value"].startswith(
                    "it 0/"
                ):
                    found["live"] = True  # the progress label moved: training is running
            if found["stop"] and found["live"] and found["clicked"] is None:
                content = {
                    "comm_id": found["stop"],
                    "data": {"method": "custom", "content": {"event": "click"}},
                }
                kc.session.send(kc.shell_channel.socket, kc.session.msg("comm_msg", content))
                found["clicked"] = True

        assert execute(kc, "%fit_cycles learn --lr 0.05 --cycles 30", click_when_live) == []
        assert found["clicked"] is not None, "the fit ended before Stop could be clicked"
        # The click reached the learner while the fit ran (the kernel's event loop was free),
        # and the fit ended at the next batch boundary. The seconds it takes are in
        # bench/responsiveness.py.
        report = (
            "s = learn.fits[-1]; assert s.status == 'stopped' and s.it < s.total_iters, s\n"
            "assert len(stops) == 1 and stops[0] is not None, stops\n"
            "assert 0 <= s.it - stops[0] <= 1, (stops, s.it)"
        )
        assert execute(kc, report) == []

        def interrupt_when_live(msg):
            if found["clicked"] is None:
                return
            if msg is not None and msg["msg_type"] == "comm_msg":
                value = str(msg["content"]["data"].get("state", {}).get("value", ""))
                if value.startswith("it ") and not value.startswith("it 0/"):
                    km.interrupt_kernel()
                    found["clicked"] = None

        errors = execute(kc, "%fit_cycles learn --lr 0.05 --cycles 30", interrupt_when_live)
        assert len(errors) == 1 and errors[0].startswith("KeyboardInterrupt: interrupted after")
        report = (
            "s = learn.fits[-1]; assert s.status == 'interrupted' and s.it < s.total_iters\n"
            "stopped_at = s.it"
        )
        assert execute(kc, report) == []
        # the interrupted fit goes on in the kernel's worker thread, from where it stopped
        assert execute(kc, "%fit_cycles learn --resume", timeout=300) == []
        report = (
            "s = learn.fits[-1]; assert s.status == 'done' and s.it == s.total_iters, s\n"
            "assert s.resumed.startswith(f'epoch '), s.resumed\n"
            "assert f'iteration {stopped_at}/' in s.resumed, (stopped_at, s.resumed)\n"
            "assert learn.fit_cycles(0.05, 1).status == 'done'"
        )
        assert execute(kc, report) == []
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_comma_between_stage_pairs_is_explained(ip, learn):
    with pytest.raises(UsageError, match="ends with a comma; separate key=value pairs"):
        ip.run_cell_magic("fit_cycles", "learn", "lr=0.1, cycles=1")
    assert learn.fits == []


def test_a_repeated_option_is_refused(ip, learn):
    with pytest.raises(UsageError, match="--lr given more than once"):
        ip.run_line_magic("fit_cycles", "learn --lr 1e-2 --lr 1e-3")
    assert learn.fits == []


def test_lr_find_into_a_learner_is_refused(ip, learn):
    with pytest.raises(UsageError, match="would overwrite a Learner"):
        ip.run_line_magic("lr_find", "learn --into learn")
    assert ip.user_ns["learn"] is learn


def test_a_typo_in_an_option_gets_a_did_you_mean(ip, learn):
    with pytest.raises(UsageError, match=r"did you mean --cycle-len\?"):
        ip.run_line_magic("fit_cycles", "learn --lr 0.1 --cycle_len 2")
    with pytest.raises(UsageError) as err:
        ip.run_line_magic("layers", "learn --bogus")
    assert "--lr" not in str(err.value)


# ---------------------------------------------------------------- --resume
RESUME_CELL = "lr=0.05 cycles=2\nunfreeze lr=[0.01, 0.02, 0.05] cycles=2 cycle_mult=2\n"


def seeded_learner(ip, tmp_path) -> Learner:
    torch.manual_seed(0)
    train = DataLoader(
        xor_data(64, seed=0), batch_size=16, shuffle=True, generator=torch.Generator()
    )
    valid = DataLoader(xor_data(32, seed=1), batch_size=32)
    ip.user_ns["learn"] = learner = Learner(
        make_mlp(), DataLoaders(train, valid), device="cpu", path=tmp_path
    )
    learner.freeze()
    return learner


def test_resume_goes_on_with_the_cells_plan_to_the_same_weights(ip, tmp_path):
    reference = seeded_learner(ip, tmp_path / "reference")
    with capture_output():
        ip.run_cell_magic("fit_cycles", "learn --seed 0", RESUME_CELL)
    expected = model_state(reference.model)

    learn = seeded_learner(ip, tmp_path / "run")

    class StopInStage2:  # a Stop click in the second stage's second epoch
        def on_batch_end(self, state):
            if state.stage == 1 and state.it == 6:
                learn.request_stop()

    learn.events.subscribe(StopInStage2())
    with capture_output():
        ip.run_cell_magic("fit_cycles", "learn --seed 0", RESUME_CELL)
    assert [s.status for s in learn.fits] == ["done", "stopped"]
    learn.events = type(learn.events)()  # the Stop handler goes

    with capture_output() as out:
        ip.run_line_magic("fit_cycles", "learn --resume")
    text = shown(out)
    resumed = r"resumed: stage 2/2, epoch 2, iteration 6/12 \(stopped run, \w{12}-\d{8}\.ckpt\)"
    assert re.search(resumed, text), text
    # the table shows the part already done (epochs 1-3) before the epochs run now (4-5)
    rows = [line.split()[:2] for line in text.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert rows == [["1", "1"], ["1", "2"], ["2", "3"], ["2", "4"], ["2", "5"]], text
    assert [s.status for s in learn.fits] == ["done", "done"]  # the stopped stage went on
    assert_same_state(model_state(learn.model), expected)
    view = last_view("fit_cycles", ip)
    assert [row["epoch"] for row in view.tracker.rows] == [1, 2, 3, 4, 5]

    with pytest.raises(UsageError, match="that run finished; there is nothing to resume"):
        ip.run_line_magic("fit_cycles", "learn --resume")


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("learn --resume --lr 0.1", None, "--lr cannot be given with it"),
        ("learn --resume", "lr=0.1 cycles=1\n", "stage lines cannot be given with it"),
        ("learn --resume", None, "no checkpoint to resume in .*models/resume"),
        ("learn --resume nowhere.ckpt", None, "no checkpoint at nowhere.ckpt"),
    ],
)
def test_resume_mistakes_are_one_line(ip, learn, line, cell, message):
    before = snapshot(learn)
    with pytest.raises(UsageError, match=message) as info:
        if cell is None:
            ip.run_line_magic("fit_cycles", line)
        else:
            ip.run_cell_magic("fit_cycles", line, cell)
    assert "\n" not in str(info.value)
    assert_unchanged(learn, before)
