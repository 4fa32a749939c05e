#!/usr/bin/env python3
"""Set up a virtual environment and run nbtrain's main job, its lint or its tests.

Needs only python3 (3.10+):

    python3 scripts/dev.py run     # set up, then run the checklist notebook on offline data
    python3 scripts/dev.py test    # set up, lint (ruff), type-check (mypy), run every test (pytest)
    python3 scripts/dev.py lint    # set up, then lint only

Extra arguments go to the job (``run``) or to pytest (``test``). The environment
lives in ``.venv`` beside this folder; ``NBTRAIN_VENV`` names another.

``test`` also needs a browser for ``tests/browser/``: Debian's Chromium at
``/usr/bin/chromium`` (or ``$CHROMIUM_PATH``). Run as root, it is installed with
apt-get when missing. Without it the browser tests skip, except under ``CI=true``,
where they fail, so a CI run cannot pass without them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("NBTRAIN_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
LINTED = ("nbtrain", "tests", "bench")
PYTEST_NO_TESTS = 5  # pytest's exit code when it collected nothing


def sh(*args: str | os.PathLike, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, env=env)


def step(name: str, started: float) -> None:
    print(f"== {name}: {time.monotonic() - started:.0f} s", flush=True)


def setup(extras: str) -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - this script must run on any python3
        sys.exit(f"nbtrain needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating a virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    # setuptools announces every editable install with an "Editable installation."
    # notice (a UserWarning that pip re-emits as a BuildBackendWarning, even with
    # --quiet); it is information, not a problem. Only that message is silenced.
    warnings = [os.environ.get("PYTHONWARNINGS", ""), "ignore:Editable installation:UserWarning"]
    env = dict(os.environ, PYTHONWARNINGS=",".join(w for w in warnings if w))
    sh(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip", env=env)
    sh(PY, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]" if extras else ".", env=env)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}


def ensure_chromium() -> None:
    """Install Debian's Chromium for the browser tests when it is missing and we may."""
    if os.access(CHROMIUM, os.X_OK):
        print(f"browser tests: using {CHROMIUM}", flush=True)
        return
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if CHROMIUM == "/usr/bin/chromium" and is_root and shutil.which("apt-get"):
        print("browser tests: installing Debian's Chromium (apt-get)", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            sh("apt-get", "update", "-qq", env=env)
            sh("apt-get", "install", "-y", "-qq", "chromium", env=env)
            return
        except subprocess.CalledProcessError:
            if in_ci():
                raise
            print("browser tests: apt-get failed; they will be skipped", flush=True)
            return
    outcome = "fail (CI=true)" if in_ci() else "be skipped"
    print(f"browser tests: no Chromium at {CHROMIUM} and cannot install it here "
          f"(needs root and apt-get); they will {outcome}. "
          "Install it with: sudo apt-get install -y chromium", flush=True)


def lint() -> None:
    sh(PY, "-m", "ruff", "check", *LINTED)


def typecheck() -> None:
    sh(PY, "-m", "mypy")  # what and how: [tool.mypy] in pyproject.toml


def test(pytest_args: list[str]) -> int:
    t0 = time.monotonic()
    setup("test")
    ensure_chromium()
    step("setup", t0)
    t1 = time.monotonic()
    lint()
    typecheck()
    step("lint and type check", t1)
    t2 = time.monotonic()
    cmd = [str(PY), "-m", "pytest", *pytest_args]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    step("pytest", t2)
    step("total", t0)
    if rc == PYTEST_NO_TESTS:
        print("pytest collected no tests: that is a failure, not a pass", flush=True)
    return rc


def run_job(args: list[str]) -> int:
    """Run the main job and wait for it, however long it takes.

    Ctrl-C reaches the job as well (same terminal): it interrupts the kernel, saves the
    weights and writes the notebook, so this process keeps waiting instead of dying
    (``subprocess.run`` would kill the job on KeyboardInterrupt). SIGTERM is passed on.
    """
    cmd = [str(PY), "-m", "nbtrain.notebook_job", *args]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test", "lint"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        setup("lab")
        return run_job(rest)
    elif command == "lint":
        setup("test")
        lint()
    else:
        return test(rest)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as e:
        sys.exit(e.returncode)
