"""Matplotlib figures rendered to PNG bytes, without touching the user's backend.

A :class:`matplotlib.figure.Figure` with its own Agg canvas never goes through
``pyplot``, so ``%matplotlib widget``/``inline`` and any open figures stay as they were.
Figures have a fixed size in pixels and no ``bbox_inches="tight"``, so a pixel of the
PNG maps to data coordinates through the axes' transform (the LR finder's click needs it).
"""

from __future__ import annotations

import io
from typing import Any

DPI = 100


def new_figure(width_px: int, height_px: int, *, dpi: int = DPI) -> Any:
    """A Figure of exactly ``width_px`` x ``height_px`` pixels on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    """Render ``fig`` to PNG. Compression level 1: about 3x faster to encode than the
    default and only ~20% larger for line plots."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def canvas_png(canvas: Any) -> bytes:
    """PNG of what an Agg canvas holds now, without drawing again (for blitted frames)."""
    from PIL import Image

    width, height = canvas.get_width_height()
    image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="png", compress_level=1)
    return buf.getvalue()


def size_px(fig: Any) -> tuple[int, int]:
    """``(width, height)`` of the rendered PNG in pixels."""
    width, height = fig.get_size_inches() * fig.dpi
    return round(width), round(height)


def data_to_pixel(ax: Any, x: float, y: float) -> tuple[float, float]:
    """Data coordinates to PNG pixels (origin top-left, y grows downwards)."""
    _, height = size_px(ax.figure)
    px, py = ax.transData.transform((x, y))
    return float(px), float(height - py)


def pixel_to_data(ax: Any, px: float, py: float) -> tuple[float, float]:
    """PNG pixels (origin top-left) to data coordinates of ``ax``."""
    _, height = size_px(ax.figure)
    x, y = ax.transData.inverted().transform((px, height - py))
    return float(x), float(y)


def axes_box_px(ax: Any) -> tuple[float, float, float, float]:
    """``(left, top, width, height)`` of the axes' plotting area in PNG pixels."""
    width, height = size_px(ax.figure)
    box = ax.get_position()
    return box.x0 * width, (1 - box.y1) * height, box.width * width, box.height * height
