"""The main job (``nbtrain.notebook_job``) keeps its result, however the run ends.

Each test runs the job on a tiny generated notebook (a Learner over a small MLP on XOR
points, in a real kernel) and checks what it leaves on disk: the executed notebook, the
weights in ``models/`` next to it (loaded back and compared with the learner's), the exit
status and the terminal's last lines. A ``Slow`` layer makes each batch take a known time,
so a timeout or a Ctrl-C lands in the middle of a fit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nbtrain.core.learner import Learner
from nbtrain.notebook_job import first_line, main, save_learners
from nbtrain.views import epoch_log
from tests.core.conftest import make_mlp

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

SETUP = """
import time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from nbtrain import DataLoaders, Learner

class Slow(nn.Module):
    def forward(self, x):
        time.sleep(SLOW)
        return x

torch.manual_seed(0)
x = torch.rand(64, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
data = DataLoaders(
    DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),
    DataLoader(TensorDataset(x, y), batch_size=32),
)
model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), Slow(), nn.Linear(16, 2))
learn = Learner(model, data, device="cpu")
"""
FIT = "%load_ext nbtrain\n%fit_cycles learn --lr 0.1 --cycles 2"
LONG_FIT = "%fit_cycles learn --lr 0.1 --cycle-len 1000"  # never ends by itself
KEEP = 'torch.save(learn.model.state_dict(), "expected.pt")'  # the weights to compare with


def write_notebook(folder: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    path = folder / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


def setup(slow: float) -> str:
    return f"SLOW = {slow}\n{SETUP}"


@pytest.fixture
def job(tmp_path, monkeypatch, capsys):
    """``job(*cells, timeout=None) -> (exit status, terminal text, executed notebook)``."""
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")

    def run(*cells: str, timeout: int | None = None):
        path = write_notebook(tmp_path, *cells)
        argv = ["--notebook", str(path), "--out", str(tmp_path / "out" / "tiny.ipynb")]
        rc = main([*argv, "--timeout", str(timeout)] if timeout else argv)
        captured = capsys.readouterr()
        executed = nbformat.read(tmp_path / "out" / "tiny.ipynb", as_version=4)
        return rc, captured.out + captured.err, executed

    return run


def saved_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    path = tmp_path / "out" / "models" / "learn.pth"
    assert path.is_file(), f"no weights at {path}"
    return torch.load(path, weights_only=True)["model"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def errors(cell) -> list[str]:
    return [o.ename for o in cell.outputs if o.output_type == "error"]


# ------------------------------------------------------------------ in the kernel
def test_save_learners_saves_each_learner_once_under_its_first_name(tmp_path):
    learn = Learner(make_mlp(), _xor_loaders(), device="cpu")
    other = Learner(make_mlp(), _xor_loaders(), device="cpu")
    namespace = {"learn": learn, "same": learn, "_": other, "other": other, "x": 1}
    saved = save_learners(namespace, tmp_path)
    assert saved == {"learn": str(tmp_path / "learn.pth"), "other": str(tmp_path / "other.pth")}
    assert_same(torch.load(saved["learn"], weights_only=True)["model"], learn.model.state_dict())


def test_epoch_log_writes_a_line_per_epoch_with_eta(tmp_path, monkeypatch):
    learn = Learner(make_mlp(), _xor_loaders(), device="cpu")
    monkeypatch.delenv(epoch_log.ENV_VAR, raising=False)
    assert epoch_log.from_env([learn.plan(0.1, 2)]) is None
    monkeypatch.setenv(epoch_log.ENV_VAR, str(tmp_path / "fit.log"))
    log = epoch_log.from_env([learn.plan(0.1, 2)], labels=["head"])
    learn.fit_cycles(0.1, 2, listeners=[log])
    lines = (tmp_path / "fit.log").read_text().splitlines()
    assert lines[0] == "fit_cycles head"
    assert lines[1].split() == [
        "epoch",
        "cycle",
        "train_loss",
        "valid_loss",
        "accuracy",
        "time",
        "ETA",
    ]
    assert [line.split()[:2] for line in lines[2:]] == [["1", "1"], ["2", "2"]]
    assert lines[-1].split()[-1] == "0:00"  # nothing left after the last epoch


def test_first_line_skips_blank_lines_and_shortens():
    assert first_line("\n\n%%fit_cycles learn\nlr=lr") == "%%fit_cycles learn"
    assert len(first_line("x = 1  # " + "a" * 200)) == 100


def _xor_loaders():
    from tests.core.conftest import TensorData

    return TensorData(64, n_valid=32, bs=16)


# ------------------------------------------------------------------ the whole job
def test_normal_run_saves_the_weights_and_ends_with_the_results(job, tmp_path):
    rc, text, executed = job(
        setup(0),
        FIT,
        KEEP,
        'print("best accuracy: 75.0% (stage 1, cycle 2)")',
        'print("final accuracy: 75.0%")',
    )
    assert rc == 0, text
    lines = text.strip().splitlines()
    assert lines[-6].startswith("done: 5 cells in ")
    assert re.fullmatch(
        r"kernel process CPU time \d+:\d\d, \d+\.\d% of it in the OS kernel", lines[-7]
    ), lines[-7]
    exported = tmp_path / "out" / "learn.pt2"
    assert lines[-5:] == [
        "final accuracy: 75.0%",
        "best accuracy: 75.0% (stage 1, cycle 2)",
        f"executed notebook: {tmp_path / 'out' / 'tiny.ipynb'}",
        f"weights: {tmp_path / 'out' / 'models' / 'learn.pth'} (saved at the end)",
        f"exported for inference (nbtrain.load_model): {exported}",
    ]
    # the export predicts what the saved weights predict
    from nbtrain import load_model

    model = load_model(exported)  # the notebook's own model class is not needed
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Identity(), torch.nn.Linear(16, 2)
    )
    net.load_state_dict(saved_weights(tmp_path))
    x = torch.rand(8, 2) * 2 - 1
    with torch.no_grad():
        expected = net.eval()(x).softmax(-1)
    assert torch.allclose(model.probabilities(x), expected, atol=1e-6)
    # where the run is: each cell's number and first line, each epoch's row
    assert "[2] %load_ext nbtrain" in lines
    rows = [line.split() for line in lines if line.split()[:2] in (["1", "1"], ["2", "2"])]
    assert len(rows) == 2 and all(len(row) == 7 for row in rows), text  # ... accuracy, time, ETA
    assert all(cell.execution_count for cell in executed.cells)
    assert_same(saved_weights(tmp_path), torch.load(tmp_path / "expected.pt", weights_only=True))
    assert "train_loss" in (tmp_path / "out" / "tiny.log").read_text()


def test_a_failing_cell_still_leaves_the_notebook_and_the_weights(job, tmp_path):
    rc, text, executed = job(setup(0), FIT, KEEP, 'raise ValueError("boom")', 'print("never")')
    assert rc == 1
    assert "failed: cell [4] raised ValueError: boom" in text
    assert errors(executed.cells[3]) == ["ValueError"]
    assert executed.cells[4].execution_count is None and not executed.cells[4].outputs
    assert "(saved after cell [4] failed)" in text.splitlines()[-1]
    assert_same(saved_weights(tmp_path), torch.load(tmp_path / "expected.pt", weights_only=True))


def test_a_cell_timeout_interrupts_the_fit_and_saves_where_it_stopped(job, tmp_path):
    start = 'torch.save(learn.model.state_dict(), "start.pt")'
    # 4 s of the fit cell: ~20 epochs here; the checks below need one
    rc, text, executed = job(
        setup(0.02), "%load_ext nbtrain", start, LONG_FIT, 'print("never")', timeout=4
    )
    assert rc == 1
    assert "timed out: cell [4] ran past --timeout 4 s" in text
    assert errors(executed.cells[3]) == ["KeyboardInterrupt"]  # the fit stopped at a batch
    assert not executed.cells[4].outputs
    assert "train_loss" in text  # the epochs it ran were shown as they ended
    saved, start_weights = (
        saved_weights(tmp_path),
        torch.load(tmp_path / "start.pt", weights_only=True),
    )
    assert saved.keys() == start_weights.keys()
    assert not all(torch.equal(saved[k], start_weights[k]) for k in saved)  # it had trained


def test_a_dead_kernel_is_reported_and_the_last_save_is_kept(job, tmp_path):
    rc, text, executed = job(setup(0), FIT, KEEP, "import os; os._exit(1)", 'print("never")')
    assert rc == 1
    assert "the kernel died in cell [4]" in text and "since the last save is lost" in text
    assert "(saved after cell [2])" in text.splitlines()[-1]
    assert_same(saved_weights(tmp_path), torch.load(tmp_path / "expected.pt", weights_only=True))
    assert executed.cells[2].execution_count == 3  # the notebook as far as it got


def test_ctrl_c_of_the_job_interrupts_the_fit_and_saves(tmp_path):
    notebook = write_notebook(tmp_path, setup(0.02), "%load_ext nbtrain", LONG_FIT, "1")
    out = tmp_path / "out" / "tiny.ipynb"
    env = {**os.environ, "JUPYTER_PREFER_ENV_PATH": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbtrain.notebook_job", "--notebook", notebook, "--out", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        log = out.with_suffix(".log")
        deadline = time.monotonic() + 120  # only against a hang: the first epoch shows after ~6 s
        while not (log.exists() and "train_loss" in log.read_text()):  # the fit is running
            if proc.poll() is not None:
                pytest.fail(f"the job ended before the fit started:\n{proc.stdout.read()}")
            assert time.monotonic() < deadline, "the fit never started: no epoch in 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:
            text, _ = proc.communicate(timeout=120)  # only against a hang: it takes ~2 s
        except subprocess.TimeoutExpired:
            pytest.fail("the job was still running 120 s after Ctrl-C: the interrupt hung")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, text
    assert "interrupted by Ctrl-C: cell [3] stopped" in text
    executed = nbformat.read(out, as_version=4)
    assert errors(executed.cells[2]) == ["KeyboardInterrupt"]
    assert not executed.cells[3].outputs
    assert "(saved after the interrupt)" in text.splitlines()[-1]
    assert saved_weights(tmp_path).keys() == {"0.weight", "0.bias", "3.weight", "3.bias"}
