"""The LR-finder selector: the range test's curve, its suggestions, and a click to pick.

:class:`LRFinderPlot` shows the smoothed loss against the rate (log scale) as a PNG in an
``ipywidgets.Image``; an ``ipyevents`` click on it picks a rate. Why a PNG and not an
ipympl canvas: the curve never changes after the sweep, only the selection mark, so a
static image redrawn on a pick (~30 ms) is all it needs; it has no backend to switch,
streams nothing while idle, and the same PNG is the ``image/png`` fallback of
nbconvert and of terminals. The pixel-to-rate transform is the figure's own
(:mod:`nbtrain.views.figure`), on a figure of fixed pixel size.

Every pick is snapped to the nearest swept rate and written at once to
``namespace[into]`` (the user's variable, ``lr`` by default). Programmatic twins:
``plot.pick(lr)``, ``plot.use_suggestion()``, ``plot.click_at(x_px, y_px)``, or simply
``plot.selected_lr = 1e-3``. :class:`LRFinderReport` is the widget-free version.
"""

from __future__ import annotations

import base64
import math
from collections.abc import MutableMapping
from html import escape
from typing import Any

import ipywidgets as _W
import traitlets as _T

from nbtrain.core.lr_range import DEFAULT_RULE, LRRangeResult
from nbtrain.views.figure import (
    axes_box_px,
    data_to_pixel,
    new_figure,
    pixel_to_data,
    png_bytes,
)
from nbtrain.views.format import fmt_rate

WIDTH, HEIGHT = 640, 360
RULE_COLORS = {"valley": "#2ca02c", "steep": "#ff7f0e", "minimum": "#9467bd", "slide": "#8c564b"}


class LRFinderFigure:
    """The curve of one range test, drawn once; only the selection mark moves.

    Parameters
    ----------
    result
        What :meth:`nbtrain.Learner.lr_find` returned.
    """

    def __init__(self, result: LRRangeResult) -> None:
        self.result = result
        self.fig = fig = new_figure(WIDTH, HEIGHT)
        # A fixed axes box (no tight layout): pixel <-> rate stays the same on redraws.
        self.ax = ax = fig.add_axes((0.1, 0.14, 0.58, 0.76))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("smoothed loss")
        ax.grid(True, which="major", alpha=0.3)
        lrs, losses = result.lrs, result.losses
        if len(lrs) >= 2:
            ax.plot(lrs, losses, color="#1f77b4", lw=1.6, label="smoothed loss")
            self._set_ylim(losses)
            ax.set_xlim(lrs[0], lrs[-1])
        else:
            ax.text(0.5, 0.5, "too few points to draw", ha="center", transform=ax.transAxes)
        for name, lr in result.suggestions.items():
            if lr is None or not lrs:
                continue
            i = self.index_of(lr)
            marker = "o" if name == result.rule else "v"
            ax.plot(
                [lrs[i]],
                [losses[i]],
                marker,
                ms=8,
                color=RULE_COLORS.get(name, "k"),
                label=f"{name} {lr:.1e}" + (" (default)" if name == result.rule else ""),
            )
        self._selected = ax.axvline(lrs[0] if lrs else 1.0, color="#d62728", lw=1.5)
        self._selected_text = ax.text(
            0,
            1.01,
            "",
            color="#d62728",
            fontsize=8,
            ha="center",
            va="bottom",
            transform=ax.get_xaxis_transform(),
        )
        self._selected.set_visible(False)
        fig.suptitle(
            f"LR range test: {len(lrs)} steps, stopped: {result.stop_reason}",
            x=0.1,
            ha="left",
            fontsize=10,
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)

    def _set_ylim(self, losses: list[float]) -> None:
        # The diverging tail would squash the useful part: cap the top near the start.
        finite = [v for v in losses if math.isfinite(v)]
        lo, hi = min(finite), max(finite)
        start = finite[min(len(finite) - 1, max(1, len(finite) // 10))]
        top = min(hi, start + 1.5 * max(start - lo, 1e-8))
        pad = 0.05 * max(top - lo, 1e-8)
        self.ax.set_ylim(lo - pad, top + pad)

    # ---- geometry ----------------------------------------------------------------
    def index_of(self, lr: float) -> int:
        """Index of the swept rate nearest to ``lr`` on the log scale."""
        lrs = self.result.lrs
        if not lrs:
            raise ValueError("the range test recorded no rates")
        target = math.log(lr)
        return min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - target))

    def snap(self, lr: float) -> float:
        """The swept rate nearest to ``lr``."""
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"a learning rate must be a finite number > 0, got {lr!r}")
        return self.result.lrs[self.index_of(lr)]

    def lr_at(self, x_px: float, y_px: float) -> float | None:
        """The swept rate under a click at PNG pixel ``(x_px, y_px)``; None outside the
        plotting area's width (a click in the margins or the legend picks nothing)."""
        left, _, width, _ = axes_box_px(self.ax)
        if not self.result.lrs or not left <= x_px <= left + width:
            return None
        lr, _ = pixel_to_data(self.ax, x_px, y_px)
        return self.snap(lr)

    def pixel_of(self, lr: float) -> tuple[float, float]:
        """PNG pixel of the curve's point at the swept rate nearest ``lr`` (for tests
        that click the plot in a browser)."""
        i = self.index_of(lr)
        return data_to_pixel(self.ax, self.result.lrs[i], self.result.losses[i])

    # ---- rendering ---------------------------------------------------------------
    def png(self, selected: float | None = None) -> bytes:
        """The figure as PNG, with a vertical line at ``selected``."""
        self._selected.set_visible(selected is not None)
        self._selected_text.set_visible(selected is not None)
        if selected is not None:
            self._selected.set_xdata([selected, selected])
            self._selected_text.set_x(selected)
            self._selected_text.set_text(f"picked {selected:.1e}")
        return png_bytes(self.fig)


