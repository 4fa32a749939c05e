"""The text of a ``%%fit_cycles`` cell: one stage per line, as tokens, ``key=value``
pairs and flags.

``lr=[lr/9, lr/3, lr] cycles=3 cycle_mult=2 unfreeze`` is one stage; values stay raw
expressions here (the magic evaluates them in the user's namespace and builds a
:class:`nbtrain.core.stages.Stage`). A mistake raises ValueError with one line.
"""

from __future__ import annotations

import difflib

from nbtrain.core.stages import STAGE_KEYS

STAGE_FLAGS = {"freeze": -1, "unfreeze": 0}


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
                raise ValueError(f"{where}unbalanced {ch!r} in {text.strip()!r}")
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
        raise ValueError(f"{where}unclosed {what} in {text.strip()!r}")
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
                raise ValueError(
                    f"{where}: {token!r} is neither key=value nor a flag; flags: "
                    f"{', '.join(STAGE_FLAGS)}; keys: {', '.join(STAGE_KEYS)}"
                )
            key, value = "freeze_to", str(STAGE_FLAGS[token])
        elif key not in STAGE_KEYS:
            close = difflib.get_close_matches(key, STAGE_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{where}: unknown key {key!r}; {hint}keys: {', '.join(STAGE_KEYS)}")
        elif not value:
            raise ValueError(f"{where}: {key}= needs a value, e.g. {key}=1")
        elif value.endswith(","):
            raise ValueError(
                f"{where}: {token!r} ends with a comma; separate key=value pairs with spaces"
            )
        if key in raw:
            raise ValueError(f"{where}: {key} is given twice (freeze/unfreeze set freeze_to)")
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
        raise ValueError("no stages in the cell; write one per line, e.g. lr=lr cycles=1")
    return stages
