"""Nash-MD and Nash-MD-PG (Munos et al., *Nash Learning from Human Feedback*, arXiv 2312.00886, ICML 2024), and
IPO-MD (Calandriello et al., arXiv 2403.08635).

Exact dynamics: mirror descent against the geometric mixture π_t^(1−η_t τ) μ^(η_t τ), whose last iterate reaches
the regularised equilibrium with the decaying step η_t = 2/(τ(t+2)). Sampled training: the Nash-MD-PG
policy-gradient loss (``loss="pg"``, y ~ π_t against y′ from the mixture π_t^(1−β) μ^β) or the IPO loss on pairs
from the mixture (``loss="ipo"``).

The update, the losses, the sampling scheme, the options and the sources: docs/algorithms.md#nash-md. What it
reaches on tabular games: bench/solvers.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame

from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.checks import check_number, require_tau, round_tau
from nashpref.solvers.online_ipo import online_ipo_loss

DEFAULT_ITERATIONS_PER_TAU2 = 5.0       # budget 5/τ² steps: the KL bound is loose (bench/solvers.md)
MIN_DEFAULT_ITERATIONS = 1000
MAX_DEFAULT_ITERATIONS = 50_000


def nash_md_pg_loss(log_prob: Tensor, ref: Tensor, preference: Tensor, tau: float) -> Tensor:
    """Per-sample −[P(y ≻ y') − ½ − τ·sg(log π_θ(y) − log μ(y))]·log π_θ(y); the gradient flows only through
    the log π_θ(y) factor."""
    advantage = preference - 0.5 - tau * (log_prob.detach() - ref)
    return -advantage * log_prob


def mixture(game: PreferenceGame, log_pi: Tensor, weight: float) -> Tensor:
    """log of π^(1−w) μ^w, normalised."""
    return torch.log_softmax((1.0 - weight) * log_pi + weight * game.log_mu, dim=-1)


@dataclasses.dataclass
class Config(SolverConfig):
    positive = ("eta",)
    choices = {"loss": ("pg", "ipo")}
    bounded = {"mixture": 1.0}

    eta: float | None = None
    """Exact dynamics: a constant step η (η·τ ≤ 1), which only reaches an O(η/τ) neighbourhood of π*. None uses
    the decaying η_t = 2/(τ(t+2)), which carries the bound KL(π*‖π_T) ≤ 8/(τ²(T+1))."""
    mixture: float = 0.125
    """Sampled training: β of the opponent's geometric mixture π_t^(1−β) μ^β. The paper's best value was 0.125;
    β = 0 is plain self-play."""
    loss: Literal["pg", "ipo"] = "pg"
    """Sampled loss: 'pg' is Nash-MD-PG (y ~ π_t against y' from the mixture); 'ipo' is IPO-MD (both from the
    mixture, squared IPO loss)."""


@register
class NashMD(Solver):
    name = "nash-md"
    Config = Config
    samples_mixture = True          # train --sampler vllm then starts the two-stack mixture engine

    @property
    def sampled_defaults(self) -> dict:
        """Tuned tabular settings (`solve --recommended`; what they reach: bench/solvers.md). The PG gradient is τ/4
        times the IPO one, hence its 4/τ = 40-fold lr. Per-context SGD steps (sampled.py) of 4 and 0.1 left a noise
        ball up to 0.037 on random N = 5–10 games; 1.6 and 0.04 for 800 rounds end ≤ 0.013 on those and on the
        10-context egpo-random game (seeds 0, 1)."""
        lr = 1.6 if self.config.loss == "pg" else 0.04
        return {"lr": lr, "optimizer": "sgd", "samples": 64, "iterations": 800}

    def step_size(self, tau: float, t: int) -> float:
        if self.config.eta is None:
            return 2.0 / (tau * (t + 2))
        return check_number(self.config.eta, "eta", self.name, high=1.0 / tau)

    def default_iterations(self, game: PreferenceGame) -> int:
        tau = require_tau(game, self.name)
        return min(max(math.ceil(DEFAULT_ITERATIONS_PER_TAU2 / tau ** 2), MIN_DEFAULT_ITERATIONS),
                   MAX_DEFAULT_ITERATIONS)

    def init(self, game: PreferenceGame) -> Tensor:
        require_tau(game, self.name)
        return game.log_mu.clone()

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        tau = require_tau(game, self.name)
        eta = self.step_size(tau, t)
        log_mix = mixture(game, log_pi, eta * tau)
        return torch.log_softmax(log_mix + eta * game.win_rates(log_mix.exp()), dim=-1)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        tau = round_tau(round, self.name)
        beta = self.config.mixture
        k = round.samples
        if self.config.loss == "pg":
            first = round.sample(k, "policy")
        else:
            first = round.sample(k, "mixture", beta)
        second = round.sample(k, "mixture", beta)
        batch = {"contexts": round.contexts, "first": first, "tau": tau, "preference": round.prefer(first, second),
                 "ref_first": round.log_prob(first, "reference")}
        if self.config.loss == "ipo":
            batch |= {"second": second, "ref_second": round.log_prob(second, "reference")}
        return batch

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        log_prob = policy.log_prob(batch["contexts"], batch["first"])
        ref = batch["ref_first"].to(log_prob)
        preference = batch["preference"].to(log_prob)
        if self.config.loss == "pg":
            per_sample = nash_md_pg_loss(log_prob, ref, preference, batch["tau"])
            return per_sample.mean(), {"log_ratio": (log_prob.detach() - ref).mean().item()}
        log_prob_other = policy.log_prob(batch["contexts"], batch["second"])
        per_pair = online_ipo_loss(log_prob, log_prob_other, ref, batch["ref_second"].to(log_prob), preference,
                                   batch["tau"])
        return per_pair.mean(), {}
