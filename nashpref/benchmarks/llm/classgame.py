"""The known-answer game of the LLM race: the ``rule:cycle`` oracle reads a response only through its style
(warm / cold / plain), so the KL-regularised LM game reduces exactly to a 3 × 3 matrix game on the styles.

Why exactly: P(y ≻ y') = M[c(y), c(y')]. For any π, max_π' P(π' ≻ π) − τ KL(π'‖μ) is attained by
π'(y) ∝ μ(y) exp(M[c(y)]·s/τ), with s the class shares of π; so every quantity of the game (the duality gap, the
equilibrium, every win-rate) depends on π only through s when π keeps μ's law inside each class, and the gap of
any π is ≥ that of the policy with the same class shares and μ's law inside the classes. We score the class
shares s of what the LM samples: the *class-level* gap, exact up to the sampling of s.

Marked on the plots:

* π*: the τ-regularised equilibrium of the class game (``nashpref.core.equilibrium.solve_equilibrium``);
* the Bradley–Terry/Gibbs class policy: the fixed point of iterative DPO's exact update
  π = Gibbs(μ, ŝ(π)/τ), ŝ(π) the Bradley–Terry scores fitted to M on pairs drawn from π ⊗ π — where a method
  that treats the preference as a Bradley–Terry reward comes to rest, if it comes to rest at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import PreferenceGame
from nashpref.errors import BadInput
from nashpref.preferences.rule import CYCLE_MATRIX, STYLES, style
from nashpref.solvers.iterative_dpo import fit_bradley_terry

CLASSES = STYLES
ORACLE = "rule:cycle"
BT_RIDGE = 1e-10


def class_shares(texts: Sequence[str]) -> Tensor:
    """(K,) float64 share of each class (style) among ``texts``."""
    counts = torch.zeros(len(CLASSES), dtype=torch.float64)
    for text in texts:
        counts[CLASSES.index(style(text))] += 1
    if counts.sum() == 0:
        raise BadInput("class shares of no responses")
    return counts / counts.sum()


@dataclass
class ClassGame:
    """The class game at τ with μ's class shares as its reference."""

    game: PreferenceGame
    equilibrium: Tensor          # (K,)
    bt_gibbs: Tensor             # (K,)

    @classmethod
    def build(cls, mu: Tensor, tau: float) -> "ClassGame":
        mu = torch.as_tensor(mu, dtype=torch.float64)
        mu = mu / mu.sum()
        if bool((mu <= 0).any()):
            raise BadInput(f"class game: μ gives no mass to {[c for c, m in zip(CLASSES, mu) if m <= 0]}; "
                           "the game needs every class")
        game = PreferenceGame.create(torch.tensor(CYCLE_MATRIX, dtype=torch.float64), mu, tau, name="class game",
                                     actions=CLASSES)
        return cls(game, solve_equilibrium(game).policy[0], bt_gibbs_fixed_point(game))

    @property
    def tau(self) -> float:
        return self.game.tau

    @property
    def mu(self) -> Tensor:
        return self.game.mu[0]

    def gap(self, shares: Tensor) -> float:
        """Exact τ-regularised duality gap of the class distribution ``shares``."""
        shares = torch.as_tensor(shares, dtype=torch.float64)
        return self.game.gap(shares[None]).item()

    def win_rate(self, a: Tensor, b: Tensor) -> float:
        """P(a ≻ b) = aᵀ M b for two class distributions."""
        return (torch.as_tensor(a, dtype=torch.float64) @ self.game.P[0] @ torch.as_tensor(b, dtype=torch.float64)).item()

    def league(self, shares: Sequence[Tensor]) -> list[list[float]]:
        """The win-rate matrix of every class distribution against every other."""
        return [[self.win_rate(a, b) for b in shares] for a in shares]

    def describe(self) -> dict:
        return {"classes": list(CLASSES), "matrix": self.game.P[0].tolist(), "tau": self.tau,
                "reference": self.mu.tolist(), "reference_gap": self.gap(self.mu),
                "equilibrium": self.equilibrium.tolist(), "equilibrium_gap": self.gap(self.equilibrium),
                "bt_gibbs": self.bt_gibbs.tolist(), "bt_gibbs_gap": self.gap(self.bt_gibbs)}


def bt_gibbs_map(game: PreferenceGame, pi: Tensor) -> Tensor:
    """Iterative DPO's exact update from π (reference "initial"): Gibbs(μ, ŝ(π)/τ)."""
    scores = fit_bradley_terry(game.P, pi[None], BT_RIDGE)
    return torch.softmax(game.log_mu + scores / game.tau, dim=-1)[0]


def bt_gibbs_fixed_point(game: PreferenceGame, tol: float = 1e-10) -> Tensor:
    """π with π = Gibbs(μ, ŝ(π)/τ), by a root finder on the logits (the plain iteration of the map is unstable at
    small τ: iterative DPO's own iterates circle it)."""
    from scipy.optimize import root

    log_mu = game.log_mu[0].numpy()

    def policy(z: np.ndarray) -> Tensor:
        logits = torch.tensor(np.concatenate([[0.0], z]), dtype=torch.float64)
        return torch.softmax(logits, dim=-1)

    def residual(z: np.ndarray) -> np.ndarray:
        mapped = torch.log(bt_gibbs_map(game, policy(z))).numpy()
        return (mapped[1:] - mapped[0]) - z

    start = log_mu[1:] - log_mu[0]
    solution = root(residual, start, method="hybr", tol=1e-13)
    pi = policy(solution.x)
    if not (bt_gibbs_map(game, pi) - pi).abs().max().item() <= tol:
        raise RuntimeError("class game: no Bradley–Terry/Gibbs fixed point found")
    return pi
