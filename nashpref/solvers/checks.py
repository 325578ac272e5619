"""Checks every solver makes of its options and of the round it is given; each failure is one line (BadInput, or
GameError when the game itself cannot be solved)."""

from __future__ import annotations

import math

from nashpref.checks import number
from nashpref.core.game import PreferenceGame
from nashpref.errors import BadInput, GameError


def require_tau(game: PreferenceGame, solver: str) -> float:
    """τ of ``game``, or GameError when it is 0: the solver's step and guarantee need a KL-regularised game."""
    if game.tau <= 0:
        raise GameError(f"{game.name}: solver {solver} needs tau > 0 (it solves the KL-regularised game and its "
                        "step mixes in μ with weight η·τ); pass --tau with a positive value")
    return game.tau


def check_number(value, field: str, solver: str, *, low: float = 0.0, high: float = math.inf,
                 low_open: bool = True, allow_none: bool = False) -> float | None:
    """``value`` as a float, or BadInput unless it is finite and lies in (low, high] ([low, high] if not
    ``low_open``); None passes with ``allow_none``."""
    return number(value, f"{solver}: {field}", low, high, low_open=low_open, allow_none=allow_none)


def check_choice(value, field: str, solver: str, allowed: tuple[str, ...]) -> str:
    """``value``, or BadInput unless it is one of ``allowed``."""
    if value not in allowed:
        raise BadInput(f"{solver}: {field} must be {' or '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def round_tau(round, solver: str) -> float:
    """The KL strength τ of the game a round belongs to (the loop sets ``round.tau``); it must be > 0."""
    tau = getattr(round, "tau", None)
    if tau is None or not tau > 0:
        raise BadInput(f"{solver}: sampled training needs the round's KL strength tau > 0, got {tau!r}")
    return float(tau)


def require_samples(name: str, k: int, at_least: int = 2) -> None:
    if k < at_least:
        raise BadInput(f"{name}: needs at least {at_least} samples per context to compare, got samples={k}")
