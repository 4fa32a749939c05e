"""The layer-freeze toggle panel: one row per layer group, a toggle that acts at once.

A row shows the group's name, its parameter count, a trainable toggle, the mode its
BatchNorm layers will run in at the next fit, and its rate multiplier in the last fit
(``lr[i] / max(lr)``, e.g. 1/9, 1/3, 1 for differential rates). A toggle calls
:meth:`nbtrain.Learner.set_trainable` at once: ``requires_grad`` changes, and since every
layer group keeps its own optimizer param group (frozen parameters simply have no
gradient), the optimizer, momentum included, needs no rebuilding; the next fit uses it.

Programmatic twins: ``panel.toggle(i)``, ``panel.set_trainable(i, flag)``,
``panel.freeze_to(n)``, ``panel.freeze()``, ``panel.unfreeze()``,
``panel.set_bn_frozen(flag)``; ``panel.refresh()``
re-reads the learner after changes made elsewhere (the magics refresh live panels).
"""

from __future__ import annotations

import weakref
from html import escape
from typing import Any

import ipywidgets as W
import traitlets as T

from nbtrain.views.format import fmt_count, text_table

COLUMNS = ["group", "name", "params", "trainable", "BatchNorm", "lr x"]

# Panels on screen, so %freeze/%unfreeze and fits can refresh them (weak: a panel that
# is gone from every output is dropped).
_live: weakref.WeakSet[FreezePanel] = weakref.WeakSet()


def is_fitting(learn: Any) -> bool:
    """Whether ``learn`` is inside ``fit_cycles`` right now (toggles wait until it ends)."""
    return getattr(learn, "running", None) is not None


def bn_mode(learn: Any, i: int) -> str:
    """How group ``i``'s BatchNorm layers run in the next fit: train, eval or ``-``."""
    group = learn.groups[i]
    if not group.batchnorms():
        return "-"
    if getattr(learn, "bn_frozen", False):  # learn.bn_freeze(): every group keeps its stats
        return "eval"
    if group.trainable or getattr(learn, "train_bn", False):
        return "train"
    return "eval"


def rate_multipliers(learn: Any) -> list[float | None]:
    """Each group's rate relative to the highest in the last fit; None before any fit."""
    fits = getattr(learn, "fits", None)
    if not fits:
        return [None] * len(learn.groups)
    lrs = fits[-1].schedule.lrs
    top = max(lrs) or 1.0
    return [lr / top for lr in lrs] if len(lrs) == len(learn.groups) else [None] * len(lrs)


def layer_rows(learn: Any) -> list[list[str]]:
    """The panel's rows as text (also the text fallback of ``%layers``)."""
    rows = []
    multipliers = rate_multipliers(learn)
    for i, group in enumerate(learn.groups):
        m = multipliers[i] if i < len(multipliers) else None
        rows.append(
            [
                str(i),
                group.name,
                fmt_count(group.n_params),
                "yes" if group.trainable else "frozen",
                bn_mode(learn, i),
                "-" if m is None else f"{m:.3g}",
            ]
        )
    return rows


def layers_summary(learn: Any) -> str:
    """``2 of 3 groups frozen; 3,843 of 3.37M parameters train; precompute: on (...)``."""
    groups = learn.groups
    frozen = sum(not g.trainable for g in groups)
    training = sum(g.n_params for g in groups if g.trainable)
    total = sum(g.n_params for g in groups)
    text = (
        f"{frozen} of {len(groups)} groups frozen; "
        f"{fmt_count(training)} of {fmt_count(total)} parameters train"
    )
    if getattr(learn, "bn_frozen", False):
        text += "; BatchNorm statistics frozen (bn_freeze)"
    if getattr(learn, "precompute", False):
        cache = (
            "the next fit trains the head on cached activations"
            if learn.uses_cache
            else "unused while the body trains"
        )
        text += f"; precompute on ({cache})"
    return text


def layers_text(learn: Any) -> str:
    return text_table(COLUMNS, layer_rows(learn)) + "\n" + layers_summary(learn)


class LayersReport:
    """Widget-free table of the layer groups (display() it)."""

    def __init__(self, learn: Any) -> None:
        self.learn = learn

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": layers_text(self.learn)}

    def __repr__(self) -> str:
        return layers_text(self.learn)


