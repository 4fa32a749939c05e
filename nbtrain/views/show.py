"""What each magic displays, in the front end in use (widgets or text).

The magics parse and call the core; these functions build the view of the result,
display it and return it (the magics keep the last one of each kind for
:func:`nbtrain.magics.last_view`).
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

from IPython.display import display

from nbtrain.core.learner import Learner
from nbtrain.core.lr_range import LRRangeResult
from nbtrain.core.stages import Plan
from nbtrain.views import epoch_log
from nbtrain.views.run import plan_labels


class SweepProgress:
    """A bar for the range test, displayed at its first step (so a rejected call shows
    nothing) and updated at most every 0.2 s (a comm message costs more than a step)."""

    def __init__(self, iters: int) -> None:
        self.iters = max(iters, 1)
        self.handle: Any = None
        self.bar: Any = None
        self._last = -1.0

    def on_step(self, i: int, lr: float, loss: float) -> None:
        now = time.perf_counter()
        if now - self._last < 0.2:
            return
        self._last = now
        if self.bar is None:
            import ipywidgets as W

            self.bar = W.IntProgress(value=0, min=0, max=self.iters, description="lr_find")
            self.bar.add_class("nbtrain-lr-progress")
            self.handle = display(self.bar, display_id=True)
        self.bar.value = i + 1


def lr_finder(
    result: LRRangeResult,
    namespace: MutableMapping[str, Any],
    into: str,
    *,
    widgets: bool,
    sweep: SweepProgress | None = None,
) -> Any:
    """The LR-finder selector (widgets: the sweep's bar becomes the plot, in place) or
    its text report; the suggestion goes into ``namespace[into]`` either way."""
    if widgets:
        from nbtrain.views.lr_plot import LRFinderPlot

        view: Any = LRFinderPlot(result, namespace=namespace, into=into)
        if sweep is not None and sweep.handle is not None:
            sweep.handle.update(view)
        else:
            display(view)
        return view
    from nbtrain.views.lr_plot import LRFinderReport

    if result.suggestion is not None:
        namespace[into] = result.suggestion
    view = LRFinderReport(result, result.suggestion, into)
    display(view, display_id=True)
    return view


def fit_progress(
    plan: Plan, learn: Learner, *, widgets: bool, title: str = "fit_cycles"
) -> tuple[Any, Any, list[Any]]:
    """The progress view of a planned run, displayed before the first batch: the view,
    its display handle (None for text, which prints as it goes) and the listeners to
    run beside it (the main job's epoch log, when ``$NBTRAIN_EPOCH_LOG`` names one)."""
    labels = plan_labels(plan)
    plans = list(plan.schedules)
    view: Any
    if widgets:
        from nbtrain.views.progress import ProgressView

        view = ProgressView(plans, labels=labels, learn=learn, title=title)
        handle = display(view, display_id=True)
    else:
        from nbtrain.views.text import TextProgress

        view, handle = TextProgress(plans, labels=labels, title=title), None
    log = epoch_log.from_env(plans, labels=labels, title=title)
    return view, handle, [log] if log is not None else []


def layers(learn: Learner, *, widgets: bool) -> Any:
    """The layer-freeze panel (or its table), after refreshing the panels shown."""
    from nbtrain.views.freeze_panel import LayersReport, refresh_panels

    refresh_panels(learn)
    view: Any
    if widgets:
        from nbtrain.views.freeze_panel import FreezePanel

        view = FreezePanel(learn)
    else:
        view = LayersReport(learn)
    display(view, display_id=True)
    return view


def batch(learn: Learner, *, n: Any, augmented: bool, seed: Any, widgets: bool) -> Any:
    """Training images as the model sees them, with a "Draw again" button (widgets) or
    as one figure; ValueError (one line) for data that is not image data."""
    from nbtrain.core.checks import whole_number

    data = learn.data
    if not callable(getattr(data, "train_transform", None)):
        raise ValueError(
            f"show_batch needs image data (ImageData); this learner has {type(data).__name__}"
        )
    n = whole_number("--n", n, minimum=1)
    seed = None if seed is None else whole_number("--seed", seed)
    view: Any
    if widgets:
        from nbtrain.views.looks import BatchView

        view = BatchView(data, n=n, augmented=augmented, seed=seed)
    else:
        from nbtrain.views.looks import FigureReport
        from nbtrain.vision.look import batch_images, image_grid

        images, labels, used = batch_images(data, n, augmented=augmented, seed=seed)  # type: ignore[arg-type]
        fig = image_grid(list(images), labels, title=f"{len(labels)} training images, seed {used}")
        view = FigureReport(fig, f"batch (seed {used}): {', '.join(labels)}")
    display(view)
    return view


def interpretation(learn: Learner, *, k: Any, widgets: bool) -> Any:
    """The confusion matrix (clickable cells, with widgets) and the top ``k`` losses."""
    from nbtrain.core.checks import whole_number
    from nbtrain.vision.interpret import Interpretation

    k = whole_number("--k", k, minimum=1)
    if learn.data.valid is None:
        raise ValueError("interpret needs validation data; this learner has none")
    interp = Interpretation.from_learner(learn)
    view: Any
    if widgets:
        from nbtrain.views.looks import InterpretationView

        view = InterpretationView(interp, k=k)
        display(view)
        return view
    from nbtrain.views.looks import FigureReport, confusion_text

    view = FigureReport(interp.plot_confusion_matrix(), confusion_text(interp))
    display(view)
    if interp.files:
        display(FigureReport(interp.plot_top_losses(k), f"the {k} highest losses"))
    return view