def rule_of(result: LRRangeResult, lr: float | None) -> str | None:
    """The suggestion rule whose rate is ``lr`` (the default rule first), or None."""
    if lr is None:
        return None
    names = [result.rule] + [n for n in result.suggestions if n != result.rule]
    for name in names:
        value = result.suggestions.get(name)
        if value is not None and math.isclose(value, lr, rel_tol=1e-9):
            return name
    return None


def summary(result: LRRangeResult, selected: float | None = None, into: str | None = None) -> str:
    """The text version of the selector (terminal, nbconvert, logs)."""
    lrs = result.lrs
    span = f"{lrs[0]:.1e} to {lrs[-1]:.1e}" if lrs else "no usable rate"
    lines = [
        f"LR range test: {len(lrs)} steps from {span} (stopped: {result.stop_reason}), "
        f"{result.seconds:.1f} s"
    ]
    shown = [
        f"{name} {fmt_rate(lr)}" + (" (default)" if name == result.rule else "")
        for name, lr in result.suggestions.items()
        if lr is not None
    ]
    lines.append("suggestions: " + (" · ".join(shown) if shown else "none"))
    if selected is not None:
        rule = rule_of(result, selected)
        how = f"{rule} suggestion" if rule else "picked on the plot"
        where = f" -> stored in `{into}`" if into else ""
        lines.append(f"lr = {fmt_rate(selected)} ({how}){where}")
    else:
        lines.append("no rate picked; click the plot or pass --lr to %fit_cycles")
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


class LRFinderReport:
    """Widget-free selector: the summary as text and the plot as PNG (display() it)."""

    def __init__(
        self, result: LRRangeResult, selected: float | None = None, into: str | None = None
    ) -> None:
        self.result, self.selected, self.into = result, selected, into

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        png = LRFinderFigure(self.result).png(self.selected)
        return {
            "text/plain": summary(self.result, self.selected, self.into),
            "image/png": base64.b64encode(png).decode("ascii"),
        }

    def __repr__(self) -> str:
        return summary(self.result, self.selected, self.into)


