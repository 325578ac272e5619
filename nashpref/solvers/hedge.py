"""Hedge (multiplicative weights) tuning for the unregularised game (SPPO, DNO).

Self-play multiplicative weights π_{t+1} ∝ π_t exp(η Pπ_t) started at μ has regret R_T ≤ L/η + ηT/8 against
every pure response (payoffs in [0, 1], Hoeffding's lemma), with L = log(1/min μ). In self-play ⟨π_t, Pπ_t⟩ = ½,
so the unregularised gap of the average iterate is exactly 2 R_T / T. The step η = √(8L/T) therefore guarantees
Gap₀(π̄_T) ≤ √(2L/T).
"""

from __future__ import annotations

import math

from nashpref.core.game import PreferenceGame
from nashpref.errors import BadInput
from nashpref.solvers.base import Solver


def hedge_log_range(game: PreferenceGame) -> float:
    """L = log(1/min μ), the prior-weight term of the Hedge regret bound (log N for uniform μ); at least log 2,
    so a one-action game still gets a positive horizon."""
    return max(-math.log(game.mu.min().item()), math.log(2.0))


def check_target_gap(target_gap, where: str) -> None:
    """BadInput unless 0 < target_gap ≤ 1 (the unregularised gap lies in [0, 1])."""
    if isinstance(target_gap, bool) or not isinstance(target_gap, (int, float)) or not 0.0 < target_gap <= 1.0:
        raise BadInput(f"{where}: target_gap must lie in (0, 1], got {target_gap!r}")


def hedge_horizon(game: PreferenceGame, target_gap: float) -> int:
    """Smallest T whose Hedge bound √(2L/T) on the average iterate's unregularised gap is ≤ ``target_gap``."""
    check_target_gap(target_gap, game.name)
    return math.ceil(2.0 * hedge_log_range(game) / target_gap ** 2)


def hedge_step(game: PreferenceGame, horizon: int) -> float:
    """The step √(8L/T) that minimises the regret bound L/η + ηT/8 over a horizon of T steps."""
    return math.sqrt(8.0 * hedge_log_range(game) / horizon)


SAMPLED_ETA = 1.0


class HedgeSolver(Solver):
    """Base of the multiplicative-weights solvers of the unregularised game (SPPO, DNO): τ is ignored, the average
    iterate carries the guarantee, and the default horizon and step come from the Hedge bound for the Config's
    ``target_gap``."""

    iterate = "average"
    needs_tau = False

    def __init__(self, config=None):
        super().__init__(config)
        check_target_gap(self.config.target_gap, self.name)

    def default_iterations(self, game: PreferenceGame) -> int:
        return hedge_horizon(game, self.config.target_gap)

    def hedge_step(self, game: PreferenceGame) -> float:
        """The step √(8L/T) for the default horizon T."""
        return hedge_step(game, self.default_iterations(game))

    def sampled_eta(self) -> float:
        """η in sampled training: the Config's, else SAMPLED_ETA (the Hedge step for the horizon is far too small
        for a few thousand sampled rounds)."""
        return SAMPLED_ETA if self.config.eta is None else self.config.eta
