"""The checks of single values that every config, game file and solver option uses, each failure one line.

``label`` names the value as the user wrote it (``--lr``, ``sampled config: samples``, ``egpo: eta``); the error
class defaults to BadInput (game files pass GameError).
"""

from __future__ import annotations

import math

from nashpref.errors import BadInput


def integer(value, label: str, low: int = 1, *, allow_none: bool = False, error: type = BadInput) -> int | None:
    """``value`` when it is an int (not a bool) ≥ ``low`` (or None with ``allow_none``)."""
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise error(f"{label} must be an integer >= {low}, got {value!r}")
    return value


def number(value, label: str, low: float = 0.0, high: float = math.inf, *, low_open: bool = True,
           allow_none: bool = False, error: type = BadInput) -> float | None:
    """``value`` as a float when it is a finite number in (low, high] ([low, high] unless ``low_open``)."""
    if allow_none and value is None:
        return None
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        if high == math.inf:
            interval = f"{'>' if low_open else '>='} {low:g}"
        else:
            interval = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise error(f"{label} must be a finite number {interval}, got {value!r}")
    return float(value)


def choice(value, label: str, allowed: tuple) -> object:
    """``value`` when it is one of ``allowed``."""
    if value not in allowed:
        raise BadInput(f"{label} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value
