"""MPO: Magnetic Preference Optimization (Wang, Ma, Chen, Meng, Han, Xiao, Zhang, Huo, Su, Yang; *Magnetic
Preference Optimization: Achieving Last-iterate Convergence for Language Model Alignment*, arXiv 2410.16714,
ICLR 2025), built on magnetic mirror descent (MMD; Sokota et al., arXiv 2206.05825).

**Exact dynamics.** MMD on the game regularised towards a magnet ν with strength α, started at ν = π_0 = μ:

    π_{t+1} = argmax_π η[⟨P(· ≻ π_t), π⟩ − α KL(π‖ν)] − KL(π‖π_t)
            ⇒  π_{t+1}(y) ∝ [π_t(y) ν(y)^(ηα) exp(η P(y ≻ π_t))]^(1/(1+ηα)),

and every ``period`` steps the magnet moves to the current policy, ν ← π_t. In log space the step is INPO's mirror
step with step η' = η/(1+ηα), strength α and ν in place of μ, so MPO is COMAL (``nashpref.solvers.comal``) with
an INPO inner loop of ``period`` steps, in MMD's parametrisation. Within a period the iterate converges linearly
to the α-regularised equilibrium around ν (INPO's analysis: |λ|² ≤ 1 − η'α for the default
η' = α/(α² + ¼)); each refresh is then an approximate proximal-point step on the τ = 0 game. The **last iterate**
converges to an equilibrium of the **unregularised** game. This is the paper's claim, checked here numerically,
also on games whose equilibrium has partial support (tests/test_mpo.py). The rate is linear but slow, because every
outer step costs ``period`` mirror steps. With the defaults (α = 0.1, period 50, 20 000 steps), the fitted rate of
Gap₀ per step is 0.9925 on weighted-rps (≤ 1e-6 from step 1721) and 0.9994 on a random N = 8 game with 5 of 8
actions in the support (≤ 1e-6 from step 19 562). On egpo-random the worst context (context 4: 7 actions in the
support, the smallest at weight 2.8e-3) is still at 0.027 after 20 000 steps and holds Gap₀ ≤ 1e-2 only from step
196 370. That is the rate, not a poor default: near π* the dynamics move along A scaled by √π*, so small
equilibrium weights make slow modes. A proximal step at strength α shrinks a mode of frequency λ by about
1 − λ²/(2α²) and the inner MMD loop needs about 1/(4α²) steps per proximal step (η' = α/(α² + ¼)), so the steps
per e-fold, ≈ 1/(2λ²), do not depend on α. Measured with 20 000 steps: α ∈ {0.02, 0.05, 0.1, 0.2} with periods
50–1000 end at a worst-context Gap₀ of 0.018–0.12, and on context 4 alone mirror steps η' up to 10× the default
(α = 0.1, 0.3) end at 0.025–0.037; none reaches 1e-2, so the defaults stay. COMAL with exact (Newton) inner solves does not pay the 1/(4α²) and reaches it in 29 outer steps.
Without refreshes (period → ∞) the last iterate stops at the α-regularised equilibrium (Gap₀ 0.083 on
weighted-rps). MPO ignores the game's τ; α is its own option.

**Sampled training** (the paper's practical form uses REINFORCE advantages and KL terms to π_t and to the
magnet). K responses y_k ~ π_t per prompt, every unordered pair queried once, advantage A = r̂ − ½ with r̂ the
win-rate against the other K − 1 samples, and the loss

    ℓ(y) = ρ·((log ρ − 1)/η + α·(log(π_θ(y)/ν(y)) − 1) − A),     ρ = π_θ(y)/π_t(y)

(``spo.kl_policy_gradient_loss``, which also subtracts the constants ρ/η + ρα; their expectation does not depend on
θ). Its population minimiser over all policies is exactly the MMD step above (tests/test_mpo.py). Its gradient at
θ = θ_t is REINFORCE's with the advantage A − α log(π_t/ν). On weighted-rps (period 200, K = 8, Adam lr 0.01) the last
iterate's Gap₀ is 0.003 after 3000 rounds, and between 0.001 and 0.08 on the way. ν is a snapshot of the policy,
refreshed every ``period`` rounds and checkpointed (``nashpref.solvers.anchor``). The tuned tabular settings
(``sampled_options``) are covered, optimistic rounds (``optimism``: ONPO's prediction of the win-rates, as COMAL's
``inner='onpo'``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.solvers.anchor import Anchor, AnchoredSolver, ExactAnchor, anchored_game, check_count
from nashpref.solvers.base import Batch, Policy, Round, SolverConfig, register
from nashpref.solvers.checks import check_number, require_samples
from nashpref.solvers.inpo import default_eta
from nashpref.solvers.spo import kl_policy_gradient_loss, leave_one_out_win_rates
from nashpref.solvers.win_rates import joined, optimistic, optimistic_samples, scored_samples

DEFAULT_ITERATIONS = 20_000


@dataclasses.dataclass
class Config(SolverConfig):
    positive = ("alpha", "eta")
    counts = ("opponents", "reference_samples")

    alpha: float = 0.1
    """Magnet strength α: the KL weight towards the magnet ν (the regularisation of each inner game)."""
    eta: float | None = None
    """MMD step η. None: the η whose mirror step η/(1+ηα) is α/(α² + ¼), the best guaranteed local contraction
    of the inner game (INPO's analysis). In sampled training 1/η weighs KL(π_θ‖π_t)."""
    period: int = 50
    """Steps (exact dynamics) or rounds (sampled training) between magnet refreshes ν ← π_t."""
    distinct: bool = False
    """Sampled training on action ids: each distinct pair of the K samples is queried once
    (``nashpref.solvers.win_rates``), so a large K costs at most N(N−1)/2 queries a round. Ignored for
    language-model responses (never repeated)."""
    opponents: int = 0
    """Sampled training: score each trained response against this many fresh draws from π_t (as SPO's option);
    with it (or ``reference_samples``) the advantage A − α log(π_t/ν) is centred per prompt, and with ``distinct``
    each distinct action counts once and contexts are summed, so one SGD step of lr η/(1 + ηα) from π_t is
    exactly the MMD step on the covered actions."""
    reference_samples: int = 0
    """Sampled training: also train on this many responses per context drawn from μ (coverage)."""
    optimism: bool = False
    """Optimistic MMD: each step's win-rates are ONPO's prediction (1 + c) g_t − c g_{t−1}, c = 1 − η'α with
    η' = η/(1 + ηα) the mirror step (``nashpref.solvers.onpo``). Sampled covered rounds take g_{t−1} against the
    previous round's opponents (``win_rates.optimistic_samples``)."""


@register
class MPO(AnchoredSolver):
    name = "mpo"
    Config = Config
    # Covered, centred, distinct rounds: one SGD step of lr η/(1+ηα) is the MMD step; μ-samples and opponents, each
    # distinct pair asked once, cost ≤ N(N−1)/2 queries a round. Optimistic MMD with α = 0.02, η = 1 (lr 1/1.02):
    # plain MMD needs ≈ 1/(2λ²) steps per e-fold of a slow mode whatever α, and missed Gap₀ 0.03 on a random
    # N = 10 game (0.031 after 2000 rounds at α = 0.1); these are COMAL's default steps in MMD's parametrisation
    # (bench/sampled-efficiency/more-games.md), with 8192 opponents against the larger step's noise
    sampled_defaults: ClassVar[dict] = {"lr": 1.0 / 1.02, "optimizer": "sgd", "samples": 4, "iterations": 2000}
    sampled_options: ClassVar[dict] = {"alpha": 0.02, "eta": 1.0, "optimism": True, "period": 100,
                                       "reference_samples": 1024, "opponents": 8192, "distinct": True}

    def __init__(self, config: Config | None = None):
        super().__init__(config)
        self.options()                      # α, η and period are checked when the solver is built
        self.exact_anchor, self.anchor = ExactAnchor(), Anchor()
        self.previous_scores: Tensor | None = None      # optimism, exact dynamics: g_{t−1}
        self.memory: tuple | None = None                # optimism, sampled: (contexts, opponents, their count)

    def options(self) -> tuple[float, float, int]:
        """(α, η, period), checked."""
        alpha = check_number(self.config.alpha, "alpha", self.name)
        if self.config.eta is None:
            mirror = default_eta(alpha)
            eta = mirror / (1.0 - mirror * alpha)
        else:
            eta = check_number(self.config.eta, "eta", self.name)
        return alpha, eta, check_count(self.config.period, "period", self.name)

    def default_iterations(self, game: PreferenceGame) -> int:
        self.options()
        return DEFAULT_ITERATIONS

    def init(self, game: PreferenceGame) -> Tensor:
        self.exact_anchor.reset()
        self.anchor.reset()
        self.previous_scores = self.memory = None
        return game.log_mu.clone()

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        alpha, eta, period = self.options()
        magnet = anchored_game(game, self.exact_anchor.at(log_pi, t, period), alpha)
        mirror, scores = eta / (1.0 + eta * alpha), game.win_rates(log_pi.exp())
        if self.config.optimism:            # g_{−1} := g_0
            previous, self.previous_scores = None if t == 0 else self.previous_scores, scores
            scores = optimistic(scores, previous, mirror, alpha)
        return magnet.mirror_step(log_pi, scores, mirror)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        k = round.samples
        require_samples(self.name, k)
        self.anchor.update(round, self.options()[2])
        c = self.config
        if c.optimism and (c.opponents or c.reference_samples):
            alpha, eta, _ = self.options()
            batch, self.memory = optimistic_samples(round, self.name, "win_rate", c.opponents, c.reference_samples,
                                                    c.distinct, self.memory, eta / (1.0 + eta * alpha), alpha)
        elif c.opponents or c.reference_samples:
            batch = scored_samples(round, self.name, "win_rate", c.opponents, c.reference_samples, c.distinct)
        if c.opponents or c.reference_samples:
            batch["log_prob_magnet"] = self.anchor.log_prob(round.contexts, batch["responses"])
            if "reference_responses" in batch:
                batch["reference_log_prob_magnet"] = self.anchor.log_prob(round.contexts,
                                                                          batch["reference_responses"])
            return batch
        responses = round.sample(k)
        return {"contexts": round.contexts, "responses": responses,
                "advantage": leave_one_out_win_rates(round, responses, k, self.config.distinct) - 0.5,
                "log_prob_previous": round.log_prob(responses, "previous"),
                "log_prob_magnet": self.anchor.log_prob(round.contexts, responses)}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        alpha, eta, _ = self.options()
        if "win_rate" in batch:
            log_prob, previous, win_rate, weight, magnet = joined(batch, policy, "win_rate", self.config.distinct,
                                                                  "log_prob_magnet")
            summed = weight is not None     # distinct: each action once, contexts summed (one exact SGD step)
            weight = torch.full_like(log_prob, 1.0 / log_prob.shape[-1]) if weight is None else weight
            shift = win_rate - alpha * (previous - magnet)
            advantage = win_rate - (weight * shift).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True)
            per_context = (weight * kl_policy_gradient_loss(log_prob, previous, advantage, eta, magnet, alpha)).sum(-1)
            return (per_context.sum() if summed else per_context.mean()), {}
        log_prob = policy.log_prob(batch["contexts"], batch["responses"])
        per_sample = kl_policy_gradient_loss(log_prob, batch["log_prob_previous"].to(log_prob),
                                             batch["advantage"].to(log_prob), eta,
                                             batch["log_prob_magnet"].to(log_prob), alpha)
        return per_sample.mean(), {"log_ratio_magnet": (log_prob.detach() - batch["log_prob_magnet"]).mean().item()}

    def loss_count(self, batch: Batch) -> float | None:
        if "win_rate" in batch and self.config.distinct and isinstance(batch["responses"], Tensor):
            return None
        return float(batch["contexts"].shape[0])

    # ---- checkpointed state (the magnet of sampled training) --------------------------------------------------
    def state_dict(self) -> dict:
        return self.anchor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.anchor.load_state_dict(state)
