"""INPO: Iterative Nash Policy Optimization (Zhang, Yu, Peng, Song, Tian, Huo, Jiang, Mi, Yu; arXiv 2407.00617,
ICLR 2025).

**Exact dynamics.** Online mirror descent of each player against itself on the KL-regularised game, started at μ:

    π_{t+1}(y) ∝ π_t(y)^(1−ητ) μ(y)^(ητ) exp(η P(y ≻ π_t)).

It converges to the **regularised** equilibrium π*_τ; the **last iterate** is reported.

*Proven* (the paper, recalled and not checked against the PDF): INPO is no-regret, so the average iterate
converges to π*_τ. The ICLR version also claims last-iterate convergence.

*Derived here, which fixes the default step.* Write A = P − ½ (skew) and D = diag π* − π*π*ᵀ. In log space,
modulo constant shifts, the map's Jacobian at π* is (1−ητ)I + ηAD. Its eigenvalues are (1−ητ) ± iηω, where the
ω are real eigenvalues of the skew matrix D^½AD^½, and |ω| ≤ ½. So the last iterate converges locally and linearly when
η < 2τ/(τ² + ω²). The default η = τ/(τ² + ¼) guarantees |λ|² ≤ 1 − ητ, so the gap shrinks like (1 − ητ)^t.
The constant step 1/(τ+1) breaks this condition for small τ. On egpo-random at τ = 0.01 it is still at gap
0.82 after 3000 steps.

*Observed* (tests/test_inpo.py). With the default, the last iterate reaches gap ≤ 1e-12 within 600 steps at
τ = 0.1. At τ = 0.01 it reaches ≤ 1e-9 within 33 000 steps and machine precision within the default budget.
ητ = τ²/(τ² + ¼), so the iteration count grows like 1/τ². The default budget, 23/(ητ) steps, is capped at 200 000.
That cap is too small from τ ≈ 0.005 downwards: use egpo there.

**Sampled training** (§5.2). Pairs y, y' ~ π_t. With h_t = Δ_θ − ητ·Δ_μ − (1−ητ)·Δ_t, where Δ_m is the log-ratio
log m(y) − log m(y'), the loss is

    P·(h_t(y, y') − η/2)² + (1 − P)·(h_t(y', y) − η/2)².

P is the exact preference (soft labels), or a Bernoulli label in {0, 1}, which gives the hard-label loss
(h_t(y_w, y_l) − η/2)². Its minimiser over all policies, with exact expectations, is exactly the mirror step
above (tests/test_inpo.py). Every pair of the round's K samples is used.

On tabular policies (K = 8, Adam lr 0.02, one step per round, 1000 rounds at τ = 0.1), the last iterate reaches
gap ≤ 0.012 on weighted-rps and ≤ 0.016 on egpo-random over 5 seeds. With Bernoulli labels (lr 0.005, 2000
rounds) it reaches ≤ 0.0023 and ≤ 0.0077. With Adam, η only rescales the first-step gradient. The gradient's
stationary point does not depend on η: P(y ≻ π) − ½ = τ(log π/μ − E_π log π/μ), i.e. π*_τ.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.errors import BadInput
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.checks import check_number, require_samples, require_tau, round_tau
from nashpref.solvers.win_rates import preference_matrix

MAX_DEFAULT_ITERATIONS = 200_000
GAP_DECADES = 10        # default budget: the local rate (1 − ητ)^t shrinks the gap by 10^-10


def inpo_loss(log_ratio_policy: Tensor, log_ratio_reference: Tensor, log_ratio_previous: Tensor,
              label: Tensor, eta: float, tau: float) -> Tensor:
    """Per-pair INPO loss P·(h − η/2)² + (1−P)·(h + η/2)², h = Δ_θ − ητΔ_μ − (1−ητ)Δ_t for the ordered pair
    (y, y'), Δ = log-prob of y minus log-prob of y', P = P(y ≻ y') or a 0/1 label (h(y', y) = −h(y, y'))."""
    h = log_ratio_policy - eta * tau * log_ratio_reference - (1.0 - eta * tau) * log_ratio_previous
    return label * (h - eta / 2) ** 2 + (1.0 - label) * (h + eta / 2) ** 2


def default_eta(tau: float) -> float:
    """τ/(τ² + ¼): the step with the best guaranteed local contraction 1 − ητ (|ω| ≤ ½)."""
    return tau / (tau * tau + 0.25)


@dataclasses.dataclass
class Config(SolverConfig):
    eta: float | None = None
    """Mirror-descent step η (the third-party LM code's 1/eta). None: τ/(τ² + ¼), which converges locally for
    every τ > 0. η·τ must be at most 1. For language models the 3rd-party setting is η·τ = 1/3, η ≈ 133."""


@register
class INPO(Solver):
    name = "inpo"
    Config = Config
    iterate = "last"
    needs_tau = True
    # module docstring: gap ≤ 0.012 on weighted-rps and ≤ 0.016 on egpo-random (τ = 0.1), 5 seeds
    sampled_defaults = {"lr": 0.02, "optimizer": "adam", "samples": 8, "iterations": 1000}

    def step_size(self, tau: float) -> float:
        """η for a game of strength τ > 0 (the caller checks τ)."""
        if self.config.eta is None:
            return default_eta(tau)
        eta = check_number(self.config.eta, "eta", self.name)
        if eta * tau > 1:
            raise BadInput(f"{self.name}: needs eta·tau ≤ 1 (the step's weight on π_t is 1 − ητ), got "
                            f"eta={eta!r}, tau={tau!r}")
        return eta

    def default_iterations(self, game: PreferenceGame) -> int:
        tau = require_tau(game, self.name)
        rate = self.step_size(tau) * tau
        return min(math.ceil(GAP_DECADES * math.log(10) / rate), MAX_DEFAULT_ITERATIONS)

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        eta = self.step_size(require_tau(game, self.name))
        return game.mirror_step(log_pi, game.win_rates(log_pi.exp()), eta)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        k = round.samples
        require_samples(self.name, k)
        responses = round.sample(k)
        label = preference_matrix(round, responses, k)
        i, j = torch.triu_indices(k, k, offset=1)
        return {"contexts": round.contexts, "responses": responses, "label": label[:, i, j],
                "log_prob_previous": round.log_prob(responses, "previous"),
                "log_prob_reference": round.log_prob(responses, "reference"),
                "tau": round_tau(round, self.name)}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        log_prob = policy.log_prob(batch["contexts"], batch["responses"])
        tau = batch["tau"]
        eta = self.step_size(tau)
        k = log_prob.shape[-1]
        i, j = torch.triu_indices(k, k, offset=1)

        def pair_difference(x: Tensor) -> Tensor:
            x = x.to(log_prob)
            return x[:, i] - x[:, j]

        per_pair = inpo_loss(pair_difference(log_prob), pair_difference(batch["log_prob_reference"]),
                             pair_difference(batch["log_prob_previous"]), batch["label"].to(log_prob), eta, tau)
        return per_pair.mean(), {}
