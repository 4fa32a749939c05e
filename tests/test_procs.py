"""--procs from the magics: a model class defined in the notebook trains on 2 gloo processes,
from a real IPython shell and from a real kernel; mistakes are one line."""

from __future__ import annotations

import re

import pytest
import torch
from IPython.core.error import UsageError

from tests.core.test_distributed import rank_processes
from tests.test_notebook_job import KEEP, job, saved_weights, setup  # noqa: F401 - the fixture

DEFINE = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from nbtrain import DataLoaders, Learner

class Net(nn.Module):  # a class of the notebook's own: it lives in __main__
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.body(x))

g = torch.Generator().manual_seed(0)
x = torch.rand(64, 2, generator=g) * 2 - 1
y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
shuffle = torch.Generator().manual_seed(0)
train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=shuffle)
data = DataLoaders(train, DataLoader(TensorDataset(x, y), batch_size=32))
torch.manual_seed(0)
learn = Learner(Net(), data, device="cpu")
learn.checkpoint_dir = False
"""


@pytest.fixture
def shell(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ip.run_cell(DEFINE).raise_error()
    assert type(ip.user_ns["learn"].model).__module__ == "__main__"
    yield ip
    for name in ("learn", "Net", "data", "train"):
        ip.user_ns.pop(name, None)
    assert rank_processes() == []


@pytest.mark.filterwarnings("ignore:2 processes")
def test_a_notebook_class_trains_on_two_processes_from_the_magics(shell):
    learn = shell.user_ns["learn"]
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    shell.run_line_magic("fit_cycles", "learn --lr 0.1 --cycles 2 --procs 2")
    assert [s.status for s in learn.fits] == ["done"] and len(learn.history) == 2
    assert learn.fits[0].total_iters == 4  # 64 items, global batches of 2 x 16: 2 per epoch
    after = learn.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    shell.run_cell_magic("fit_cycles", "learn --procs 2 --scale-lr", "lr=0.01 cycles=1\nlr=0.02")
    assert [s.status for s in learn.fits] == ["done"] * 3
    assert learn.history[-1].lrs[0] == pytest.approx(0.04 * 0.5 * (1 + 0))  # 2 x 0.02, mid-cosine


@pytest.mark.parametrize(
    ("magic", "line", "message"),
    [
        ("fit_cycles", "learn --lr 0.1 --procs 0", "procs must be"),
        ("fit_cycles", "learn --lr 0.1 --scale-lr", "scale_lr multiplies the rates by procs"),
        ("fit_cycles", "learn --resume --procs 2", "--procs cannot be given with it"),
        ("lr_find", "learn --procs 2", "lr_find runs in one process"),
    ],
)
def test_procs_mistakes_are_one_line(shell, magic, line, message):
    learn = shell.user_ns["learn"]
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        shell.run_line_magic(magic, line)
    assert "\n" not in str(info.value) and learn.fits == []


def test_the_kernel_path_trains_a_notebook_class_on_two_processes(job, tmp_path):  # noqa: F811
    rc, text, executed = job(
        setup(0),
        "%load_ext nbtrain\n%fit_cycles learn --lr 0.1 --cycles 2 --procs 2",
        "assert [s.status for s in learn.fits] == ['done'], learn.fits",
        KEEP,
        'print("final accuracy: 50.0%")',
    )
    assert rc == 0, text
    outputs = str(executed.cells[1].outputs)
    assert "warning: 2 processes (gloo): the global batch is 2 x 16 = 32" in outputs, outputs
    weights = saved_weights(tmp_path)
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert rank_processes() == []
