"""Views for looking at data and at mistakes: a batch as the model sees it, and the
interpretation of a trained learner (confusion matrix, top losses).

Widget views have a programmatic twin for every click (``BatchView.redraw()``,
``InterpretationView.select(actual, predicted)``) and a full ``_repr_mimebundle_``
(text and PNG), so nbconvert and a terminal show them too. :class:`FigureReport` is the
widget-free version: the figure as PNG, plus a line of text.
"""

from __future__ import annotations

import base64
from typing import Any

import ipywidgets as W
import traitlets as T

from nbtrain.views.figure import png_bytes


def _bundle(text: str, png: bytes) -> dict[str, str]:
    return {"text/plain": text, "image/png": base64.b64encode(png).decode("ascii")}


class FigureReport:
    """A matplotlib Figure with a line of text: what a view shows without widgets."""

    def __init__(self, fig: Any, text: str) -> None:
        self.png = png_bytes(fig)
        self.text = text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return _bundle(self.text, self.png)


class BatchView(W.VBox):
    """``n`` training images as the model sees them, with a **Draw again** button."""

    seed = T.Int(help="the seed of the images shown")
    augmented = T.Bool(True)
    n = T.Int(16)

    def __init__(self, data: Any, *, n: int = 16, augmented: bool = True, seed: int | None = None):
        self.data = data
        self.image = W.Image(format="png")
        self.image.add_class("nbtrain-batch-image")
        self.button = W.Button(description="Draw again", icon="refresh")
        self.button.add_class("nbtrain-batch-redraw")
        super().__init__([self.button, self.image], n=n, augmented=augmented)
        self.add_class("nbtrain-batch")
        self.button.on_click(lambda _: self.redraw())
        self.redraw(seed)

    def redraw(self, seed: int | None = None) -> int:
        """Draw other images (or those of ``seed``), as the button does; returns the seed."""
        from nbtrain.vision.look import batch_images, image_grid

        images, labels, used = batch_images(self.data, self.n, augmented=self.augmented, seed=seed)
        how = "augmented" if self.augmented and getattr(self.data, "augment", False) else "eval"
        fig = image_grid(
            list(images), labels, title=f"{len(labels)} training images, {how}, seed {used}"
        )
        self.image.value = png_bytes(fig)
        self.labels = labels
        self.seed = used
        return used

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = dict(super()._repr_mimebundle_(**kwargs) or {})
        bundle.update(
            _bundle(f"batch (seed {self.seed}): {', '.join(self.labels)}", self.image.value)
        )
        return bundle


class InterpretationView(W.VBox):
    """The confusion matrix as a grid of cells to click, the images of the clicked cell
    (actual class, predicted class) under it, and the top losses."""

    selected = T.Tuple((), help="(actual, predicted) of the cell shown")

    MAX_SHOWN = 12

    def __init__(self, interp: Any, *, k: int = 9) -> None:
        self.interp = interp
        matrix = interp.confusion_matrix()
        self.matrix = matrix
        classes = interp.classes
        peak = max(int(matrix.max()), 1)
        self.cells: dict[tuple[int, int], W.Button] = {}
        header = [W.HTML("<b>actual \\ predicted</b>")] + [W.HTML(f"<b>{c}</b>") for c in classes]
        items: list[W.Widget] = list(header)
        for i, actual in enumerate(classes):
            items.append(W.HTML(f"<b>{actual}</b>"))
            for j in range(len(classes)):
                count = int(matrix[i, j])
                shade = int(255 - 180 * count / peak)
                button = W.Button(description=str(count), layout=W.Layout(width="auto"))
                button.style.button_color = f"rgb({shade}, {shade}, 255)"
                button.add_class("nbtrain-cm-cell")
                button.on_click(lambda _, i=i, j=j: self.select(i, j))
                self.cells[(i, j)] = button
                items.append(button)
        self.grid = W.GridBox(
            items, layout=W.Layout(grid_template_columns=f"repeat({len(classes) + 1}, auto)")
        )
        self.caption = W.HTML("click a cell to see its images")
        self.shown = W.Image(format="png", layout=W.Layout(display="none"))
        self.shown.add_class("nbtrain-cm-images")
        self.top = W.Image(format="png")
        self.top_png = b""
        if interp.files:
            self.top_png = png_bytes(interp.plot_top_losses(k))
            self.top.value = self.top_png
        accuracy = float(matrix.diag().sum()) / max(int(matrix.sum()), 1)
        title = W.HTML(f"<b>confusion matrix</b> (accuracy {accuracy:.1%})")
        super().__init__([title, self.grid, self.caption, self.shown, self.top])
        self.add_class("nbtrain-interpretation")

    def select(self, actual: int, predicted: int) -> list[int]:
        """Show the images of class ``actual`` predicted as ``predicted`` (a click on that
        cell); returns their indexes among the validation images."""
        interp = self.interp
        mask = (interp.targets == actual) & (interp.preds == predicted)
        found = mask.nonzero().flatten().tolist()
        self.selected = (actual, predicted)
        names = interp.classes
        what = f"actual {names[actual]}, predicted {names[predicted]}: {len(found)} images"
        if not found or not interp.files:
            self.caption.value = what
            self.shown.layout.display = "none"
            return found
        from nbtrain.vision.look import image_grid

        shown = found[: self.MAX_SHOWN]
        titles = [f"p={float(interp.probs[i, predicted]):.2f}" for i in shown]
        fig = image_grid([interp.files[i] for i in shown], titles)
        self.shown.value = png_bytes(fig)
        self.shown.layout.display = None
        more = f" (the first {len(shown)})" if len(found) > len(shown) else ""
        self.caption.value = what + more
        return found

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = dict(super()._repr_mimebundle_(**kwargs) or {})
        text = confusion_text(self.interp)
        png = self.top_png or png_bytes(self.interp.plot_confusion_matrix())
        bundle.update(_bundle(text, png))
        return bundle


def confusion_text(interp: Any) -> str:
    """The confusion matrix as a text table (rows: actual, columns: predicted)."""
    m, names = interp.confusion_matrix(), interp.classes
    width = max(7, *(len(n) for n in names))
    head = " " * width + "".join(f"{n:>{width}}" for n in names)
    rows = [
        f"{a:>{width}}" + "".join(f"{int(v):>{width}}" for v in m[i]) for i, a in enumerate(names)
    ]
    return "\n".join(["confusion matrix (rows: actual, columns: predicted)", head, *rows])
