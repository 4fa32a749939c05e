#!/usr/bin/env python3
"""Set up a virtual environment and run nbtrain's main job or its tests.

Needs only python3 (3.10+):

    python3 scripts/dev.py run     # set up, then train on the offline default data
    python3 scripts/dev.py test    # set up, then run every test

Extra arguments go to the job (``run``) or to pytest (``test``). The environment
lives in ``.venv`` beside this folder; ``NBTRAIN_VENV`` names another.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("NBTRAIN_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def sh(*args: str | os.PathLike) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)


def setup(extras: str) -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"nbtrain needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating a virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    sh(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    sh(PY, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]" if extras else ".")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        setup("")
        sh(PY, "-m", "nbtrain.demo", *rest)
    else:
        setup("test")
        sh(PY, "-m", "pytest", *rest)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as e:
        sys.exit(e.returncode)