class FreezePanel(W.VBox):
    """Toggle each layer group of a learner between trainable and frozen.

    CSS hooks: ``nbtrain-freeze-panel`` (the box), ``nbtrain-layer-row`` (each row,
    plus ``nbtrain-layer-row-<i>``), ``nbtrain-layer-toggle`` (each toggle),
    ``nbtrain-freeze-all`` / ``nbtrain-unfreeze-all`` (buttons), ``nbtrain-bn-freeze``
    (checkbox), ``nbtrain-layers-summary``.
    """

    trainable = T.List(T.Bool(), help="whether each layer group trains")
    bn_frozen = T.Bool(False, help="every BatchNorm keeps its running statistics")
    summary = T.Unicode(help="one-line summary of the freeze state")
    busy = T.Bool(False, help="a fit is running: toggles wait until it ends")

    def __init__(self, learn: Any, **kwargs: Any) -> None:
        self.learn = learn
        self._syncing = False
        self.toggles: list[W.ToggleButton] = []
        self.labels: list[list[W.Label]] = []
        rows = [self._header()]
        for i in range(len(learn.groups)):
            rows.append(self._row(i))
        self.freeze_button = W.Button(description="Freeze body", tooltip="train the head only")
        self.freeze_button.add_class("nbtrain-freeze-all")
        self.freeze_button.on_click(lambda _: self.freeze())
        self.unfreeze_button = W.Button(description="Unfreeze all", tooltip="train every group")
        self.unfreeze_button.add_class("nbtrain-unfreeze-all")
        self.unfreeze_button.on_click(lambda _: self.unfreeze())
        self.bn_toggle = W.Checkbox(
            description="freeze BatchNorm statistics (bn_freeze)", indent=False
        )
        self.bn_toggle.add_class("nbtrain-bn-freeze")
        self.bn_toggle.observe(lambda change: self._on_bn(change["new"]), names="value")
        self.summary_html = W.HTML()
        self.summary_html.add_class("nbtrain-layers-summary")
        super().__init__(
            children=[
                *rows,
                W.HBox([self.freeze_button, self.unfreeze_button, self.bn_toggle]),
                self.summary_html,
            ],
            **kwargs,
        )
        self.add_class("nbtrain-freeze-panel")
        self.refresh()
        _live.add(self)

    # ---- building -----------------------------------------------------------------
    @staticmethod
    def _cell(text: str, width: str, *, bold: bool = False) -> W.HTML:
        text = escape(text)
        return W.HTML(f"<b>{text}</b>" if bold else text, layout=W.Layout(width=width))

    _WIDTHS = ("50px", "140px", "90px", "110px", "90px", "60px")

    def _header(self) -> W.HBox:
        return W.HBox(
            [self._cell(c, w, bold=True) for c, w in zip(COLUMNS, self._WIDTHS, strict=True)]
        )

    def _row(self, i: int) -> W.HBox:
        toggle = W.ToggleButton(layout=W.Layout(width=self._WIDTHS[3]))
        toggle.add_class("nbtrain-layer-toggle")
        toggle.observe(lambda change, i=i: self._on_toggle(i, change["new"]), names="value")
        self.toggles.append(toggle)
        cells = [self._cell("", w) for w in self._WIDTHS]
        self.labels.append(cells)
        row = W.HBox([*cells[:3], toggle, *cells[4:]])
        row.add_class("nbtrain-layer-row")
        row.add_class(f"nbtrain-layer-row-{i}")
        return row

    # ---- state ---------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the learner: freeze state, BatchNorm modes, multipliers, summary."""
        learn = self.learn
        self._syncing = True
        try:
            self.busy = is_fitting(learn)
            self.trainable = list(learn.trainable)
            for i, row in enumerate(layer_rows(learn)):
                toggle = self.toggles[i]
                toggle.value = learn.groups[i].trainable
                toggle.description = "trainable" if toggle.value else "frozen"
                toggle.icon = "unlock" if toggle.value else "lock"
                toggle.button_style = "success" if toggle.value else ""
                toggle.disabled = self.busy
                for j, text in enumerate(row):
                    if j != 3:
                        self.labels[i][j].value = escape(text)
            self.summary = layers_summary(learn)
            self.summary_html.value = escape(self.summary)
            self.bn_frozen = bool(getattr(learn, "bn_frozen", False))
            self.bn_toggle.value = self.bn_frozen
            self.bn_toggle.disabled = self.busy or not hasattr(learn, "bn_freeze")
            self.freeze_button.disabled = self.unfreeze_button.disabled = self.busy
        finally:
            self._syncing = False

    def _on_toggle(self, i: int, value: bool) -> None:
        if self._syncing:
            return
        try:
            self.set_trainable(i, value)
        except ValueError as exc:
            self.refresh()  # put the toggle back
            self.summary_html.value = f"&#9888; {escape(str(exc))}"

    def _on_bn(self, value: bool) -> None:
        if self._syncing:
            return
        try:
            self.set_bn_frozen(value)
        except ValueError as exc:
            self.refresh()
            self.summary_html.value = f"&#9888; {escape(str(exc))}"

    def _check_idle(self) -> None:
        if is_fitting(self.learn):
            raise ValueError("a fit is running; change the freeze state after it ends")

    def _changed(self) -> None:
        refresh_panels(self.learn)

    # ---- programmatic twins ------------------------------------------------------
    def set_trainable(self, i: int, trainable: bool) -> None:
        """Make group ``i`` trainable or frozen (as its toggle does)."""
        self._check_idle()
        self.learn.set_trainable(i, bool(trainable))
        self._changed()

    def toggle(self, i: int) -> bool:
        """Flip group ``i``; returns its new state (as a click on its toggle does)."""
        if not -len(self.learn.groups) <= i < len(self.learn.groups):
            raise ValueError(f"no layer group {i}; groups are 0..{len(self.learn.groups) - 1}")
        new = not self.learn.groups[i].trainable
        self.set_trainable(i, new)
        return new

    def set_bn_frozen(self, frozen: bool) -> None:
        """``learn.bn_freeze(frozen)``: every BatchNorm keeps its running statistics (the
        checkbox)."""
        self._check_idle()
        self.learn.bn_freeze(bool(frozen))
        self._changed()

    def freeze_to(self, n: int) -> None:
        """Freeze groups before ``n``, train the rest."""
        self._check_idle()
        self.learn.freeze_to(n)
        self._changed()

    def freeze(self) -> None:
        """Train the head only (the "Freeze body" button)."""
        self._check_idle()
        self.learn.freeze()
        self._changed()

    def unfreeze(self) -> None:
        """Train every group (the "Unfreeze all" button)."""
        self._check_idle()
        self.learn.unfreeze()
        self._changed()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = layers_text(self.learn)
        return data


def refresh_panels(learn: Any) -> None:
    """Refresh every live panel of ``learn`` (after a change made anywhere)."""
    for panel in list(_live):
        if panel.learn is learn:
            panel.refresh()
