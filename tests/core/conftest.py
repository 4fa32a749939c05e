"""Tiny, seeded fixtures: an XOR-like task and an MLP with BatchNorm and dropout."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nbtrain.core import DataLoaders, Learner


def xor_data(n: int = 256, *, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    return TensorDataset(x, y)


class TensorData:
    """In-memory data that can key a precompute cache and be resized, like ImageData."""

    def __init__(
        self, n: int = 256, *, n_valid: int = 128, augment: bool = False, bs: int = 32
    ) -> None:
        self.train_ds, self.valid_ds = xor_data(n, seed=0), xor_data(n_valid, seed=1)
        self.bs, self.augment, self.size, self.sizes = bs, augment, 1, []

    @property
    def train(self):
        return DataLoader(self.train_ds, batch_size=self.bs, shuffle=True)

    @property
    def fix(self):
        return DataLoader(self.train_ds, batch_size=self.bs)

    @property
    def valid(self):
        return DataLoader(self.valid_ds, batch_size=self.bs)

    def file_signature(self, split):
        ds = self.train_ds if split == "train" else self.valid_ds
        return hashlib.sha256(ds.tensors[0].numpy().tobytes()).hexdigest()

    def eval_signature(self):
        return f"size={self.size}"

    def set_size(self, size):
        self.size = size
        self.sizes.append(size)


def make_mlp() -> nn.Module:
    """Body (two blocks with BatchNorm) and head: three default layer groups."""
    return nn.Sequential(
        nn.Sequential(nn.Linear(2, 32), nn.BatchNorm1d(32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1)),
        nn.Linear(32, 2),
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch) -> None:
    """A learner made without ``path`` writes its checkpoints under the current folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data() -> DataLoaders:
    train = DataLoader(xor_data(256, seed=0), batch_size=32, shuffle=True)
    valid = DataLoader(xor_data(128, seed=1), batch_size=64)
    return DataLoaders(train, valid)


@pytest.fixture
def learn(data: DataLoaders, tmp_path) -> Learner:
    return Learner(make_mlp(), data, device="cpu", path=tmp_path)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} changed"


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    return {
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]],
        "state": {
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in sd["state"].items()
        },
    }


def assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["groups"] == b["groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k, v in a["state"][i].items():
            w = b["state"][i][k]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w, f"opt state {i}.{k}"


class StepRecorder:
    """Wraps ``opt.step`` to record every param group's rate at each real step."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.lrs: list[tuple[float, ...]] = []
        self._step = opt.step
        self.opt = opt
        opt.step = self  # type: ignore[method-assign]

    def __call__(self, *args, **kwargs):
        self.lrs.append(tuple(g["lr"] for g in self.opt.param_groups))
        return self._step(*args, **kwargs)


def full_disk(payload, f) -> None:
    """``torch.save`` as it fails on a full disk: its zip writer raises a RuntimeError
    while handling the OSError (ENOSPC). Patch it in to test what a full disk does."""
    import errno

    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