class LRFinderPlot(_W.VBox):
    """Click-to-pick LR selector (ipywidgets).

    Parameters
    ----------
    result
        What :meth:`nbtrain.Learner.lr_find` returned.
    namespace
        Where the picked rate is written (the user's namespace); None writes nowhere.
    into
        The variable name in ``namespace``.

    CSS hooks: ``nbtrain-lr-finder`` (the box), ``nbtrain-lr-plot`` (the image),
    ``nbtrain-lr-use-suggestion`` (button), ``nbtrain-lr-picked`` (the picked rate),
    ``nbtrain-lr-notes``.
    """

    selected_lr = _T.Float(None, allow_none=True, help="the picked rate (snapped to the sweep)")
    suggestion = _T.Float(None, allow_none=True, read_only=True, help="the default rule's rate")
    rule = _T.Unicode(DEFAULT_RULE, help="the default suggestion rule")
    picked_by = _T.Unicode("", help="which rule the pick matches, or 'click'")
    into = _T.Unicode("lr", help="the variable the pick is written to")

    def __init__(
        self,
        result: LRRangeResult,
        *,
        namespace: MutableMapping[str, Any] | None = None,
        into: str = "lr",
        **kwargs: Any,
    ) -> None:
        self.result = result
        self.figure = LRFinderFigure(result)
        self.namespace = namespace
        self.image = _W.Image(format="png", width=str(WIDTH), height=str(HEIGHT))
        self.image.layout = _W.Layout(width=f"{WIDTH}px", height=f"{HEIGHT}px")
        self.image.add_class("nbtrain-lr-plot")
        self.use_button = _W.Button(
            description="Use suggestion",
            icon="check",
            disabled=result.suggestion is None,
            tooltip=f"pick the {result.rule} suggestion",
        )
        self.use_button.add_class("nbtrain-lr-use-suggestion")
        self.use_button.on_click(lambda _: self.use_suggestion())
        self.picked = _W.HTML()
        self.picked.add_class("nbtrain-lr-picked")
        self.notes = _W.HTML("<br>".join(f"&#9888; {escape(n)}" for n in result.notes))
        self.notes.add_class("nbtrain-lr-notes")
        super().__init__(
            children=[self.image, _W.HBox([self.use_button, self.picked]), self.notes], **kwargs
        )
        self.add_class("nbtrain-lr-finder")
        self.set_trait("suggestion", result.suggestion)
        self.rule = result.rule
        self.into = into
        self._events = self._watch_clicks()
        self.observe(self._on_selected, names="selected_lr")
        if result.suggestion is not None:
            self.selected_lr = result.suggestion
        else:
            self._on_selected({"new": None})

    def _watch_clicks(self) -> Any:
        try:
            from ipyevents import Event
        except ImportError:  # pragma: no cover - ipyevents is a dependency
            return None
        event = Event(source=self.image, watched_events=["click"])
        event.on_dom_event(self._on_dom_click)
        return event

    def _on_dom_click(self, event: dict[str, Any]) -> None:
        # arrayX/arrayY: pixel of the PNG itself, already corrected for CSS scaling.
        if "arrayX" in event and "arrayY" in event:
            self.click_at(float(event["arrayX"]), float(event["arrayY"]))

    @_T.validate("selected_lr")
    def _snap(self, proposal: dict[str, Any]) -> float | None:
        value = proposal["value"]
        if value is None or not self.result.lrs:
            return value
        try:
            return self.figure.snap(value)
        except ValueError as exc:
            raise _T.TraitError(str(exc)) from None

    def _on_selected(self, change: dict[str, Any]) -> None:
        lr = change["new"]
        rule = rule_of(self.result, lr)
        self.picked_by = rule or ("click" if lr is not None else "")
        self.image.value = self.figure.png(lr)
        if lr is None:
            self.picked.value = "no rate picked yet: click the plot"
            return
        if self.namespace is not None and self.into:
            self.namespace[self.into] = lr
        how = f"{rule} suggestion" if rule else "picked on the plot"
        where = f" &rarr; <code>{self.into}</code>" if self.namespace is not None else ""
        self.picked.value = f"<b>lr = {fmt_rate(lr)}</b> ({how}){where}"

    # ---- programmatic twins -----------------------------------------------------
    def pick(self, lr: float) -> float | None:
        """Pick ``lr`` (snapped to the nearest swept rate), as a click would; returns it."""
        self.selected_lr = lr
        return self.selected_lr

    def use_suggestion(self) -> float | None:
        """Pick the default rule's suggestion (the button); returns it."""
        if self.suggestion is not None:
            self.selected_lr = self.suggestion
        return self.selected_lr

    def click_at(self, x_px: float, y_px: float) -> float | None:
        """A click at PNG pixel ``(x_px, y_px)``; a click outside the axes does nothing."""
        lr = self.figure.lr_at(x_px, y_px)
        if lr is not None:
            self.selected_lr = lr
        return lr

    def pixel_of(self, lr: float) -> tuple[float, float]:
        """Where to click (PNG pixels from the image's top-left) to pick ``lr``."""
        return self.figure.pixel_of(lr)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = summary(self.result, self.selected_lr, self.into)
        data["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return data
