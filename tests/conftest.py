"""Fixtures shared across the test folders."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell


@pytest.fixture(scope="module")
def ip():
    """A real IPython shell with nbtrain's magics loaded (unloaded after the module)."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbtrain")
    yield shell
    shell.run_line_magic("unload_ext", "nbtrain")
