"""Checks and loss pieces shared by the regularised-game solvers (Nash-MD, EGPO, online IPO)."""

from __future__ import annotations

import math

from torch import Tensor

from nashpref.game import GameError, PreferenceGame


def require_tau(game: PreferenceGame, solver: str) -> float:
    """τ of ``game``, or GameError when it is 0: the solver's step and guarantee need a KL-regularised game."""
    if game.tau <= 0:
        raise GameError(f"{game.name}: solver {solver} needs tau > 0 (it solves the KL-regularised game and its "
                        "step mixes in μ with weight η·τ); pass --tau with a positive value")
    return game.tau


def check_number(value, field: str, solver: str, *, low: float = 0.0, high: float = math.inf,
                 low_open: bool = True) -> float:
    """``value`` as a float, or GameError unless it is finite and lies in (low, high] ([low, high] if not
    ``low_open``)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise GameError(f"{solver}: {field} must be a finite number in {interval}, got {value!r}")
    return float(value)


def log_ratio_regression(log_prob: Tensor, log_prob_other: Tensor, ref: Tensor, ref_other: Tensor,
                         target: Tensor) -> Tensor:
    """Per-pair (h − target)², h = log π_θ(y)/μ(y) − log π_θ(y')/μ(y'): the squared loss behind online IPO,
    IPO-MD and EGPO; only the target differs between them."""
    margin = (log_prob - ref) - (log_prob_other - ref_other)
    return (margin - target) ** 2


def round_tau(round, solver: str) -> float:
    """The KL strength τ of the game a round belongs to (the loop sets ``round.tau``); it must be > 0."""
    tau = getattr(round, "tau", None)
    if tau is None or not tau > 0:
        raise GameError(f"{solver}: sampled training needs the round's KL strength tau > 0, got {tau!r}")
    return float(tau)
