"""The harness itself: a plain ipywidgets Button in JupyterLab reaches the kernel when clicked."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.lab import (
    open_notebook,
    output_area,
    rerun_and_read,
    run_all,
    wait_all_executed,
    write_notebook,
)

CELLS = [
    "import ipywidgets as W\n"
    "clicks = 0\n"
    "def on_click(_):\n"
    "    global clicks\n"
    "    clicks += 1\n"
    "button = W.Button(description='Smoke')\n"
    "button.add_class('smoke-button')\n"
    "button.on_click(on_click)\n"
    "button",
    'print(f"CLICKS={clicks}")',
]


def test_button_click_reaches_kernel(jupyter_lab, page):
    name = write_notebook(jupyter_lab.root, "smoke.ipynb", CELLS)
    open_notebook(page, jupyter_lab, name)
    run_all(page)
    wait_all_executed(page)
    expect(output_area(page, 1)).to_contain_text("CLICKS=0")
    button = output_area(page, 0).locator(".smoke-button")
    button.click()
    button.click()
    assert rerun_and_read(page, 1, r"CLICKS=(\d+)").group(1) == "2"
