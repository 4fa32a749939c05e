"""Plain-text pieces every view shares: rates, durations, counts, epoch rows, status lines.

The widget views, the text fallback and every ``text/plain`` representation format
through these functions, so a notebook, a terminal and an nbconvert export read the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from nbtrain.core.schedules import SGDRSchedule
from nbtrain.core.state import EpochRecord


def fmt_rate(lr: float | None) -> str:
    """``1.00e-03``; ``--`` for None."""
    return "--" if lr is None else f"{lr:.2e}"


def fmt_rates(lrs: Iterable[float]) -> str:
    """Every group's rate, comma-separated (``1.1e-04, 3.3e-04, 1.0e-03``)."""
    return ", ".join(f"{lr:.1e}" for lr in lrs)


def fmt_seconds(seconds: float | None) -> str:
    """``0:07``, ``12:34`` or ``1:02:03``; ``--`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--"
    total = round(max(seconds, 0.0))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_count(n: int) -> str:
    """Parameter counts: ``3,843``, ``1.02M``."""
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n:,}"


def fmt_loss(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    return f"{value:.4f}"


def plan_summary(plan: SGDRSchedule) -> str:
    """``3 cycles of 1 + 2 + 4 epochs = 7 epochs, 56 iterations; max rate 1.0e-02``."""
    rates = fmt_rates(plan.lrs) if len(set(plan.lrs)) > 1 else f"{plan.lrs[0]:.1e}"
    if plan.cycles == 1:
        cycles = f"1 cycle of {plan.epochs} {_epochs(plan.epochs)}"
    else:
        parts = " + ".join(str(e) for e in plan.epochs_per_cycle)
        cycles = f"{plan.cycles} cycles of {parts} epochs = {plan.epochs} {_epochs(plan.epochs)}"
    return f"{cycles}, {plan.total_iters} iterations; max rate {rates}"


def _epochs(n: int) -> str:
    return "epoch" if n == 1 else "epochs"


def epoch_columns(metric_names: Sequence[str], *, stages: bool = False) -> list[str]:
    """Column names of the per-epoch table."""
    head = ["stage"] if stages else []
    return [*head, "epoch", "cycle", "train_loss", "valid_loss", *metric_names, "time"]


def epoch_cells(
    record: EpochRecord, *, epoch: int, cycle: int, stage: int | None = None
) -> list[str]:
    """One row of the per-epoch table; ``epoch`` and ``cycle`` are 1-based, run-wide."""
    head = [str(stage)] if stage is not None else []
    return [
        *head,
        str(epoch),
        str(cycle),
        fmt_loss(record.train_loss),
        fmt_loss(record.valid_loss),
        *(fmt_loss(v) for v in record.metrics.values()),
        fmt_seconds(record.seconds),
    ]


def text_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    min_width: int = 0,
    left_first: bool = True,
) -> str:
    """A fixed-width table, columns right-aligned (the first left-aligned unless
    ``left_first=False``). ``min_width`` keeps rows printed one at a time aligned."""
    widths = [max(len(c), min_width) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in (columns, *rows):
        cells = [
            cell.ljust(w) if i == 0 and left_first else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, css: str = "") -> str:
    """The same table as HTML (values are produced by this module, so no escaping needed)."""
    cell = 'style="padding:1px 10px;text-align:right"'
    head = "".join(f"<th {cell}>{c}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td {cell}>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<table class="{css}" style="border-collapse:collapse">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def progress_line(
    *,
    it: int,
    total: int,
    epoch: int,
    epochs: int,
    cycle: int,
    cycles: int,
    eta: float | None,
    lrs: Sequence[float],
    stage: tuple[int, int] | None = None,
) -> str:
    """``it 120/800 · epoch 2/7 · cycle 1/3 · ETA 1:23 · lr 1.1e-04, 3.3e-04, 1.0e-03``."""
    parts = [f"stage {stage[0]}/{stage[1]}"] if stage and stage[1] > 1 else []
    parts += [
        f"it {it}/{total}",
        f"epoch {epoch}/{epochs}",
        f"cycle {cycle}/{cycles}",
        f"ETA {fmt_seconds(eta)}",
    ]
    if lrs:
        parts.append(f"lr {fmt_rates(lrs)}")
    return " · ".join(parts)


def final_line(
    status: str, message: str, *, epochs: int, seconds: float, skipped: int = 0, best: str = ""
) -> str:
    """The last line of a run: how it ended and why, and ``best`` (see :func:`best_text`)."""
    if status == "done":
        text = f"done: {epochs} {'epoch' if epochs == 1 else 'epochs'} in {fmt_seconds(seconds)}"
    else:
        text = f"{status}: {message}" if message else status
    if skipped:
        text += f"; {skipped} later {'stage' if skipped == 1 else 'stages'} not run"
    if best:
        text += f"; {best}"
    return text


def best_text(
    best: dict[str, Any], last: dict[str, Any], *, metric: str | None, stages: bool
) -> str:
    """``best accuracy 0.9935 at stage 1, cycle 1 (last 0.9890): learn.load_snapshot(fit=0,
    cycle=0)`` from two rows of a run's table that ended a cycle (``fit`` and
    ``fit_cycle`` are the learner's indexes of the snapshot)."""
    name = metric or "valid_loss"
    where = f"stage {best['stage']}, cycle {best['cycle']}" if stages else f"cycle {best['cycle']}"
    value, last_value = fmt_loss(best.get(name)), fmt_loss(last.get(name))
    if best is last:
        return f"best {name} {value}: the last cycle's end"
    back = f"learn.load_snapshot(fit={best['fit']}, cycle={best['fit_cycle']})"
    return f"best {name} {value} at {where} (last {last_value}): {back}"
