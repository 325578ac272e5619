"""The payoff the solvers play on (``nashpref train --payoff``): the oracle's probability P, or the log-odds
R = log(P/(1 − P)) (Azar et al., arXiv 2310.12036; the tabular side is ``nashpref.theory.logodds``).

Every solver's per-sample loss is derived for a preference in [0, 1] with P + Pᵀ = 1 (and Bernoulli labels need
one). So the log-odds game is played as its equivalent probability game: P' = ½ + c·R at strength c·τ. The
equilibrium depends on R/τ only, so it is the log-odds game's equilibrium; every duality gap is c times the
log-odds gap. A certain preference has infinite log-odds, so P is first clipped to [ε, 1 − ε] with ε the machine
epsilon of the oracle's dtype (float32 for text oracles), which bounds |R| by L = log((1 − ε)/ε) and fixes
c = 1/(2L) before any query: P' ∈ [0, 1]. In float32, L ≈ 15.94 and c ≈ 0.03136.

The fixed point is the log-odds game's for every solver; the steps depend on the loss. Online IPO's target
(P' − ½)/τ' is exactly logit(P)/τ. Losses linear in P' − ½ (Nash-MD's policy gradient, SPPO, DNO) are c times
the log-odds ones: Adam largely absorbs that, and with SGD the learning rate should be scaled by 1/c. Step sizes
that depend on τ (INPO's default η) are taken at τ' = cτ.

Bernoulli labels are drawn from P', which is what the equivalent game needs (an unbiased 0/1 estimate of logit(P)
itself does not exist).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nashpref.errors import BadInput

PAYOFFS = ("probability", "log-odds")


def log_odds_scale(dtype: torch.dtype = torch.float32) -> float:
    """c = 1/(2L), L = log((1 − ε)/ε): the largest |logit| after clipping P to [ε, 1 − ε]."""
    eps = torch.finfo(dtype).eps
    return 1.0 / (2.0 * (math.log1p(-eps) - math.log(eps)))


class LogOddsPayoff:
    """P'(a ≻ b | x) = ½ + c·logit(clip(P(a ≻ b | x), ε, 1 − ε)) for any oracle with ``prefer(contexts, a, b)``."""

    def __init__(self, oracle, dtype: torch.dtype = torch.float32):
        self.oracle, self.eps, self.scale = oracle, torch.finfo(dtype).eps, log_odds_scale(dtype)

    def transform(self, p: Tensor) -> Tensor:
        """P' for probabilities P (same shape and dtype); computed in float64, where 1 − P is exact."""
        q = p.double().clamp(self.eps, 1.0 - self.eps)
        return (0.5 + self.scale * (torch.log(q) - torch.log1p(-q))).clamp(0.0, 1.0).to(p.dtype)

    def prefer(self, contexts: Tensor, a, b) -> Tensor:
        return self.transform(self.oracle.prefer(contexts, a, b))


def game_oracle(oracle, payoff: str, tau: float, reference=None, seed: int = 0,
                dtype: torch.dtype = torch.float32):
    """(the oracle the solver queries, the τ it is handed) for ``--payoff``: an oracle that needs the reference
    (``bind``, e.g. ``maxmin:``) is bound to it first; ``log-odds`` then wraps it at τ' = c·τ."""
    if payoff not in PAYOFFS:
        raise BadInput(f"--payoff {payoff!r}: choose one of {', '.join(PAYOFFS)}")
    bind = getattr(oracle, "bind", None)
    if bind is not None and reference is not None:
        oracle = bind(reference, torch.Generator().manual_seed(seed + 2))
    if payoff == "probability":
        return oracle, tau
    wrapped = LogOddsPayoff(oracle, dtype)
    return wrapped, tau * wrapped.scale


def stateful_oracle(oracle):
    """The part of a played oracle that carries state across rounds (``loop_state``, e.g. ``maxmin:``'s group
    weights), so that checkpoints keep it; None when there is none."""
    inner = oracle.oracle if isinstance(oracle, LogOddsPayoff) else oracle
    return inner if hasattr(inner, "loop_state") else None
