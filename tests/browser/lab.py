"""Helpers for driving a notebook in JupyterLab 4 with Playwright (see ../shared/BROWSER-TESTS.md).

Cells are found by index with ``.nth(i)``: the fixtures turn JupyterLab's virtual scrolling
off, so every cell is in the DOM.
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat

# The kernel is really idle (the toolbar's indicator reads "idle" before any kernel exists).
KERNEL_READY_JS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const sc = w && w.sessionContext, k = sc && sc.session && sc.session.kernel;
  return !!(w && w.context && w.context.isReady && sc.isReady && k
            && k.connectionStatus === 'connected' && k.status === 'idle'); }"""

# Every code cell shows an execution count: [n], not [ ] or [*].
ALL_EXECUTED_JS = """() => {
  const p = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')];
  return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }"""

KERNEL_IDLE_JS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!(k && k.status === 'idle'); }"""


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: its URL, token, and the folder it serves."""

    base: str
    token: str
    root: Path

    def url(self, notebook: str) -> str:
        # &reset: ignore any saved workspace layout
        return f"{self.base}/lab/tree/{notebook}?token={self.token}&reset"


def write_notebook(root: Path, name: str, cells: list[str]) -> str:
    """Write code cells as a notebook with the python3 kernelspec (no kernel picker)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, str(root / name))
    return name


def open_notebook(page, lab: Lab, name: str) -> None:
    """Open a notebook and wait until its kernel is connected and idle."""
    page.goto(lab.url(name))
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
    page.wait_for_function(KERNEL_READY_JS, timeout=90_000)


def cell(page, i: int):
    return page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(i)


def output_area(page, i: int):
    """Cell ``i``'s output area (not ``.jp-OutputArea``: an ipywidgets.Output adds another)."""
    return cell(page, i).locator(".jp-Cell-outputArea")


def output_text(page, i: int) -> str:
    return output_area(page, i).inner_text()


def run_all(page) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def run_cell(page, i: int) -> None:
    """Select cell ``i`` by its prompt (command mode) and run it in place."""
    cell(page, i).locator(".jp-InputPrompt").click()
    page.keyboard.press("Control+Enter")


def prompt_number(page, i: int) -> int | None:
    m = re.search(r"\[(\d+)\]", cell(page, i).locator(".jp-InputPrompt").inner_text())
    return int(m.group(1)) if m else None


def wait_all_executed(page, timeout_s: float = 180) -> None:
    page.wait_for_function(ALL_EXECUTED_JS, timeout=timeout_s * 1000)


def wait_kernel_idle(page, timeout_s: float = 120) -> None:
    page.wait_for_function(KERNEL_IDLE_JS, timeout=timeout_s * 1000)


def run_and_wait(page, i: int, timeout_s: float = 120) -> None:
    """Run cell ``i`` and wait until its prompt shows a new execution count."""
    before = prompt_number(page, i)
    run_cell(page, i)
    page.wait_for_function(
        """([i, before]) => {
          const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[i];
          const m = c && /\\[(\\d+)\\]/.exec(c.querySelector('.jp-InputPrompt').textContent);
          return !!m && Number(m[1]) !== before; }""",
        arg=[i, before], timeout=timeout_s * 1000,
    )


def rerun_and_read(page, i: int, pattern: str, timeout_s: float = 60) -> re.Match:
    """Run cell ``i`` again and return the match of ``pattern`` in its fresh output."""
    run_and_wait(page, i, timeout_s)
    text = output_text(page, i)
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in cell {i}'s output: {text!r}"
    return m


def shutdown_kernels(base: str, token: str) -> None:
    """Delete every session (and its kernel): frees the CPU between tests."""
    headers = {"Authorization": f"token {token}"}
    try:
        request = urllib.request.Request(f"{base}/api/sessions", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as r:
            sessions = json.load(r)
        for s in sessions:
            request = urllib.request.Request(
                f"{base}/api/sessions/{s['id']}", method="DELETE", headers=headers
            )
            urllib.request.urlopen(request, timeout=10).close()
    except OSError:
        pass  # the server is already gone
