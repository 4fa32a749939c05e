"""The checklist lives once (nbtrain.recipes): the notebook's cells say the same stages,
rates and sweep, and the demo runs it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from IPython.core.interactiveshell import InteractiveShell
from torch.utils.data import DataLoader

from nbtrain.core import DataLoaders, Learner, Stage
from nbtrain.core.lr_range import LRRangeResult
from nbtrain.recipes import Checklist, head_rate, larger_size, sweep_line
from tests.core.conftest import make_mlp, xor_data

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "checklist.ipynb"


def code_cells() -> list[str]:
    nb = json.loads(NOTEBOOK.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def cell(pattern: str) -> str:
    hits = [c for c in code_cells() if re.search(pattern, c, re.MULTILINE)]
    assert len(hits) == 1, f"{len(hits)} code cells match {pattern!r}"
    return hits[0]


def settings(env: dict[str, str] | None = None) -> dict:
    """The notebook's settings cell, run with only ``env`` among NBTRAIN_* variables."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("NBTRAIN_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env or {})
    try:
        ns: dict = {}
        exec(cell(r"^HEAD_CYCLES = "), ns)
        return ns
    finally:
        for key in env or {}:
            del os.environ[key]
        os.environ.update(saved)


def recipe_of(ns: dict) -> Checklist:
    return Checklist(
        head_cycles=ns["HEAD_CYCLES"],
        head_patience=ns["HEAD_PATIENCE"],
        aug_cycles=ns["AUG_CYCLES"],
        lr_find_epochs=ns["LR_FIND_EPOCHS"],
        unfreeze_cycles=ns["UNFREEZE_CYCLES"],
        final_size=ns["FINAL_SIZE"],
        seed=ns["SEED"],
    )


def test_the_notebooks_settings_are_the_recipes_defaults():
    ns = settings()
    assert recipe_of(ns) == Checklist(final_size=larger_size(ns["SIZE"]))
    assert larger_size(240) == ns["FINAL_SIZE"] == 308  # lite1's own size, then 9/7 of it
    small = settings({"NBTRAIN_HEAD_CYCLES": "1", "NBTRAIN_SIZE": "32"})
    assert recipe_of(small) == Checklist(head_cycles=1, final_size=larger_size(32))
    fixed = settings({"NBTRAIN_HEAD_CYCLES": "2", "NBTRAIN_HEAD_PATIENCE": "0"})
    assert recipe_of(fixed) == Checklist(head_cycles=2, head_patience=None, final_size=308)


@pytest.fixture
def ip():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbtrain")
    torch.manual_seed(0)
    train = DataLoader(xor_data(64, seed=0), batch_size=16, shuffle=True)
    valid = DataLoader(xor_data(32, seed=1), batch_size=32)
    shell.user_ns["learn"] = Learner(make_mlp(), DataLoaders(train, valid), device="cpu")
    yield shell
    for name in ("learn", "lr", "rates", "lr_unfrozen"):
        shell.user_ns.pop(name, None)
    shell.run_line_magic("unload_ext", "nbtrain")


def fit_cell_stages(ip, pattern: str) -> list[Stage]:
    """The stages a ``%%fit_cycles`` cell of the notebook says, as the magic reads them."""
    first, _, body = cell(pattern).partition("\n")
    assert first.startswith("%%fit_cycles ")
    magics = ip.magics_manager.registry["NbtrainMagics"]
    _, _, stages = magics.parse_fit(first.removeprefix("%%fit_cycles "), body)
    return stages


@pytest.mark.parametrize("lr", [7.1e-3, 0.05])
def test_the_notebooks_fit_cells_say_the_recipes_stages(ip, lr):
    ns = settings()
    ip.user_ns.update(ns, lr=lr)
    recipe = recipe_of(ns)
    assert fit_cell_stages(ip, r"^lr=lr cycles=HEAD_CYCLES") == recipe.head_stages(lr)
    rates = recipe.unfrozen_rates(lr, lr / 30, n_groups=3)
    ip.user_ns["rates"] = rates
    assert fit_cell_stages(ip, r"^lr=rates cycles=UNFREEZE_CYCLES") == recipe.unfrozen_stages(rates)


