"""Numbers from outside the server (URL parts, query parameters, UI fields, session files), each
checked against its bounds *before* any arithmetic is done with it, by one helper per kind.

A number that reaches the server may be of any magnitude (Python integers have no bound, and a
float may be ``inf`` or ``nan``), and arithmetic on a huge one can cost gigabytes (``1 << n``) or
minutes (``range(n)``). These helpers only compare, so a crafted value costs nothing; each raises
ValueError naming the value and what it should be, which callers turn into a 4xx or a message.
"""
from __future__ import annotations

import math
from typing import Any

MAX_TEXT = 40  # characters of a number given as text (a UI field): longer is no number we take
MAX_SEED = 2**32 - 1  # the seeds the app takes (a session file's too: the browser gets them back as numbers)


def whole(value: Any, name: str, lo: int, hi: int) -> int:
    """``value`` as an integer in ``[lo, hi]``: an int (not a bool), an integral float, or the text
    of one (a UI field); ValueError otherwise."""
    what = f"{name} must be a whole number from {lo} to {hi}"
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_TEXT:
            raise ValueError(f"{what}, got a text of {len(text)} characters")
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{what}, got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what}, got {type(value).__name__}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{what}, got {value!r}")
    if not lo <= value <= hi:  # a comparison: cheap for any magnitude
        raise ValueError(f"{what}, got {_short(value)}")
    return int(value)


def real(value: Any, name: str, lo: float, hi: float) -> float:
    """``value`` as a finite float in ``[lo, hi]``: an int or float (not a bool), or the text of one."""
    what = f"{name} must be a number from {lo:g} to {hi:g}"
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_TEXT:
            raise ValueError(f"{what}, got a text of {len(text)} characters")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{what}, got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what}, got {type(value).__name__}")
    if isinstance(value, int) and not lo <= value <= hi:  # before float(): an int may be too large for one
        raise ValueError(f"{what}, got {_short(value)}")
    f = float(value)
    if not math.isfinite(f) or not lo <= f <= hi:
        raise ValueError(f"{what}, got {_short(value)}")
    return f


def _short(value: int | float) -> str:
    """A number for a message: a huge integer by its size, not its thousands of digits."""
    if isinstance(value, int) and abs(value) >= 10 ** 15:
        return f"{'-' if value < 0 else ''}an integer of {value.bit_length()} bits"
    return repr(value)


__all__ = ["MAX_SEED", "real", "whole"]
