"""ONPO: optimistic online mirror descent for the preference game (Zhang, Yu, Ge, Song, Zeng, Mi, Jiang, Yu;
*Improving LLM General Preference Alignment via Optimistic Online Mirror Descent*, arXiv 2502.16852).

**Exact dynamics.** Optimistic mirror descent in self-play, the previous win-rates g_{t−1} = P(· ≻ π_{t−1})
predicting the next ones. In two-sequence form (π̂ the secondary iterate, started at π̂_0 = π_0 = μ):

    π̂_{t+1} ∝ π̂_t^(1−ητ) μ^(ητ) exp(η g_t),      π_{t+1} ∝ π̂_{t+1}^(1−ητ) μ^(ητ) exp(η g_t),

which eliminates π̂ to the single-sequence step, with c = 1 − ητ,

    π_{t+1} ∝ π_t^c μ^(ητ) exp(η[(1 + c) g_t − c g_{t−1}])        (τ = 0: π_t exp(η(2g_t − g_{t−1}))).

The first step has no prediction (g_{−1} := g_0): π_1 is INPO's mirror step. τ = 0 is allowed.

**Rate (τ = 0), proven.** This is optimistic FTRL with prior μ' ∝ μ exp(−ηg_0); the RVU bound of optimistic
Hedge (Syrgkanis, Agarwal, Luo, Schapire 2015), with ‖g_t − g_{t−1}‖∞ ≤ ½‖π_t − π_{t−1}‖₁ in self-play, gives
regret ≤ (L + η)/η for η ≤ 1, L = log(1/min μ). In self-play the **average iterate**'s unregularised gap is
2·regret/T, so Gap₀(π̄_T) ≤ 2(L + η)/(ηT) = O(1/T). tests/test_onpo.py checks it at every T; measured: at most
0.9 of 2L/(ηT), log-log slope −1.00 on random N = 10 games (SPPO's Hedge: O(1/√T)). The default η = 1/(1+τ) is
1 at τ = 0. The default budget makes the bound ``target_gap``. The last iterate also converges on these games
(slowly at τ = 0, where the equilibrium sits on a face of the simplex). At τ > 0 the last iterate converges
linearly: KL(π*‖π_t) shrinks by ≈ (1 − ητ)² per iteration (0.81 at τ = 0.1), with one round of win-rates per
iteration against the two of EGPO / Nash-MP.

**Sampled training.** K responses y_1…y_K ~ π_t; every pair's preference P(y_i ≻ y_j) (or a Bernoulli label),
and each y_i against one response z_i of the *previous* round (kept by the solver: the optimistic memory),
Q_i = P(y_i ≻ z_i). The per-pair loss, with h = Δ_θ − ητΔ_μ − cΔ_t (Δ_m = log m(y_i) − log m(y_j)), is

    (h − η[(1 + c)(P(y_i ≻ y_j) − ½) − c(Q_i − Q_j)])².

A least-squares fit of f(y) − f(y') to a target T(y, y') over pairs drawn from π_t ⊗ π_t is solved by
f(y) = E_{y'~π_t} T(y, y') + const, so the population minimiser is exactly the step above: P(y ≻ π_t) is never
estimated on its own (the paper's point), and E Q_i = g_{t−1}(y_i). Without memory (first round, or a round
whose contexts differ from the previous round's) the target is η(P − ½), the step with g_{t−1} := g_t.
The memory is not checkpointed: a resumed run's first round takes that plain step.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from nashpref.core.game import GameError, PreferenceGame
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.checks import check_number, require_samples
from nashpref.solvers.hedge import hedge_log_range
from nashpref.solvers.win_rates import optimistic, preference_matrix

MAX_DEFAULT_ITERATIONS = 200_000


def onpo_loss(log_ratio_policy: Tensor, log_ratio_reference: Tensor, log_ratio_previous: Tensor,
              preference: Tensor, memory_difference: Tensor | None, eta: float, tau: float) -> Tensor:
    """Per-pair (h − η[(1+c)(P − ½) − c·ΔQ])², h = Δ_θ − ητΔ_μ − cΔ_t, c = 1 − ητ; ΔQ = Q_i − Q_j are the two
    responses' preferences over the previous round's responses. ``memory_difference`` None: target η(P − ½)."""
    c = 1.0 - eta * tau
    h = log_ratio_policy - eta * tau * log_ratio_reference - c * log_ratio_previous
    if memory_difference is None:
        return (h - eta * (preference - 0.5)) ** 2
    return (h - eta * ((1.0 + c) * (preference - 0.5) - c * memory_difference)) ** 2


@dataclasses.dataclass
class Config(SolverConfig):
    eta: float | None = None
    """Step η; None: 1/(1+τ) (1 at τ = 0, where the O(1/T) bound needs η ≤ 1). η·τ must be below 1."""
    target_gap: float = 1e-3
    """The default budget is the smallest T whose bound 2(L + η)/(ηT) on the average iterate's τ = 0 gap is at
    most this (L = log(1/min μ))."""


@register
class ONPO(Solver):
    name = "onpo"
    Config = Config
    iterate = "average"
    needs_tau = False       # any τ ≥ 0: the game's own
    # tests/test_onpo.py: see the sampled tests there for what these reach
    sampled_defaults = {"lr": 0.05, "optimizer": "adam", "samples": 8, "iterations": 600}

    def __init__(self, config: Config | None = None):
        super().__init__(config)
        self._previous_scores: Tensor | None = None     # g_{t−1} of the exact dynamics
        self._memory: Batch | None = None                # the previous round's contexts and responses

    def step_size(self, tau: float) -> float:
        if self.config.eta is None:
            return 1.0 / (1.0 + tau)
        eta = check_number(self.config.eta, "eta", self.name)
        if eta * tau >= 1:
            raise GameError(f"{self.name}: needs eta·tau < 1 (the step's weight on π_t is 1 − ητ), got "
                            f"eta={eta!r}, tau={tau!r}")
        return eta

    def default_iterations(self, game: PreferenceGame) -> int:
        eta = self.step_size(game.tau)
        target = check_number(self.config.target_gap, "target_gap", self.name, high=1.0)
        bound = 2.0 * (hedge_log_range(game) + eta) / eta
        return min(math.ceil(bound / target), MAX_DEFAULT_ITERATIONS)

    def init(self, game: PreferenceGame) -> Tensor:
        self._previous_scores = None
        return game.log_mu.clone()

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        eta = self.step_size(game.tau)
        scores = game.win_rates(log_pi.exp())
        previous, self._previous_scores = None if t == 0 else self._previous_scores, scores
        return game.mirror_step(log_pi, optimistic(scores, previous, eta, game.tau), eta)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        k = round.samples
        require_samples(self.name, k)
        tau = 0.0 if round.tau is None else float(round.tau)
        self.step_size(tau)
        responses = round.sample(k)
        preference = preference_matrix(round, responses, k)
        i, j = torch.triu_indices(k, k, offset=1)
        batch = {"contexts": round.contexts, "responses": responses, "preference": preference[:, i, j],
                 "log_prob_previous": round.log_prob(responses, "previous"),
                 "log_prob_reference": round.log_prob(responses, "reference"), "tau": tau}
        memory = self._memory
        if memory is not None and torch.equal(memory["contexts"], round.contexts) and memory["samples"] == k:
            batch["memory"] = round.prefer(responses, memory["responses"]).to(torch.float64)
        self._memory = {"contexts": round.contexts.clone(), "responses": responses, "samples": k}
        return batch

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        log_prob = policy.log_prob(batch["contexts"], batch["responses"])
        tau = batch["tau"]
        k = log_prob.shape[-1]
        i, j = torch.triu_indices(k, k, offset=1)

        def pair_difference(x: Tensor) -> Tensor:
            x = x.to(log_prob)
            return x[:, i] - x[:, j]

        memory = pair_difference(batch["memory"]) if "memory" in batch else None
        per_pair = onpo_loss(pair_difference(log_prob), pair_difference(batch["log_prob_reference"]),
                             pair_difference(batch["log_prob_previous"]), batch["preference"].to(log_prob),
                             memory, self.step_size(tau), tau)
        return per_pair.mean(), {"optimistic": float(memory is not None)}
