"""Run every notebook in notebooks/ headless with a real kernel, on small settings.

The notebooks read their knobs from environment variables (the kernel inherits them): a
data path that does not exist makes them generate the shapes set, and 32 px images keep
each run to seconds. Also checks that the notebooks are stored without outputs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
FINAL_ACCURACY = re.compile(r"final accuracy[^:]*: (\d+(?:\.\d+)?)%")
SMALL_SETTINGS = {
    "NBTRAIN_SIZE": "32",
    "NBTRAIN_BS": "16",
    "NBTRAIN_SEEDS": "2",
    "NBTRAIN_HEAD_CYCLES": "1",
    "NBTRAIN_AUG_CYCLES": "1",
    "NBTRAIN_UNFREEZE_CYCLES": "2",
}


def _required() -> bool:
    return os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}


@pytest.fixture(scope="module")
def nb_tools():
    """nbformat and nbclient, or a skip (a failure under CI=true, which installs them)."""
    try:
        import nbclient
        import nbformat
    except ImportError as exc:
        if _required():
            pytest.fail(f"{exc}: the notebook tests need the 'test' extra")
        pytest.skip(f"{exc} (pip install -e '.[test]')")
    return nbformat, nbclient


def test_there_are_notebooks():
    assert {p.name for p in PATHS} >= {"checklist.ipynb", "lr_find_sgdr_explained.ipynb"}


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_stored_without_outputs(path, nb_tools):
    nbformat, _ = nb_tools
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, (
        f"cells {dirty} of {path.name} keep outputs; strip them with "
        f"`jupyter nbconvert --clear-output --inplace notebooks/{path.name}`"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs(path, nb_tools, tmp_path, monkeypatch):
    nbformat, nbclient = nb_tools
    for name, value in SMALL_SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NBTRAIN_DATA", str(tmp_path / "no-such-folder"))  # -> generated shapes
    monkeypatch.setenv("NBTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")  # the venv's python3 kernel, not a user one
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the notebooks' own folder as cwd
    )
    client.execute()  # raises CellExecutionError, with the traceback, on any error
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    stdout = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "using a generated shapes data set" in stdout
    last = nb.cells[-1] if nb.cells[-1].cell_type == "code" else None
    last_text = "".join(o.get("text", "") for o in (last.outputs if last else []))
    m = FINAL_ACCURACY.search(last_text)
    assert m, f"the last cell did not print the final accuracy: {last_text!r}"
    assert 0 <= float(m.group(1)) <= 100
    if path.name == "checklist.ipynb":  # step 7's sweep: about two epochs, 20 to 100 steps
        sweep = re.search(r"range test: (\d+) steps, [\d.]+ epochs of (\d+) batches", stdout)
        assert sweep, "the checklist did not size its unfrozen range test"
        steps, batches = int(sweep.group(1)), int(sweep.group(2))
        assert steps == min(100, max(20, 2 * batches))


def test_checklist_has_all_eight_steps_in_order(nb_tools):
    """Step 7 included: after unfreezing, lr_find again with a sweep sized to the data,
    then the unfrozen SGDR stages at rates built from its suggestion (the lower of it and
    a tenth of the head's rate, 3x lower per earlier group), with cycle_mult=2."""
    nbformat, _ = nb_tools
    nb = nbformat.read(NOTEBOOKS / "checklist.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]

    def first(pattern: str) -> int:
        hits = [i for i, source in enumerate(code) if re.search(pattern, source, re.MULTILINE)]
        assert hits, f"no code cell matches {pattern!r}"
        return hits[0]

    order = [
        first(r"ImageData\.from_(folder|path)\(.*augment=True"),  # 1
        first(r"^learn = Learner\.pretrained\(.*precompute=True"),  # 1
        first(r"^%lr_find learn --seed SEED$"),  # 2
        first(r"^lr=lr cycles=HEAD_CYCLES patience=HEAD_PATIENCE precompute=True$"),  # 3
        first(r"^lr=lr cycles=AUG_CYCLES cycle_len=1 precompute=False$"),  # 4
        first(r"^%unfreeze learn$"),  # 5
        first(r"^UNFROZEN_ITERS = .*LR_FIND_EPOCHS \* learn\.iters_per_epoch\(\)"),  # 7
        first(r"^%lr_find learn .*spread_lrs.*--iters UNFROZEN_ITERS .*--into lr_unfrozen"),
        first(r"^rates = spread_lrs\(min\(lr_unfrozen or lr / 10, lr / 10\)"),  # 6
        first(r"^lr=rates cycles=UNFREEZE_CYCLES cycle_mult=2$"),  # 8
        first(r"^size=FINAL_SIZE lr=rates cycles=1$"),  # progressive resizing
    ]
    assert order == sorted(order), order
    assert "[lr/90, lr/30, lr/10]" not in "".join(code)  # the old fixed rates are gone
    text = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "about two epochs" in text  # the notebook says what step 7 costs


WEIGHTS_DIGEST = """
import hashlib
print(hashlib.sha256(b"".join(
    v.detach().cpu().contiguous().numpy().tobytes() for v in learn.model.state_dict().values()
)).hexdigest())
"""


def _stdout(cell) -> str:
    """What the cell printed (stderr left out: a warning shows once per kernel)."""
    outputs = cell.get("outputs", [])
    return "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")


def test_checklist_reruns_to_the_same_numbers(nb_tools, tmp_path, monkeypatch):
    """Run All twice in one kernel: the second pass reads the activation cache the first
    wrote, and must still give the same rate, accuracies and weights, bit for bit."""
    nbformat, nbclient = nb_tools
    for name, value in SMALL_SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NBTRAIN_DATA", str(tmp_path / "no-such-folder"))
    monkeypatch.setenv("NBTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOKS / "checklist.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(WEIGHTS_DIGEST))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    runs = []
    with client.setup_kernel():
        for _ in range(2):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    cell.outputs = []
                    client.execute_cell(cell, index)
            lr_line = next(_stdout(c) for c in nb.cells if _stdout(c).startswith("lr = "))
            runs.append((lr_line, _stdout(nb.cells[-2]), _stdout(nb.cells[-1])))
    first, second = runs
    assert "final accuracy" in first[1] and len(first[2].strip()) == 64
    assert first == second
