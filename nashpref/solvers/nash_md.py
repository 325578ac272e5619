"""Nash-MD and Nash-MD-PG (Munos, Valko, Calandriello, Azar, Rowland, Guo, Tang, Geist, Mesnard, Fiegel, Michi,
Selvi, Girgin, Momchev, Bachem, Mankowitz, Precup, Piot; *Nash Learning from Human Feedback*, arXiv 2312.00886,
ICML 2024).

**Exact dynamics.** Mirror descent against the geometric mixture of the current policy and μ:

    π_t^μ ∝ π_t^(1−η_t τ) μ^(η_t τ),        π_{t+1} ∝ π_t^μ exp(η_t P(y ≻ π_t^μ)).

The default step is η_t = 2/(τ(t+2)). The **last iterate** converges to the regularised equilibrium π*, with
KL(π*‖π_{t+1}) ≤ (1 − η_t τ) KL(π*‖π_t) + 2η_t², hence KL(π*‖π_T) ≤ 8/(τ²(T+1)) (paper, Theorem 1, as
recalled). tests/test_nash_md.py checks both at every step. In practice the bound is loose: after 2000 steps
the KL is 1e-3 of it at τ = 0.1. The default budget of max(1000, 5/τ²) steps (capped at 50 000) gives
gap ≈ 1e-7 at τ = 0.1. A constant η only reaches an O(η/τ) neighbourhood of π*.

**Sampled training.**

* ``loss="pg"`` (Nash-MD-PG, §3.2 of the paper): draw y ~ π_t and y' ~ π_t^(1−β) μ^β (β = ``mixture``), then
  minimise −[P(y ≻ y') − ½ − τ·sg(log π_θ(y)/μ(y))]·log π_θ(y). This is policy-gradient ascent on
  P(π_θ ≻ π^β) − τ KL(π_θ‖μ); the ½ is a control variate, and the KL term is sequence-level.
* ``loss="ipo"`` (IPO-MD, Calandriello et al., arXiv 2403.08635): y, y' both from the mixture, minimising
  (h_θ(y, y') − (P(y ≻ y') − ½)/τ)².

Both have the fixed point π = softmax(log μ + P π^β/τ) with π^β ∝ π^(1−β) μ^β. This equals π* only when β → 0,
as in the exact dynamics, where β = η_t τ → 0. With the paper's β = 0.125 the fixed point is biased slightly
away from π*: gap 3e-3 on random N = 10 games at τ = 0.1. A Bernoulli label may replace P: both gradients
are linear in it, so they stay unbiased. With β = 0, the PG loss's expected gradient on tabular logits is
exactly τ/4 times online IPO's, so it needs a ~4/τ times larger SGD step. The tests use lr 4 for 'pg' and 0.1 for 'ipo'
(K = 64, 400 rounds), which reach gap ≤ 0.011.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.errors import BadInput
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.checks import check_number, require_tau, round_tau
from nashpref.solvers.online_ipo import online_ipo_loss

DEFAULT_ITERATIONS_PER_TAU2 = 5.0       # budget 5/τ² steps; measured gaps are far below the KL bound's 1.6
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
    iterate = "last"
    needs_tau = True

    @property
    def sampled_defaults(self) -> dict:
        """tests/test_nash_md.py: gap ≤ 0.008 (pg) / 0.0085 (ipo) on N=10 random games at τ = 0.1, 5 seeds. The PG
        gradient is τ/4 times the IPO one, hence its larger lr."""
        lr = 4.0 if self.config.loss == "pg" else 0.1
        return {"lr": lr, "optimizer": "sgd", "samples": 64, "iterations": 400}

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
        beta = check_number(self.config.mixture, "mixture", self.name, high=1.0, low_open=False)
        if self.config.loss not in ("pg", "ipo"):
            raise BadInput(f"{self.name}: loss must be 'pg' or 'ipo', got {self.config.loss!r}")
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
