"""binder/ must build what pyproject.toml describes: checked without building it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch-cpu": "torch", "pytorch": "torch"}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment() -> dict:
    return yaml.safe_load((ROOT / "binder" / "environment.yml").read_text())


def conda_pins(environment: dict) -> dict[str, str]:
    pins = {}
    for dep in environment["dependencies"]:
        if not isinstance(dep, str):
            continue
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", dep)
        assert m, dep
        pins[CONDA_TO_PYPI.get(m.group(1), m.group(1))] = m.group(2).strip()
    return pins


def minimum(spec: str) -> Version | None:
    lows = [Version(s.version) for s in SpecifierSet(spec) if s.operator in (">=", "==")]
    return max(lows) if lows else None


def test_python_version_satisfies_requires_python(pyproject, environment):
    python = conda_pins(environment)["python"].lstrip("=")
    assert Version(python + ".0") in SpecifierSet(pyproject["project"]["requires-python"])


def test_conda_pins_are_at_least_what_pyproject_asks(pyproject, environment):
    pins = conda_pins(environment)
    runtime = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    assert "torch" in pins and "torchvision" in pins and "ipywidgets" in pins
    for req in runtime:
        if pins.get(req.name):
            ours, theirs = minimum(pins[req.name]), minimum(str(req.specifier))
            assert ours is not None and (theirs is None or ours >= theirs), (req, pins[req.name])


def test_post_build_installs_this_package_with_an_existing_extra(pyproject):
    post = ROOT / "binder" / "postBuild"
    assert os.access(post, os.X_OK)
    text = post.read_text()
    m = re.search(r'pip install [^\n]*-e "?\.(?:\[(\w+)\])?"?', text)
    assert m, "postBuild must pip install -e . (this repository)"
    if m.group(1):
        assert m.group(1) in pyproject["project"]["optional-dependencies"]
    assert "set -e" in text


def test_the_notebook_binder_opens_exists_and_runs_offline():
    notebook = ROOT / "notebooks" / "checklist.ipynb"
    assert notebook.exists()
    # Binder has no ../shared: the notebook must fall back to generated data by itself.
    assert "make_shapes_dataset" in notebook.read_text()
