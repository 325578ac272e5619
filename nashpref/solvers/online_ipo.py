"""Online IPO (Calandriello et al., *Human Alignment of Large Language Models through Online Preference
Optimisation*, arXiv 2403.08635, ICML 2024).

Exact dynamics: gradient descent on the softmax logits of the population loss ("Online IPO 2" of the EGPO code),
whose stationary points with full support are the regularised equilibrium; the last iterate is reported and the
default step 10τ²/(1 + 10τ²) lies inside the step's (derived) stability region. Sampled training: the squared IPO
loss on pairs y, y′ ~ π_t with target (P(y ≻ y′) − ½)/τ.

The update, the loss, the sampling scheme, the options and the sources: docs/algorithms.md#online-ipo. What it
reaches on tabular games: bench/solvers.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.checks import require_tau, round_tau
from nashpref.solvers.losses import log_ratio_regression

DEFAULT_LR_SCALE = 10.0          # lr = s·τ²/(1 + s·τ²), well inside the stability region (bench/solvers.md)
DEFAULT_LR_ITERATIONS = 100.0    # default budget: iterations·lr = this
MAX_DEFAULT_ITERATIONS = 50_000


def online_ipo_loss(log_prob: Tensor, log_prob_other: Tensor, ref: Tensor, ref_other: Tensor, preference: Tensor,
                    tau: float) -> Tensor:
    """Per-pair (h_θ(y, y') − (P(y ≻ y') − ½)/τ)², with h_θ = log π_θ(y)/μ(y) − log π_θ(y')/μ(y')."""
    return log_ratio_regression(log_prob, log_prob_other, ref, ref_other, (preference - 0.5) / tau)


def population_gradient(game: PreferenceGame, log_pi: Tensor) -> Tensor:
    """∂L/∂z = 4π(k)[a(k) − E_π a − (P(k ≻ π) − ½)/τ] of the population loss, at z = log π."""
    pi = log_pi.exp()
    a = log_pi - game.log_mu
    return 4.0 * pi * (a - (pi * a).sum(-1, keepdim=True) - (game.win_rates(pi) - 0.5) / game.tau)


def default_lr(tau: float) -> float:
    return DEFAULT_LR_SCALE * tau * tau / (1.0 + DEFAULT_LR_SCALE * tau * tau)


@dataclasses.dataclass
class Config(SolverConfig):
    positive = ("lr",)

    lr: float | None = None
    """Exact dynamics: gradient-descent step on the logits of the population loss. None uses 10τ²/(1+10τ²),
    which is stable for every τ > 0 on the games tested. Sampled training uses the loop's --lr instead."""


@register
class OnlineIPO(Solver):
    name = "online-ipo"
    Config = Config
    sampled_defaults: ClassVar[dict] = {"lr": 0.05, "optimizer": "sgd", "samples": 64, "iterations": 400}

    def init(self, game: PreferenceGame) -> Tensor:
        require_tau(game, self.name)
        return game.log_mu.clone()

    def step_size(self, tau: float) -> float:
        """The exact dynamics' step: the configured lr, or 10τ²/(1 + 10τ²)."""
        return default_lr(tau) if self.config.lr is None else self.config.lr

    def default_iterations(self, game: PreferenceGame) -> int:
        lr = self.step_size(require_tau(game, self.name))
        return min(math.ceil(DEFAULT_LR_ITERATIONS / lr), MAX_DEFAULT_ITERATIONS)

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        lr = self.step_size(require_tau(game, self.name))
        return torch.log_softmax(log_pi - lr * population_gradient(game, log_pi), dim=-1)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        tau = round_tau(round, self.name)
        first, second = round.sample(round.samples), round.sample(round.samples)
        return {"contexts": round.contexts, "first": first, "second": second, "tau": tau,
                "preference": round.prefer(first, second),
                "ref_first": round.log_prob(first, "reference"), "ref_second": round.log_prob(second, "reference")}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        log_prob = policy.log_prob(batch["contexts"], batch["first"])
        log_prob_other = policy.log_prob(batch["contexts"], batch["second"])
        per_pair = online_ipo_loss(log_prob, log_prob_other, batch["ref_first"].to(log_prob),
                                   batch["ref_second"].to(log_prob), batch["preference"].to(log_prob), batch["tau"])
        return per_pair.mean(), {}