def test_the_notebooks_unfrozen_sweep_and_rates_are_the_recipes():
    recipe = Checklist()
    learn = SimpleNamespace(n_groups=3, iters_per_epoch=lambda: batches)
    spread_lrs = __import__("nbtrain").spread_lrs
    for batches in (3, 8, 63, 500):
        ns = {"LR_FIND_EPOCHS": recipe.lr_find_epochs, "learn": learn}
        exec(cell(r"^UNFROZEN_ITERS = "), ns)
        sweep = recipe.unfrozen_sweep(batches, 3)
        assert ns["UNFROZEN_ITERS"] == sweep["iters"]
    line = cell(r"^%lr_find learn .*--into lr_unfrozen")
    start = re.search(r'--start "([^"]+)"', line).group(1)
    assert eval(start, {"spread_lrs": spread_lrs, "learn": learn}) == sweep["start"]
    assert "--iters UNFROZEN_ITERS --seed SEED" in line
    for lr, found in [(0.01, None), (0.01, 1e-4), (0.01, 0.5), (0.3, 0.02)]:
        ns = {"lr": lr, "lr_unfrozen": found, "learn": learn, "spread_lrs": spread_lrs}
        exec(cell(r"^rates = "), ns)
        assert ns["rates"] == recipe.unfrozen_rates(lr, found, 3)
    unfreeze = cell(r"^%unfreeze learn$")
    assert "learn.bn_freeze()" in unfreeze  # as Checklist.run does before the sweep


def test_the_recipes_rules():
    recipe = Checklist(final_size=288, seed=5)
    cached, augmented = recipe.head_stages(0.01)
    assert (cached.cycles, cached.patience, cached.precompute, cached.seed) == (50, 3, True, 5)
    assert (augmented.cycles, augmented.cycle_len, augmented.precompute, augmented.seed) == (
        2,
        1,
        False,
        None,
    )
    # the lower of the unfrozen suggestion and a tenth of the head's rate, 3x per group
    assert recipe.unfrozen_rates(0.01, None, 3) == pytest.approx([0.01 / 90, 0.01 / 30, 0.001])
    assert recipe.unfrozen_rates(0.01, 1e-4, 3) == pytest.approx([1e-4 / 9, 1e-4 / 3, 1e-4])
    assert recipe.unfrozen_rates(0.01, 0.5, 3) == pytest.approx([0.01 / 90, 0.01 / 30, 0.001])
    assert [recipe.unfrozen_sweep(n, 3)["iters"] for n in (3, 8, 40, 63)] == [20, 20, 80, 100]
    unfrozen, final = recipe.unfrozen_stages([1e-4, 3e-4, 1e-3])
    assert (unfrozen.cycles, unfrozen.cycle_mult, unfrozen.size) == (3, 2, None)
    assert (final.cycles, final.size, final.lr) == (1, 288, (1e-4, 3e-4, 1e-3))
    assert len(Checklist().unfrozen_stages([1.0])) == 1  # no final_size: no resizing stage


def test_a_sweep_without_a_suggestion_is_one_line():
    flat = LRRangeResult(
        lrs=[1e-5, 1e-4, 1e-3],
        losses=[1.0] * 3,
        raw_losses=[1.0] * 3,
        group_lrs=[],
        stop_reason="end",
    )
    flat.suggestions = {name: None for name in flat.suggestions}
    with pytest.raises(ValueError, match="the range test suggested no rate") as err:
        head_rate(flat)
    assert "\n" not in str(err.value)
    assert sweep_line(flat) == "3 steps (end); no suggestion"


def test_the_demo_runs_the_recipe(tmp_path, monkeypatch, capsys):
    pytest.importorskip("timm")
    from nbtrain import demo

    monkeypatch.setenv("NBTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--size", "32", "--bs", "16", "--full"]) == 0
    out = capsys.readouterr().out
    stages = re.findall(r"^\[stage (\d)/(\d)\] SGDR: (up to )?(\d+) ", out, re.MULTILINE)
    assert stages == [
        ("1", "2", "up to ", "50"),  # the head on cached activations, to convergence
        ("2", "2", "", "2"),
        ("1", "2", "", "3"),
        ("2", "2", "", "1"),
    ]
    assert re.search(r"^  done: trained to convergence in \d+ epochs", out, re.MULTILINE)
    assert re.search(r"^lr_find: \d+ steps .* -> lr \d", out, re.MULTILINE)
    assert re.search(r"^lr_find \(unfrozen\): \d+ steps .* -> rates ", out, re.MULTILINE)
    assert re.search(r"^final validation accuracy: \d\.\d{4} .*after 4 stages", out, re.MULTILINE)
    assert (tmp_path / "models" / "demo.pth").exists()
