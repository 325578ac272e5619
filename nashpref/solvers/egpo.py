"""EGPO: Extragradient Preference Optimization (Zhou, Fazel, Du; arXiv 2503.08942, COLM 2025), the
entropy-regularised policy extragradient of Cen, Wei & Chi (arXiv 2105.15186) on the symmetric preference game.

Exact dynamics: an extragradient step (a half step π_{t+½}, then the full step from π_t with π_{t+½}'s win-rates),
whose last iterate converges linearly to the regularised equilibrium for η ≤ 1/(τ + 1). Sampled training: the
online-IPO loss on triples y, y′, y″ ~ π_t; ``extragradient = True`` makes the loop take the half step, collect a
second round at θ_{t+½}, restore parameters and optimizer state to θ_t, and step from θ_t with that round.

The update, the loss, the sampling scheme, the options and the sources: docs/algorithms.md#egpo. What it reaches on
tabular games: bench/solvers.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from torch import Tensor

from nashpref.core.equilibrium import extragradient_step
from nashpref.core.game import PreferenceGame
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.checks import check_number, require_tau, round_tau
from nashpref.solvers.losses import log_ratio_regression

DEFAULT_DECADES = 12            # default budget: (1 − ητ)^T ≤ 10^-12
MAX_DEFAULT_ITERATIONS = 200_000


def egpo_loss(log_prob: Tensor, log_prob_other: Tensor, ref: Tensor, ref_other: Tensor, preference: Tensor,
              preference_other: Tensor, tau: float) -> Tensor:
    """Per-triple (a(y) − a(y') − (P(y ≻ y'') − P(y' ≻ y''))/τ)², a = log π_θ − log μ."""
    return log_ratio_regression(log_prob, log_prob_other, ref, ref_other, (preference - preference_other) / tau)


@dataclasses.dataclass
class Config(SolverConfig):
    positive = ("eta",)

    eta: float | None = None
    """Exact dynamics: step η, with η·τ ≤ 1. None uses 1/(τ+1), the largest step for which the linear rate
    (1 − ητ)^t is guaranteed."""
    normalize_logprobs: bool = True
    """Sampled training: use length-normalised (mean per-token) log-probs for a = log π_θ − log μ, as the
    paper's LM code does. This is a no-op for tabular policies."""


@register
class EGPO(Solver):
    name = "egpo"
    Config = Config
    extragradient = True
    sampled_defaults: ClassVar[dict] = {"lr": 0.05, "optimizer": "sgd", "samples": 64, "iterations": 400}

    def step_size(self, tau: float) -> float:
        if self.config.eta is None:
            return 1.0 / (tau + 1.0)
        return check_number(self.config.eta, "eta", self.name, high=1.0 / tau)

    def default_iterations(self, game: PreferenceGame) -> int:
        tau = require_tau(game, self.name)
        rate = self.step_size(tau) * tau
        return min(math.ceil(DEFAULT_DECADES * math.log(10) / rate), MAX_DEFAULT_ITERATIONS)

    def init(self, game: PreferenceGame) -> Tensor:
        require_tau(game, self.name)
        return game.log_mu.clone()

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        return extragradient_step(game, log_pi, self.step_size(require_tau(game, self.name)))

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        tau = round_tau(round, self.name)
        k, normalize = round.samples, self.config.normalize_logprobs
        first, second, opponent = round.sample(k), round.sample(k), round.sample(k)
        return {"contexts": round.contexts, "first": first, "second": second, "tau": tau,
                "preference": round.prefer(first, opponent), "preference_other": round.prefer(second, opponent),
                "ref_first": round.log_prob(first, "reference", normalize=normalize),
                "ref_second": round.log_prob(second, "reference", normalize=normalize)}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        normalize = self.config.normalize_logprobs
        log_prob = policy.log_prob(batch["contexts"], batch["first"], normalize=normalize)
        log_prob_other = policy.log_prob(batch["contexts"], batch["second"], normalize=normalize)
        per_triple = egpo_loss(log_prob, log_prob_other, batch["ref_first"].to(log_prob),
                               batch["ref_second"].to(log_prob), batch["preference"].to(log_prob),
                               batch["preference_other"].to(log_prob), batch["tau"])
        return per_triple.mean(), {}
