"""Confidence intervals over seeds."""

from __future__ import annotations

import math
from typing import Sequence


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval for the mean of ``values`` (independent seeds); the
    half-width is NaN for fewer than two values."""
    from scipy.stats import t

    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def format_ci(values: Sequence[float], digits: int = 3) -> str:
    """"m ± h" (or "m" for one value)."""
    mean, half = mean_ci(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"
