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
    value = _number(value, what)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{what}, got {value!r}")
    if not lo <= value <= hi:  # a comparison: cheap for any magnitude
        raise ValueError(f"{what}, got {_short(value)}")
    return int(value)


def real(value: Any, name: str, lo: float, hi: float) -> float:
    """``value`` as a finite float in ``[lo, hi]``: an int or float (not a bool), or the text of one."""
    what = f"{name} must be a number from {lo:g} to {hi:g}"
    value = _number(value, what)
    if isinstance(value, int) and not lo <= value <= hi:  # before float(): an int may be too large for one
        raise ValueError(f"{what}, got {_short(value)}")
    f = float(value)
    if not math.isfinite(f) or not lo <= f <= hi:
        raise ValueError(f"{what}, got {_short(value)}")
    return f


def _number(value: Any, what: str) -> int | float:
    """``value`` as an int or float (not a bool; a text of at most :data:`MAX_TEXT` characters is
    parsed, an integer's exactly); ValueError saying ``what`` it should be otherwise."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_TEXT:
            raise ValueError(f"{what}, got a text of {len(text)} characters")
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
        raise ValueError(f"{what}, got {text!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what}, got {type(value).__name__}")
    return value


def _short(value: int | float) -> str:
    """A number for a message: a huge integer by its size, not its thousands of digits."""
    if isinstance(value, int) and abs(value) >= 10 ** 15:
        return f"{'-' if value < 0 else ''}an integer of {value.bit_length()} bits"
    return repr(value)


__all__ = ["MAX_SEED", "real", "whole"]
