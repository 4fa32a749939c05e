"""The stage lines of a ``%%fit_cycles`` cell: tokens, ``key=value`` pairs, flags.

``lr=[lr/9, lr/3, lr] cycles=3 cycle_mult=2 unfreeze`` is one stage; values stay raw
expressions here (the magic evaluates them in the user's namespace and checks them).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError

from nbtrain.core.schedules import SGDRSchedule
from nbtrain.views.format import plan_summary

STAGE_KEYS = ("lr", "cycles", "cycle_len", "cycle_mult", "size", "precompute", "seed", "freeze_to")
STAGE_FLAGS = {"freeze": -1, "unfreeze": 0}


@dataclass
class Stage:
    """One SGDR run of a ``%%fit_cycles`` cell, its values evaluated and checked."""

    lr: Any
    plan: SGDRSchedule
    cycles: int = 1
    cycle_len: int = 1
    cycle_mult: int = 1
    size: int | None = None
    precompute: bool | None = None
    seed: int | None = None
    freeze_to: int | None = None
    where: str = "%fit_cycles"

    def label(self) -> str:
        """``unfreeze, size 64: 3 cycles of 1 + 2 + 4 epochs = 7 epochs, ...``."""
        changes = []
        if self.freeze_to is not None:
            changes.append(
                {0: "unfreeze", -1: "freeze"}.get(self.freeze_to, f"freeze_to {self.freeze_to}")
            )
        if self.size is not None:
            changes.append(f"size {self.size}")
        if self.precompute is not None:
            changes.append(f"precompute {'on' if self.precompute else 'off'}")
        head = ", ".join(changes)
        return f"{head}: {plan_summary(self.plan)}" if head else plan_summary(self.plan)


def split_tokens(text: str, where: str = "") -> list[str]:
    """Split a stage line on whitespace outside brackets and quotes; ``#`` starts a
    comment. ``lr=[lr/9, lr/3, lr] cycles=3`` -> ``['lr=[lr/9, lr/3, lr]', 'cycles=3']``."""
    tokens, current, depth, quote, i = [], [], 0, "", 0
    pairs = {")": "(", "]": "[", "}": "{"}
    opened: list[str] = []
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch in "([{":
            opened.append(ch)
            current.append(ch)
        elif ch in ")]}":
            if not opened or opened[-1] != pairs[ch]:
                raise UsageError(f"{where}unbalanced {ch!r} in {text.strip()!r}")
            opened.pop()
            current.append(ch)
        elif ch == "#" and not opened:
            break
        elif ch.isspace() and not opened:
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(ch)
        i += 1
    depth = len(opened)
    if quote or depth:
        what = "quote" if quote else repr(opened[-1])
        raise UsageError(f"{where}unclosed {what} in {text.strip()!r}")
    if current:
        tokens.append("".join(current))
    return tokens


def parse_stage(text: str, where: str) -> dict[str, str]:
    """Raw expressions of one stage line: ``{"lr": "[lr/9,lr/3,lr]", "freeze_to": "0"}``."""
    raw: dict[str, str] = {}
    for token in split_tokens(text, f"{where}: "):
        key, eq, value = token.partition("=")
        if not eq:
            if token not in STAGE_FLAGS:
                raise UsageError(
                    f"{where}: {token!r} is neither key=value nor a flag; flags: "
                    f"{', '.join(STAGE_FLAGS)}; keys: {', '.join(STAGE_KEYS)}"
                )
            key, value = "freeze_to", str(STAGE_FLAGS[token])
        elif key not in STAGE_KEYS:
            close = difflib.get_close_matches(key, STAGE_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"{where}: unknown key {key!r}; {hint}keys: {', '.join(STAGE_KEYS)}")
        elif not value:
            raise UsageError(f"{where}: {key}= needs a value, e.g. {key}=1")
        elif value.endswith(","):
            raise UsageError(
                f"{where}: {token!r} ends with a comma; separate key=value pairs with spaces"
            )
        if key in raw:
            raise UsageError(f"{where}: {key} is given twice (freeze/unfreeze set freeze_to)")
        raw[key] = value
    return raw


def parse_cell(cell: str) -> list[tuple[str, dict[str, str]]]:
    """``(where, raw)`` for every stage line of a ``%%fit_cycles`` cell; blank lines and
    ``#`` comments are skipped."""
    stages = []
    for n, text in enumerate(cell.splitlines(), start=1):
        if not text.strip() or text.strip().startswith("#"):
            continue
        stages.append((f"line {n}", parse_stage(text, f"line {n}")))
    if not stages:
        raise UsageError("no stages in the cell; write one per line, e.g. lr=lr cycles=1")
    return stages
