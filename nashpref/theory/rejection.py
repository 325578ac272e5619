"""The enhancer by rejection sampling, for policies that can only be sampled (language models).

The exact enhancer (``nashpref.theory.enhancer``) maximises ‖w(π)‖_{Σ⁻¹} over the KL ball {KL(π‖π1) ≤ ε}, and its
solution is an exponential tilt of the main policy, π2 ∝ π1·exp(β·s) with the score s(y) = (Gv)(y) of the best dual
direction v (BT: s(y) = −φ(x, y)ᵀv). A language model's π1 cannot be enumerated, but it can be sampled. So:

1. draw K responses y_1..y_K ~ π1(·|x) and compute their features φ(x, y_k);
2. solve the enhancer problem exactly on the empirical distribution π̂1 = uniform over the K draws. This gives the
   direction v, the tilt β and the tilted weights q_k ∝ exp(β·s(y_k)) on the draws. The KL budget is met for
   KL(q‖π̂1), the self-normalised importance-sampling estimate of KL(π2‖π1);
3. accept each draw with probability q_k / max_j q_j = exp(β(s(y_k) − max_j s(y_j))). The accepted draws are
   exact samples of q: rejection sampling from π̂1 with the envelope max_j q_j/(1/K).

As K grows, q converges to the tilt of π1 (a consistent self-normalised estimate), so the accepted responses are
draws from the exact enhancer. ``tests/test_theory_rejection.py`` checks this on tabular policies, where the exact
enhancer is known. Expected acceptances: Σ_k q_k/max q = 1/max q ≥ 1, and they fall as the budget grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nashpref.core.game import DTYPE
from nashpref.theory.bandit import LinearBandit
from nashpref.theory.enhancer import enhancer


@dataclass(frozen=True)
class Rejection:
    weights: Tensor     # (B, K) q: the empirical enhancer on the draws
    accept: Tensor      # (B, K) acceptance probabilities q / max q
    accepted: Tensor    # (B, K) bool: the draws kept


def empirical_enhancer(phi: Tensor, sigma: Tensor, budget: float, model: str = "bt") -> Tensor:
    """(B, K) q: the exact enhancer of the problem whose actions are the K draws of π1, each of weight 1/K.
    ``phi`` (B, K, d) are the draws' features; ``sigma`` the design covariance (D, D)."""
    phi = phi.to(DTYPE)
    uniform = torch.full(phi.shape[:2], 1.0 / phi.shape[1], dtype=DTYPE)
    if budget <= 0:                     # the ball is {π1}; the tilt's bisection would stop at β = e^−30, not 0
        return uniform
    return enhancer(LinearBandit(phi=phi, mu=uniform, tau=1.0), uniform, sigma.to(DTYPE), budget, model)


def rejection_enhancer(phi: Tensor, sigma: Tensor, budget: float, generator: torch.Generator,
                       model: str = "bt") -> Rejection:
    """Which of the K draws of π1 per context become the enhancer's responses (see the module doc)."""
    q = empirical_enhancer(phi, sigma, budget, model)
    accept = q / q.amax(-1, keepdim=True)
    accepted = torch.rand(q.shape, generator=generator, dtype=DTYPE) < accept
    return Rejection(weights=q, accept=accept, accepted=accepted)
