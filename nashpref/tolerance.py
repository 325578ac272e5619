"""Tolerances for comparing floating-point results, derived from the dtype and the problem.

Two computations of the same quantity in floating point (another summation order, another thread count, another
CPU's vector width, a KV-cached decode against a full forward) agree only up to rounding. Rounding is bounded by

    tolerance = ulps · eps(dtype) · scale · length

where ``eps`` is the machine epsilon of the *least* precise dtype involved, ``scale`` the magnitude of the
quantities that were added or multiplied to get the result (not of the result: a difference of two numbers of
size 10 that comes out at 1e-3 still carries rounding of size 10·eps), and ``length`` the length of the longest
reduction (a sum of n terms carries up to n·eps·Σ|terms| of rounding; for chained reductions, the product of the
lengths along the chain, or a stated count of operations). ``ulps`` is a small constant for the handful of
roundings outside the reductions.

This is the worst-case bound, not a statistical one; tests that compare a random draw with its expectation state
their statistical bound instead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

DEFAULT_ULPS = 4.0


def eps(dtype: Any) -> float:
    """Machine epsilon of a torch dtype, a numpy dtype, a dtype name ('float32'), or the dtype of a value."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps
    if isinstance(dtype, torch.Tensor):
        return eps(dtype.dtype)
    if isinstance(dtype, str):
        return float(np.finfo(np.dtype(dtype)).eps)
    if isinstance(dtype, (float, int)):
        return float(np.finfo(np.float64).eps)        # a Python float is a float64
    if isinstance(dtype, np.ndarray) or np.isscalar(dtype):
        return eps(np.asarray(dtype).dtype)
    if isinstance(dtype, (np.dtype, type)):
        kind = np.dtype(dtype)
        return float(np.finfo(kind).eps) if kind.kind == "f" else float(np.finfo(np.float64).eps)
    raise TypeError(f"no machine epsilon for {dtype!r}")


def tolerance(dtype: Any = torch.float64, *, scale: float = 1.0, length: float = 1, ulps: float = DEFAULT_ULPS
              ) -> float:
    """``ulps · eps(dtype) · scale · length``: the largest difference rounding alone can explain."""
    if scale < 0 or length < 1 or ulps <= 0:
        raise ValueError(f"scale must be >= 0, length >= 1, ulps > 0 (got {scale}, {length}, {ulps})")
    return ulps * eps(dtype) * scale * length


def forward_length(config: Any, tokens: int) -> int:
    """The reduction length of one transformer forward, for ``tolerance(length=...)``: per layer the q/k/v and
    output projections (hidden each way), the MLP (hidden in, intermediate out) and attention over ``tokens``
    positions, then the output head (hidden). ``config`` is a transformers config (only its sizes are read).

    Errors of successive layers add (each layer's input is normalised, so each contributes relative rounding
    of the same size), which is why the per-layer lengths are summed rather than multiplied."""
    hidden = int(config.hidden_size)
    inner = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    return int(config.num_hidden_layers) * (2 * hidden + inner + int(tokens)) + hidden


def coarsest_eps(*values: Any) -> float:
    """The machine epsilon of the least precise floating-point value among ``values`` (integers count as exact)."""
    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                found.append(eps(value.dtype))
        elif isinstance(value, np.ndarray):
            if value.dtype.kind == "f":
                found.append(eps(value.dtype))
        elif isinstance(value, float):
            found.append(eps(np.float64))
        elif isinstance(value, (list, tuple)):
            found.append(coarsest_eps(*value))
    return max(found, default=eps(np.float64))


def magnitude(*values: Any) -> float:
    """max |x| over every value (tensors, arrays, numbers, nested lists); 0 for empty input."""
    best = 0.0
    for value in values:
        array = value.detach().double().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value,
                                                                                                         float)
        if array.size:
            best = max(best, float(np.nanmax(np.abs(array))))
    return best


def assert_close(actual: Any, expected: Any, *, dtype: Any = None, scale: float | None = None, length: float = 1,
                 ulps: float = DEFAULT_ULPS, msg: str | None = None) -> None:
    """Assert ``|actual − expected| ≤ ulps · eps · scale · length`` elementwise.

    ``dtype`` defaults to the least precise floating dtype of the two values; ``scale`` defaults to the largest
    magnitude among them (pass the magnitude of the inputs when the result comes from cancellation, e.g. a gap
    of 0 computed from win-rates of size 1). NaNs must match.
    """
    bound_eps = eps(dtype) if dtype is not None else coarsest_eps(actual, expected)
    if scale is None:
        scale = magnitude(actual, expected)
    atol = ulps * bound_eps * scale * length
    a = actual.detach().double().cpu() if isinstance(actual, torch.Tensor) else torch.as_tensor(
        np.asarray(actual, dtype=float))
    b = expected.detach().double().cpu() if isinstance(expected, torch.Tensor) else torch.as_tensor(
        np.asarray(expected, dtype=float))
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}" + (f" ({msg})" if msg else ""))
    both_nan = torch.isnan(a) & torch.isnan(b)
    diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
    worst = float(diff.max()) if diff.numel() else 0.0
    if not (worst <= atol) or math.isnan(worst):
        where = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), tuple(a.shape))) if a.dim() else ()
        raise AssertionError(
            f"max |actual - expected| = {worst:.3e} at {where} exceeds {atol:.3e} "
            f"(= {ulps:g} ulps x eps {bound_eps:.2e} x scale {scale:.3g} x length {length:g})"
            + (f": {msg}" if msg else ""))
