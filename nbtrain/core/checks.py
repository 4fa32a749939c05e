"""Argument checks shared by the core and the vision modules: one rule, one message.

A whole number is an ``int`` or one of numpy's integers (``numbers.Integral``), never a
``bool`` and never a float, even a whole one: ``cycles=2.0`` is more likely a slip
than a choice, and the stages a checkpoint stores must be plain ints.
"""

from __future__ import annotations

from numbers import Integral


def is_whole(value: object) -> bool:
    """Whether ``value`` is a whole number (see the module's note)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def whole_number(name: str, value: object, *, minimum: int | None = None) -> int:
    """``value`` as an ``int``; ValueError naming ``name`` and the value otherwise.

    >>> whole_number("cycles", 3, minimum=1)
    3
    """
    if not is_whole(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    number = int(value)  # type: ignore[call-overload]  # is_whole: an Integral
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return number
