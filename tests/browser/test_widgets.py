"""nbtrain's widgets in a real JupyterLab: click the LR plot, toggle a layer group, Stop a fit.

Each action is checked where it matters, in the kernel: a print cell is re-run and its
output read. Screenshots of the three widgets are kept too; to refresh the README's copies
in docs/img/ from a run on real photos, run ``NBTRAIN_UPDATE_SCREENSHOTS=1
NBTRAIN_SCREENSHOT_DATA=../shared/data/hymenoptera python3 scripts/dev.py test tests/browser``.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.lab import (
    open_notebook,
    output_area,
    output_text,
    prompt_number,
    rerun_and_read,
    run_and_wait,
    run_cell,
    write_notebook,
)

ROOT = Path(__file__).resolve().parents[2]
# Screenshots go to .pytest_cache/ on every run; NBTRAIN_UPDATE_SCREENSHOTS=1 writes the
# README's copies in docs/img/ instead (so that a test run leaves the tree clean).
IMG = ROOT / ("docs/img" if os.environ.get("NBTRAIN_UPDATE_SCREENSHOTS") == "1"
              else ".pytest_cache/browser-screenshots")
# 4 + 8 + 16 epochs of 6 batches: restarts are drawn, and the run is far longer than the
# test waits before it clicks Stop (after epoch 5)
FIT = "--lr 1e-3 --cycles 3 --cycle-len 4 --cycle-mult 2"
# NBTRAIN_SCREENSHOT_DATA=FOLDER (a photo folder, e.g. the hymenoptera set) makes the
# README's pictures from a real run on photos; the test's checks are the same.
PHOTOS = os.environ.get("NBTRAIN_SCREENSHOT_DATA", "")
DATA = (
    f"data = ImageData.from_folder({PHOTOS!r}, size=64, bs=16, num_workers=0)\n"
    if PHOTOS
    else "root = make_shapes_dataset('shapes', size=32, n_per_class=8, n_valid_per_class=4)\n"
    "data = ImageData.from_folder(root, size=32, bs=4, num_workers=0)\n"
)

SETUP, LR_FIND, PRINT_LR, CLICK_AT, LAYERS, PRINT_TRAINABLE, FIT_CELL, REPORT = range(8)
CELLS = [
    # SETUP: a tiny generated data set; no DataLoader workers (the fit runs in a thread)
    "%load_ext nbtrain\n"
    "from nbtrain import Learner\n"
    "from nbtrain.magics import last_view\n"
    "from nbtrain.vision import ImageData, make_shapes_dataset\n"
    + DATA
    + "learn = Learner.pretrained(data, precompute=True, head_init='random')\n"
    # the fit's iteration each time a Stop reaches the learner (read once the stop is set)
    "stops = []\n"
    "def record_stop(request_stop=learn.request_stop):\n"
    "    running, state = request_stop(), learn.running\n"
    "    stops.append(None if state is None else state.it)\n"
    "    return running\n"
    "learn.request_stop = record_stop",
    "%lr_find learn --seed 0",
    'print(f"LR={lr!r}")',
    # CLICK_AT: where on the PNG to click for a rate 10 swept steps (~6x) below the
    # pre-selected suggestion (above it when the suggestion is near the start)
    "plot = last_view('lr_find')\n"
    "lrs = plot.result.lrs\n"
    "s = plot.figure.index_of(lr)\n"
    "i = s - 10 if s >= 20 else s + 10\n"
    "x, _ = plot.pixel_of(lrs[i])\n"
    'print(f"CLICK_X={x:.2f} TARGET={lrs[i]!r} STEP={lrs[1] / lrs[0]!r}")',
    "%layers learn",
    'print(f"TRAINABLE={learn.trainable}")',
    f"%fit_cycles learn {FIT}",
    "state = learn.fits[-1]\n"
    "metrics = learn.evaluate()\n"
    'print(f"STATUS={state.status} IT={state.it} PLANNED={state.total_iters}")\n'
    'print(f"STOPS={\',\'.join(map(str, stops)) or \'none\'}")\n'
    "print(f\"ACCURACY={metrics['accuracy']!r}\")",
]


def value(text: str, key: str) -> str:
    m = re.search(rf"{key}=(\S+)", text)
    assert m, f"{key}= not in {text!r}"
    return m.group(1)


# Right edge of what an element shows (text, images, buttons, bars): widget boxes span the
# whole output width, which would leave screenshots half empty.
CONTENT_RIGHT_JS = """el => {
  let right = 0;
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    if (!walker.currentNode.textContent.trim()) continue;
    const range = document.createRange();
    range.selectNodeContents(walker.currentNode);
    for (const r of range.getClientRects()) right = Math.max(right, r.right);
  }
  for (const e of el.querySelectorAll('img, button, .widget-progress'))
    right = Math.max(right, e.getBoundingClientRect().right);
  return right; }"""


def shoot(page, locator, name: str) -> None:
    """Screenshot of a widget, cropped to its content, into docs/img/ (for the README)."""
    IMG.mkdir(parents=True, exist_ok=True)
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    right = locator.evaluate(CONTENT_RIGHT_JS)
    width = min(box["width"], right - box["x"] + 8)
    clip = {"x": box["x"], "y": box["y"], "width": width, "height": box["height"]}
    page.screenshot(path=str(IMG / name), clip=clip, animations="disabled")


def test_lr_plot_freeze_panel_and_stop(jupyter_lab, page):
    page.set_viewport_size({"width": 1280, "height": 1400})  # whole widgets in screenshots
    name = write_notebook(jupyter_lab.root, "widgets.ipynb", CELLS)
    open_notebook(page, jupyter_lab, name)
    for i in (SETUP, LR_FIND, PRINT_LR, CLICK_AT):
        run_and_wait(page, i)

    # --- the LR plot: a click picks a rate and writes it into the kernel's `lr`
    finder = output_area(page, LR_FIND).locator(".nbtrain-lr-finder")
    expect(finder.locator(".nbtrain-lr-picked")).to_contain_text("valley suggestion")
    suggestion = float(value(output_text(page, PRINT_LR), "LR"))
    where = output_text(page, CLICK_AT)
    x, target = float(value(where, "CLICK_X")), float(value(where, "TARGET"))
    step = float(value(where, "STEP"))
    finder.locator("img.nbtrain-lr-plot").click(position={"x": x, "y": 180})
    expect(finder.locator(".nbtrain-lr-picked")).to_contain_text("picked on the plot")
    shoot(page, finder, "lr-finder.png")
    picked = float(rerun_and_read(page, PRINT_LR, r"LR=(\S+)").group(1))
    assert picked != suggestion
    # clicks land on whole CSS pixels: at most one swept step away from the target
    assert abs(math.log(picked / target)) <= math.log(step) * 1.01, (picked, target)

    # --- the freeze panel: a toggle freezes/unfreezes a layer group at once
    run_and_wait(page, LAYERS)
    run_and_wait(page, PRINT_TRAINABLE)
    panel = output_area(page, LAYERS).locator(".nbtrain-freeze-panel")
    expect(output_area(page, PRINT_TRAINABLE)).to_contain_text("TRAINABLE=[False, False, True]")
    toggle = panel.locator(".nbtrain-layer-row-1 .nbtrain-layer-toggle")
    expect(toggle).to_contain_text("frozen")
    toggle.click()
    expect(toggle).to_contain_text("trainable")
    expect(panel.locator(".nbtrain-layers-summary")).to_contain_text("1 of 3 groups frozen")
    rerun_and_read(page, PRINT_TRAINABLE, r"TRAINABLE=\[False, True, True\]")
    shoot(page, panel, "freeze-panel.png")

    # --- the progress display: Stop ends the fit early; the learner still works
    run_cell(page, FIT_CELL)
    progress = output_area(page, FIT_CELL).locator(".nbtrain-progress")
    label = progress.locator(".nbtrain-progress-label")
    # running, past the first restart (epoch 4), before Stop; the timeouts only guard
    # against a hang (epoch 5 shows after ~2 s, the stop ~0.2 s after the click)
    expect(label, "the fit never reached epoch 5").to_have_text(
        re.compile(r"^it \d+/\d+ · epoch ([5-9]|\d\d)/"), timeout=90_000
    )
    shoot(page, progress, "progress.png")
    t_click = time.monotonic()
    progress.locator(".nbtrain-stop").click()
    status = progress.locator(".nbtrain-progress-status")
    expect(status, "the fit did not stop after the click").to_contain_text(
        "stopped", timeout=30_000
    )
    stop_seconds = time.monotonic() - t_click  # printed, not asserted: the machine is noisy
    run_and_wait(page, REPORT)
    report = output_text(page, REPORT)
    assert value(report, "STATUS") == "stopped"
    it, planned = int(value(report, "IT")), int(value(report, "PLANNED"))
    assert 0 < it < planned
    # the click reached the learner mid-fit, and the fit ended at the next batch boundary
    stops = value(report, "STOPS").split(",")
    assert len(stops) == 1 and stops[0].isdigit(), f"Stops that reached the learner: {stops}"
    assert 0 <= it - int(stops[0]) <= 1, (stops, it)
    assert 0.0 <= float(value(report, "ACCURACY")) <= 1.0
    assert prompt_number(page, FIT_CELL) < prompt_number(page, REPORT)
    shoot(page, progress, "progress-stopped.png")
    print(f"stopped at iteration {it} of {planned}, {it - int(stops[0])} batch(es) after the Stop "
          f"reached the learner, {stop_seconds:.2f} s after the click")


PROCS_CELLS = [
    # a model class of the notebook's own, made slow enough that the fit is still running
    # when the test clicks Stop (each batch sleeps 50 ms on each rank)
    "%load_ext nbtrain\n"
    "import time, psutil, torch\n"
    "from torch import nn\n"
    "from torch.utils.data import DataLoader, TensorDataset\n"
    "from nbtrain import DataLoaders, Learner\n"
    "class Slow(nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))\n"
    "    def forward(self, x):\n"
    "        time.sleep(0.05)\n"
    "        return self.net(x)\n"
    "x = torch.rand(128, 2) * 2 - 1\n"
    "y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()\n"
    "data = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),\n"
    "                   DataLoader(TensorDataset(x, y), batch_size=64))\n"
    "learn = Learner(Slow(), data, device='cpu')",
    "%fit_cycles learn --lr 1e-3 --cycles 500 --procs 2",
    "state = learn.fits[-1]\n"
    "workers = [p for p in psutil.Process().children(recursive=True)\n"
    "           if any('spawn_main' in part for part in p.cmdline())]\n"
    'print(f"STATUS={state.status} IT={state.it} PLANNED={state.total_iters} "\n'
    '      f"WORKERS={len(workers)}")',
]


def test_stop_ends_a_two_process_fit(jupyter_lab, page):
    name = write_notebook(jupyter_lab.root, "procs.ipynb", PROCS_CELLS)
    open_notebook(page, jupyter_lab, name)
    run_and_wait(page, 0)
    run_cell(page, 1)
    progress = output_area(page, 1).locator(".nbtrain-progress")
    label = progress.locator(".nbtrain-progress-label")
    expect(label, "the 2-process fit never reached epoch 3").to_have_text(
        re.compile(r"^it \d+/\d+ · epoch ([3-9]|\d\d+)/"), timeout=120_000
    )
    progress.locator(".nbtrain-stop").click()
    expect(progress.locator(".nbtrain-progress-status")).to_contain_text("stopped", timeout=30_000)
    run_and_wait(page, 2)
    report = output_text(page, 2)
    assert value(report, "STATUS") == "stopped"
    assert 0 < int(value(report, "IT")) < int(value(report, "PLANNED"))
    assert value(report, "WORKERS") == "0"  # no rank outlives the cell
