"""Looking at results: confusion matrix and the images the model gets most wrong.

The numbers are plain torch; the plots import matplotlib only when called, and draw
on a ``matplotlib.figure.Figure`` (no pyplot state, the user's backend untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Interpretation:
    """Predictions of a learner on its validation images.

    Build with :meth:`from_learner`. ``probs`` is ``(n, classes)``, ``targets`` and
    ``preds`` ``(n,)``, ``losses`` the per-image cross-entropy.
    """

    probs: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    files: list[Path]

    @classmethod
    def from_learner(cls, learn: Any) -> Interpretation:
        probs, targets = learn.get_preds()
        data = learn.data
        classes = list(getattr(data, "classes", range(probs.shape[1])))
        files = list(getattr(data, "valid_files", []))
        return cls(probs, targets, [str(c) for c in classes], files)

    @property
    def preds(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)

    @property
    def losses(self) -> torch.Tensor:
        return nn.functional.nll_loss(
            self.probs.clamp_min(1e-12).log(), self.targets, reduction="none"
        )

    def confusion_matrix(self) -> torch.Tensor:
        """``m[i, j]``: images of class ``i`` predicted as class ``j``."""
        n = len(self.classes)
        index = self.targets * n + self.preds
        return torch.bincount(index, minlength=n * n).reshape(n, n)

    def top_losses(self, k: int = 9) -> list[tuple[int, float]]:
        """The ``k`` images with the highest loss, as ``(index, loss)``, worst first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        losses, index = self.losses.topk(min(k, len(self.targets)))
        return [(int(i), float(v)) for i, v in zip(index, losses, strict=True)]

    def plot_confusion_matrix(self, *, ax: Any = None) -> Any:
        """Draw the confusion matrix; returns the matplotlib Figure."""
        fig, ax = _axes(ax, (4 + 0.4 * len(self.classes),) * 2)
        m = self.confusion_matrix()
        ax.imshow(m.numpy(), cmap="Blues")
        ticks = range(len(self.classes))
        ax.set_xticks(ticks, self.classes, rotation=45, ha="right")
        ax.set_yticks(ticks, self.classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        peak = int(m.max()) or 1
        for i in ticks:
            for j in ticks:
                value = int(m[i, j])
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    color="white" if value > peak / 2 else "black",
                )
        accuracy = float(m.diag().sum()) / max(int(m.sum()), 1)
        ax.set_title(f"confusion matrix (accuracy {accuracy:.1%})")
        fig.tight_layout()
        return fig

    def plot_top_losses(self, k: int = 9, *, cols: int = 3) -> Any:
        """Show the ``k`` worst images with predicted / actual class, loss and probability."""
        from matplotlib.figure import Figure
        from PIL import Image

        if not self.files:
            raise ValueError("the data has no valid_files to show")
        worst = self.top_losses(k)
        rows = (len(worst) + cols - 1) // cols
        fig = Figure(figsize=(3 * cols, 3.2 * rows))
        for n, (i, loss) in enumerate(worst):
            ax = fig.add_subplot(rows, cols, n + 1)
            with Image.open(self.files[i]) as img:
                ax.imshow(img.convert("RGB"))
            pred, actual = int(self.preds[i]), int(self.targets[i])
            ax.set_title(
                f"{self.classes[pred]} / {self.classes[actual]}\n"
                f"loss {loss:.2f}, p={float(self.probs[i, actual]):.2f}",
                fontsize=9,
            )
            ax.axis("off")
        fig.suptitle("top losses: predicted / actual")
        fig.tight_layout()
        return fig


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot(111)
