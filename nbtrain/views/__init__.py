"""Views of nbtrain: they observe core results and events and never train.

- :class:`LRFinderPlot` / :class:`LRFinderReport`: the LR-finder selector (widget / text);
- :class:`FreezePanel` / :class:`LayersReport`: the layer-freeze toggle panel (widget / text);
- :class:`ProgressView` / :class:`TextProgress`: live SGDR progress (widget / text);
- :mod:`nbtrain.views.frontend`: which of the two each display uses.

Names are imported on first use, so the text views work without importing ipywidgets.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "LRFinderPlot": "lr_plot",
    "LRFinderReport": "lr_plot",
    "FreezePanel": "freeze_panel",
    "LayersReport": "freeze_panel",
    "ProgressView": "progress",
    "TextProgress": "text",
    "use_widgets": "frontend",
    "widgets_available": "frontend",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'nbtrain.views' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nbtrain.views.{_WHERE[name]}"), name)
