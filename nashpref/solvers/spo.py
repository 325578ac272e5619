"""SPO: Self-Play Preference Optimization (Swamy, Dann, Kidambi, Wu, Agarwal; *A Minimaximalist Approach to
Reinforcement Learning from Human Feedback*, arXiv 2401.04056, ICML 2024).

SPO has no reward model and no KL to μ: each sampled response is scored by its win-rate against the policy's
other samples, and any no-regret policy-optimisation method (the paper: PPO, SAC) maximises that score. The
paper's guarantee is the reduction to no-regret learning: the **average iterate** converges to the minimax
winner, the equilibrium of the **unregularised** (τ = 0) game, at O(1/√T). SPO ignores the game's τ.

**Exact dynamics.** The KL-proximal policy improvement on the exact win-rate, the step that PPO's KL-constrained
update approximates, is multiplicative weights (Hedge):

    π_{t+1} = argmax_π E_π[P(y ≻ π_t)] − (1/η) KL(π‖π_t)   ⇒   π_{t+1}(y) ∝ π_t(y) exp(η P(y ≻ π_t)),

the exact update SPPO also has (``nashpref.solvers.hedge``): Gap₀(π̄_T) = 2·regret/T ≤ √(2L/T), L = log(1/min μ), for
η = √(8L/T), and the default horizon makes this bound ``target_gap``. The **last iterate does not converge**: with
an interior equilibrium, KL(π*‖π_t) never decreases (Jensen) and the iterate cycles outwards
(tests/test_spo.py: on weighted-rps KL(π*‖π_t) grows from 0.16 to 0.43 in 10 000 steps and Gap₀(π_t) stays
≥ 0.04, while Gap₀(π̄_T) = 0.0016).

**Sampled training.** K responses y_k ~ π_t per prompt, every unordered pair queried once. The reward is the
win-rate against the *other* K − 1 samples, an unbiased estimate of P(y ≻ π_t); since E_{π_t} P(y ≻ π_t) = ½
exactly, the advantage is A = r̂ − ½. The loss is the KL-proximal policy-gradient objective, estimated with the
importance ratio ρ = π_θ(y)/π_t(y):

    ℓ(y) = ρ·((log ρ − 1)/η − A),

whose population minimiser over all policies (exact A, expectation over π_t) is exactly the Hedge step above, and
whose gradient at θ = θ_t is REINFORCE's −A·∇log π_θ(y) (tests/test_spo.py checks both). The −1 changes the
objective by the constant −E_{π_t}ρ/η = −1/η; without it the gradient at θ_t carries the baseline 1/η, whose
zero-mean noise (counts − Kπ_t)/η drowned the signal under Adam (weighted-rps: Gap₀(π̄) 0.12 after 6000 rounds). MPO (``nashpref.solvers.mpo``) adds a magnet term to the same loss.

On weighted-rps (tabular, K = 8, Adam lr 1e-3, one step per round, 6000 rounds) the average iterate reaches
Gap₀ ≤ 0.02 (tests/test_spo.py). Like SPPO's on-policy loss, this one moves only sampled actions, so on games
whose equilibrium needs actions that π_t has nearly dropped it stalls far from the equilibrium.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.solvers.base import Batch, Policy, Round, SolverConfig, register
from nashpref.solvers.checks import require_samples
from nashpref.solvers.hedge import HedgeSolver
from nashpref.solvers.win_rates import joined, preference_matrix, scored_samples, win_rates_against



def kl_policy_gradient_loss(log_prob: Tensor, log_prob_previous: Tensor, advantage: Tensor, eta: float,
                            log_prob_magnet: Tensor | None = None, alpha: float = 0.0) -> Tensor:
    """Per-sample ρ·((log ρ − 1)/η + α·(log(π_θ(y)/ν(y)) − 1) − A), ρ = π_θ(y)/π_t(y), for y ~ π_t.

    Its expectation over π_t is −E_{π_θ}A + KL(π_θ‖π_t)/η + α·KL(π_θ‖ν) − 1/η − α (E_{π_t}ρ = 1), minimised by
    π ∝ [π_t ν^(ηα) e^(ηA)]^(1/(1+ηα)); α = 0 (SPO) drops the magnet ν (MPO's term) and gives the Hedge step
    π_t e^(ηA)/Z. The −1 terms leave that minimiser alone and remove the constant baseline 1/η + α from the
    gradient at θ = θ_t, which is then REINFORCE's −(A − α log(π_t/ν))·∇log π_θ(y)."""
    log_ratio = log_prob - log_prob_previous
    penalty = (log_ratio - 1.0) / eta
    if alpha:
        penalty = penalty + alpha * (log_prob - log_prob_magnet - 1.0)
    return log_ratio.exp() * (penalty - advantage)


def leave_one_out_win_rates(round: Round, responses, k: int, distinct: bool = False) -> Tensor:
    """(B, K) win-rate of each sample against the other K − 1 (K(K−1)/2 queries; with ``distinct`` on action ids
    one per distinct pair of different actions): unbiased for P(y ≻ π_t)."""
    if distinct and isinstance(responses, Tensor):
        return (win_rates_against(round, responses, k, responses, k, distinct=True) * k - 0.5) / (k - 1)
    return (preference_matrix(round, responses, k).sum(-1) - 0.5) / (k - 1)


@dataclasses.dataclass
class Config(SolverConfig):
    positive = ("eta",)
    counts = ("opponents", "reference_samples")

    eta: float | None = None
    """Step η of π_{t+1} ∝ π_t exp(η P(y ≻ π_t)) (1/η weighs KL(π_θ‖π_t) in the loss). None: exact dynamics use
    the Hedge step √(8 log(1/min μ)/T) for the default horizon T; sampled training uses 1.0."""
    target_gap: float = 0.05
    """The default horizon is the smallest T whose Hedge bound √(2 log(1/min μ)/T) on the average iterate's
    unregularised gap is at most this."""
    distinct: bool = False
    """Sampled training on action ids: each distinct pair of the K samples is queried once
    (``nashpref.solvers.win_rates``), so a large K costs at most N(N−1)/2 queries a round. Ignored for
    language-model responses (never repeated)."""
    opponents: int = 0
    """Sampled training: score each trained response against this many fresh draws from π_t (as SPPO's option)
    instead of against the other K samples; with it (or ``reference_samples``) the advantages are centred per
    prompt, and with ``distinct`` each distinct action counts once and contexts are summed, so one SGD step of
    lr η from π_t is exactly the Hedge step π_t exp(ηA)/Z on the covered actions (the gradient at θ_t is −A)."""
    reference_samples: int = 0
    """Sampled training: also train on this many responses per context drawn from μ, scored like the others
    (coverage: actions π_t has nearly dropped keep getting a step). 0 trains on π_t's samples only."""


@register
class SPO(HedgeSolver):
    name = "spo"
    Config = Config
    min_samples = 2
    # One SGD step of lr η on a covered, centred, distinct round is the Hedge step; 1024 μ-samples and opponents,
    # each distinct pair asked once, make it nearly exact for ≤ N(N−1)/2 queries a round (bench/sampled-efficiency)
    sampled_defaults = {"lr": 1.0, "optimizer": "sgd", "samples": 4, "iterations": 1000}
    sampled_options = {"eta": 1.0, "reference_samples": 1024, "opponents": 1024, "distinct": True}

    def step_size(self, game: PreferenceGame) -> float:
        return self.hedge_step(game) if self.config.eta is None else self.config.eta

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        return torch.log_softmax(log_pi + self.step_size(game) * game.win_rates(log_pi.exp()), dim=-1)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        k = round.samples
        require_samples(self.name, k)
        c = self.config
        if c.opponents or c.reference_samples:
            return scored_samples(round, self.name, "win_rate", c.opponents, c.reference_samples, c.distinct)
        responses = round.sample(k)
        return {"contexts": round.contexts, "responses": responses,
                "advantage": leave_one_out_win_rates(round, responses, k, self.config.distinct) - 0.5,
                "log_prob_previous": round.log_prob(responses, "previous")}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        if "win_rate" in batch:
            return self.covered_loss(batch, policy)
        log_prob = policy.log_prob(batch["contexts"], batch["responses"])
        per_sample = kl_policy_gradient_loss(log_prob, batch["log_prob_previous"].to(log_prob),
                                             batch["advantage"].to(log_prob), self.sampled_eta())
        return per_sample.mean(), {"advantage": batch["advantage"].abs().mean().item()}

    def covered_loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        """The loss of an ``opponents`` / ``reference_samples`` round, advantages centred per prompt."""
        log_prob, previous, win_rate, weight = joined(batch, policy, "win_rate", self.config.distinct)
        summed = weight is not None         # distinct: each action once, contexts summed (one exact SGD step)
        weight = torch.full_like(log_prob, 1.0 / log_prob.shape[-1]) if weight is None else weight.to(log_prob)
        advantage = win_rate - (weight * win_rate).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True)
        per_context = (weight * kl_policy_gradient_loss(log_prob, previous, advantage, self.sampled_eta())).sum(-1)
        loss = per_context.sum() if summed else per_context.mean()
        return loss, {"advantage": advantage.abs().mean().item()}

    def loss_count(self, batch: Batch) -> float | None:
        if "win_rate" in batch and self.config.distinct and isinstance(batch["responses"], Tensor):
            return None
        return float(batch["contexts"].shape[0])
