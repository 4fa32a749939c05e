"""Fixtures for the browser tests: JupyterLab on 127.0.0.1 and headless Debian Chromium.

The recipe and its pitfalls are in ``../shared/BROWSER-TESTS.md``. Without Chromium (or the
``playwright`` package) these tests skip with the reason, except under ``CI=true`` (or
``REQUIRE_BROWSER=1``), where they fail: CI installs the browser, so missing it is a bug.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser.lab import Lab, shutdown_kernels

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LAB_START_TIMEOUT_S = 90

# The fixtures are package-scoped on purpose: Playwright's sync API keeps its event loop
# marked as running while it is open, so asyncio.run() (nbclient, async magics) in any later
# test of the session would fail. Package scope closes it when tests/browser/ is done.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.browser)


def _required() -> bool:
    ci = os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}
    return ci or os.environ.get("REQUIRE_BROWSER") == "1"


def _no_browser(reason: str) -> None:
    if _required():
        pytest.fail(f"{reason} (browser tests are required under CI=true / REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="package")
def chromium_path() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _no_browser("python package 'playwright' is not installed (pip install -e '.[test]')")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _no_browser(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture(scope="package")
def jupyter_lab(tmp_path_factory: pytest.TempPathFactory, chromium_path: str):
    """A JupyterLab server on a free port with a random token, in isolated Jupyter dirs.

    Yields a :class:`~tests.browser.lab.Lab` (``base``, ``token``, ``root``: the folder it
    serves, where tests write notebooks). Shut down through the REST API, then by signal.
    """
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _no_browser("jupyterlab is not installed (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("lab")
    home = tmp_path_factory.mktemp("labhome")
    settings = home / "settings"
    _write_json(
        settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
    )
    # every cell in the DOM, no virtual scrolling: .nth(i) always finds cell i
    _write_json(
        settings / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings",
        {"windowingMode": "none"},
    )
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),  # no user-level kernelspec can shadow the venv's
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        NBTRAIN_CACHE=str(home / "nbtrain-cache"),  # feature caches stay in the temp dir
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
    )
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
        "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={token}", "--allow-root",
        "--ServerApp.terminals_enabled=False", f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, for the readiness checks
    ]
    log_path = home / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(proc, base, token, log_path)
            yield Lab(base=base, token=token, root=root)
        finally:
            _stop_lab(proc, base, token)


def _wait_until_up(proc: subprocess.Popen, base: str, token: str, log_path: Path) -> None:
    deadline = time.monotonic() + LAB_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited ({proc.returncode}):\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"jupyter lab not up in {LAB_START_TIMEOUT_S} s:\n{log_path.read_text()}")
        time.sleep(0.3)


def _stop_lab(proc: subprocess.Popen, base: str, token: str) -> None:
    if proc.poll() is None:
        shutdown_kernels(base, token)
        request = urllib.request.Request(
            f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
        )
        with contextlib.suppress(OSError):
            urllib.request.urlopen(request, timeout=5).close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="package")
def browser(chromium_path: str, tmp_path_factory: pytest.TempPathFactory):
    """A headless Chromium context (empty profile) driven by Playwright."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser, jupyter_lab: Lab):
    """A fresh tab; every kernel is shut down afterwards, so tests don't share CPU or state."""
    p = browser.new_page()
    p.set_default_timeout(30_000)
    try:
        yield p
    finally:
        p.close()
        shutdown_kernels(jupyter_lab.base, jupyter_lab.token)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep a screenshot and the DOM of a failing browser test in .pytest_cache/browser-failures."""
    outcome = yield
    rep = outcome.get_result()
    page = getattr(item, "funcargs", {}).get("page")
    if rep.when != "call" or not rep.failed or page is None:
        return
    out = Path(item.config.rootpath) / ".pytest_cache" / "browser-failures"
    out.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(out / f"{item.name}.png"))
        (out / f"{item.name}.html").write_text(page.content())
        rep.sections.append(("browser artefacts", f"screenshot and DOM in {out}"))
    except Exception as exc:  # the page may be gone; the failure itself matters more
        rep.sections.append(("browser artefacts", f"none: {exc}"))
