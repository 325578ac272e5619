"""Online IPO (Calandriello, Guo, Munos, Rowland, Tang, Pires, Richemond, Le Lan, Valko, Liu, Azar; *Human
Alignment of Large Language Models through Online Preference Optimisation*, arXiv 2403.08635, ICML 2024).

**Exact dynamics.** Gradient descent, step ``lr``, on the softmax logits z of π = softmax(z), on the population
loss ("Online IPO 2" of the EGPO code)

    L(z) = Σ_{y,y'} sg π(y) sg π(y') (a(y) − a(y') − (P(y ≻ y') − ½)/τ)²,    a = log π − log μ.

Both pair weights are frozen, so ∂L/∂a(k) = 4π(k)[a(k) − E_π a − (P(k ≻ π) − ½)/τ]. These partials sum to zero
(πᵀPπ = ½), so the softmax Jacobian leaves them unchanged and they are also ∂L/∂z(k). The stationary points
with full support satisfy log π − log μ − Pπ/τ = const: the regularised equilibrium π*. The **last iterate**
converges to it.

*No global rate is proven* (the paper relates online IPO to Nash-MD, which has the same fixed point). *Derived here:*
near π* the step is linear with eigenvalues 1 − lr·λ, where λ ≈ 4π(k)(1 ± iω/τ). It is stable only for
lr ≲ τ²/(2 max π·ω²), and its slowest mode contracts like 1 − 4·lr·min π(k). The default lr = 10τ²/(1 + 10τ²)
lies safely inside the stability region. Measured on random N = 10 games, the region's edge is 37–57 τ² for
τ ≤ 0.1. The default budget is 100/lr steps (capped at 50 000), so it grows like 1/τ². At τ = 0.1 (1 100 steps)
the worst gap over 10 random games was 5e-5 for N = 10 and 2.4e-4 for N = 50. At τ = 0.01 the capped budget
leaves worst gaps of 1.4e-3 (N = 10) and 1.9e-2 (N = 50), so use egpo there.

**Sampled training** (§8.2). Draw y, y' ~ π_t, K pairs per context, and minimise

    (h_θ(y, y') − (P(y ≻ y') − ½)/τ)²,    h_θ = log π_θ(y)/μ(y) − log π_θ(y')/μ(y').

A Bernoulli label may replace P: the gradient is linear in the target, so it stays unbiased. On tabular games
(τ = 0.1), SGD with lr 0.05, K = 64 and 400 rounds reaches gap ≤ 0.005 (tests/test_online_ipo.py).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.checks import check_number, require_tau, round_tau
from nashpref.solvers.losses import log_ratio_regression

DEFAULT_LR_SCALE = 10.0          # lr = s·τ²/(1 + s·τ²); stability needs roughly lr < 37τ² (τ ≤ 0.1)
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
    lr: float | None = None
    """Exact dynamics: gradient-descent step on the logits of the population loss. None uses 10τ²/(1+10τ²),
    which is stable for every τ > 0 on the games tested. Sampled training uses the loop's --lr instead."""


@register
class OnlineIPO(Solver):
    name = "online-ipo"
    Config = Config
    iterate = "last"
    needs_tau = True
    # tests/test_online_ipo.py: gap ≤ 0.005 on N=10 random games (τ = 0.1) and ≤ 0.002 on weighted-rps, 5 seeds
    sampled_defaults = {"lr": 0.05, "optimizer": "sgd", "samples": 64, "iterations": 400}

    def step_size(self, tau: float) -> float:
        if self.config.lr is None:
            return default_lr(tau)
        return check_number(self.config.lr, "lr", self.name)

    def default_iterations(self, game: PreferenceGame) -> int:
        lr = self.step_size(require_tau(game, self.name))
        return min(math.ceil(DEFAULT_LR_ITERATIONS / lr), MAX_DEFAULT_ITERATIONS)

    def init(self, game: PreferenceGame) -> Tensor:
        require_tau(game, self.name)
        return game.log_mu.clone()

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
