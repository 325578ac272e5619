"""COMAL: the Convergent Meta-Algorithm for ALignment (Liu, Oikonomou, Zheng, Cai, Cohan; *COMAL: A Convergent
Meta-Algorithm for Aligning LLMs with General Preferences*, arXiv 2410.23223).

**Exact dynamics: the conceptual proximal-point method on the unregularised game.** Outer iteration k solves the
regularised game whose reference is the current policy, with the solver's own strength τ (``tau``, not the
game's):

    π_{k+1} = the equilibrium of  max_π min_π'  P(π ≻ π') − τ KL(π‖π_k) + τ KL(π'‖π_k),
    i.e.      π_{k+1}(y) ∝ π_k(y) exp(P(y ≻ π_{k+1})/τ).

``inner`` says how: 'exact' solves it to gap ≤ 1e-12 (``nashpref.equilibrium``: extragradient + Newton), one
iteration per outer step; 'inpo' / 'egpo' run ``inner_steps`` steps of that solver's exact dynamics on the
regularised game (reference π_k), and π_k moves to the last inner iterate every ``inner_steps`` iterations.

The **last iterate** converges to an equilibrium of the **unregularised** (τ = 0) game, also when it has partial
support (the τ > 0 iterates never hold exact zeros; off-support log-probabilities fall linearly, below −1000,
which the log-space anchor keeps finite). Checked numerically (tests/test_comal.py), not taken from the paper:
* KL(π*‖π_k) to the τ = 0 equilibrium never increases (the paper's monotone-KL claim; on egpo-random its largest
  one-step increase is 4e-16 at the default τ and 3e-16 at τ = 0.1, i.e. rounding), while the gap itself is not monotone.
* The rate is linear, and its constant depends on the game. With the default τ = 0.005 and exact inner solves,
  KL(π*‖π_k) shrinks by ≈ 1.5e-3 per outer step on weighted-rps and ≈ 0.017 on a random N = 8 game with 5 of
  8 actions in the support. The worst-context Gap₀ reaches 1e-6 after 4 and 6 outer steps, and after 167 on
  egpo-random. One egpo-random context there has equilibrium weights 0.0027 and 4.5e-5, and the ratio per outer
  step is ≈ 0.97. A smaller τ needs fewer outer steps (egpo-random: 331 at τ = 0.01, none within 400 at
  τ = 0.05), but each one is a harder game. The inner Newton solve starts at π_k and falls back to the full
  continuation path.
* The iterative inner loops need more τ: 40 outer steps at τ = 0.1 on weighted-rps (INPO: 180 steps each, EGPO:
  76) give Gap₀ ≈ 1e-9.

**Sampled training** (the paper's recipe: an existing preference-optimisation loss with its reference replaced by
the previous outer iterate). Each round is an INPO round (``nashpref.solvers.inpo``: K samples from π_t, every pair,
the loss P·(h − η/2)² + (1 − P)·(h + η/2)²) with h = Δ_θ − ητ·Δ_ν − (1 − ητ)·Δ_t, where ν = π_k is a snapshot of
the policy refreshed every ``period`` rounds (``nashpref.solvers.anchor``) and η = τ/(τ² + ¼). Its population
minimiser is the INPO step on the game with reference π_k (tests/test_comal.py). With ``opponents`` /
``reference_samples`` (covered rounds, the tuned tabular settings) the pair label is ½ + r̂(y) − r̂(y'), r̂ the
win-rate against fresh draws from π_t, and the loss becomes a centred regression (``covered_loss``) of which one SGD
step of lr ½ is the inner INPO step. With ``inner='onpo'`` (the tuned settings: τ = 0.02, period 100, 8192
opponents) each round is ONPO's optimistic step instead: the target is (1 + c) r̂_t − c r̂_{t−1}, c = 1 − ητ,
η = 1/(1 + τ), r̂_{t−1} against the previous round's opponents (``win_rates.optimistic_samples``; not
checkpointed, like ONPO's memory). On weighted-rps the default sampled run's last-iterate Gap₀ is 0.0045 after
2000 rounds (6k queries); on the benchmark's N = 10 games it holds Gap₀ ≤ 0.03 from ≤ 51k queries
(bench/sampled-efficiency/more-games.md), where the INPO rounds (τ = 0.1, period 50) missed by 0.084.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

import torch
from torch import Tensor

from nashpref.core.equilibrium import _newton, extragradient_step, solve_equilibrium
from nashpref.core.game import PreferenceGame
from nashpref.solvers.anchor import Anchor, AnchoredSolver, ExactAnchor, anchored_game, check_count
from nashpref.solvers.base import Batch, Policy, Round, SolverConfig, register
from nashpref.solvers.checks import check_number
from nashpref.solvers.inpo import default_eta, pair_batch, pair_loss
from nashpref.solvers.win_rates import joined, optimistic, optimistic_samples, scored_samples

DEFAULT_OUTER = 200         # exact inner solves, τ = 0.005: egpo-random reaches Gap₀ 5.5e-7
INNER_TOL, INNER_RESIDUAL_TOL = 1e-12, 1e-14     # the exact inner solve: solve_equilibrium's defaults
WARM_NEWTON_STEPS = 30
INNER_DECADES = 3           # default inner_steps: the inner solver's rate (1 − ητ)^s shrinks its error by 1e-3


def proximal_step(game: PreferenceGame, log_pi: Tensor, tau: float) -> Tensor:
    """log π_{k+1}: the exact equilibrium of the game regularised towards π_k = exp(``log_pi``) with strength τ.

    Newton on the fixed point starts at π_{k+1} = π_k (s = 0), which is close once the outer iterates settle; if
    it does not reach gap ≤ 1e-12, the equilibrium solver's full path (extragradient + Newton continuation) does.
    """
    regularised = anchored_game(game, log_pi, tau)
    s, _ = _newton(regularised, torch.zeros_like(log_pi), INNER_TOL, INNER_RESIDUAL_TOL, WARM_NEWTON_STEPS)
    policy = torch.softmax(log_pi + s, dim=-1)
    if not (regularised.gap(policy) <= INNER_TOL).all():
        policy = solve_equilibrium(regularised, INNER_TOL, residual_tol=INNER_RESIDUAL_TOL).policy
    # π_{k+1} ∝ π_k exp(Pπ_{k+1}/τ), formed in log space: off-support actions stay finite
    return torch.log_softmax(log_pi + game.win_rates(policy) / tau, dim=-1)


@dataclasses.dataclass
class Config(SolverConfig):
    positive = ("tau",)
    counts = ("opponents", "reference_samples")
    choices = {"inner": ("exact", "inpo", "egpo", "onpo")}

    tau: float = 0.005
    """Strength τ of the KL to the previous outer iterate π_k (the proximal weight). Smaller: fewer outer
    iterations, each a harder regularised game."""
    inner: Literal["exact", "inpo", "egpo", "onpo"] = "exact"
    """Exact dynamics: how each regularised game is solved. 'exact': to gap ≤ 1e-12, one iteration per outer step.
    'inpo' / 'egpo' / 'onpo': ``inner_steps`` steps of that solver's exact dynamics (with its default step for τ;
    'onpo': optimistic mirror descent, η = 1/(1 + τ), the prediction carried across refreshes). Sampled training:
    'onpo' makes each round an optimistic step (``optimistic_batch``), any other value an INPO step."""
    inner_steps: int | None = None
    """Iterations per outer step for inner 'inpo' / 'egpo'. None: enough for the inner solver's linear rate
    (1 − ητ)^s to reach 1e-3."""
    period: int = 100
    """Sampled training: rounds per outer step (the reference π_k is refreshed every ``period`` rounds)."""
    distinct: bool = False
    """Sampled training on action ids: each distinct pair of the K samples is queried once
    (``nashpref.solvers.win_rates``), so a large K costs at most N(N−1)/2 queries a round. Ignored for
    language-model responses (never repeated)."""
    opponents: int = 0
    """Sampled training: score each trained response by its win-rate r̂ against this many fresh draws from π_t
    and use the pair label ½ + r̂(y) − r̂(y') (the mean of ½ + P(y ≻ y'') − P(y' ≻ y'') over y'' ~ π_t) in place of
    P(y ≻ y') for the K samples among themselves (see ``covered_loss``)."""
    reference_samples: int = 0
    """Sampled training: also train on this many responses per context drawn from μ (coverage), scored the same
    way."""


def covered_loss(log_prob: Tensor, previous: Tensor, anchor: Tensor, win_rate: Tensor, weight: Tensor | None,
                 eta: float, tau: float) -> Tensor:
    """(B,) Σ_y w_y (u_y − ū)², u = log π_θ − ητ log ν − (1 − ητ) log π_t − η r̂, ū the w-weighted mean per
    context (w = 1/M when ``weight`` is None).

    It is ½ Σ_{y,y'} w_y w_y' (h(y, y') − η(r̂(y) − r̂(y')))² / Σw: INPO's pair loss (h as there, with the anchor ν
    for μ) with the label ½ + r̂(y) − r̂(y'). Its minimiser over the covered actions is the inner INPO step
    π ∝ π_t^(1−ητ) ν^(ητ) exp(η r̂), and with each distinct action weighted 1 its gradient in the logits is
    2(u − ū) (the log-softmax normaliser cancels in u − ū), so one SGD step of lr ½ from θ_t lands on that step.
    """
    weight = torch.full_like(log_prob, 1.0 / log_prob.shape[-1]) if weight is None else weight
    u = log_prob - eta * tau * anchor - (1.0 - eta * tau) * previous - eta * win_rate
    centre = (weight * u).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True)
    return (weight * (u - centre) ** 2).sum(-1)


@register
class COMAL(AnchoredSolver):
    name = "comal"
    Config = Config
    # Covered optimistic rounds (1024 μ-samples, 8192 opponents, each distinct pair asked once: ≤ N(N−1)/2
    # queries a round): one SGD step of lr ½ is the inner ONPO step, so a run is COMAL with an optimistic inner
    # loop of ``period`` steps. INPO inner steps need ≈ 1/(2λ²) steps per e-fold of a slow mode λ whatever τ;
    # optimistic steps of η ≈ 1 make a weak τ pay (catalyst-like): exact dynamics hold Gap₀ ≤ 0.03 within 1148
    # steps on every N ∈ {7, 10}, game 1–3 benchmark game (INPO at τ = 0.1: 3268 on N = 10 game 3). Their larger
    # step passes on more of r̂'s noise: with 1024 opponents simulated runs crossed 0.03 until step ~2000–2200,
    # with 8192 (no more queries: distinct pairs) they held it from step ≤ 1200 (bench/.../more-games.md).
    sampled_defaults: ClassVar[dict] = {"lr": 0.5, "optimizer": "sgd", "samples": 4, "iterations": 2000}
    sampled_options: ClassVar[dict] = {"tau": 0.02, "period": 100, "inner": "onpo", "opponents": 8192,
                                       "reference_samples": 1024, "distinct": True}

    def __init__(self, config: Config | None = None):
        super().__init__(config)
        self.inner_steps(self.prox_tau())   # τ, inner_steps and period are checked when the solver is built
        check_count(self.config.period, "period", self.name)
        self.exact_anchor, self.anchor = ExactAnchor(), Anchor()
        self.previous_scores: Tensor | None = None      # exact inner 'onpo': g_{t−1}
        self.memory: tuple | None = None                # optimistic rounds: (contexts, opponents, their count)

    def prox_tau(self) -> float:
        return check_number(self.config.tau, "tau", self.name)

    def inner_rate(self, tau: float) -> tuple[float, float]:
        """(step η, contraction ητ per step) of the iterative inner solver."""
        eta = default_eta(tau) if self.config.inner == "inpo" else 1.0 / (tau + 1.0)
        return eta, eta * tau

    def inner_steps(self, tau: float) -> int:
        if self.config.inner == "exact":
            return 1
        if self.config.inner_steps is not None:
            return check_count(self.config.inner_steps, "inner_steps", self.name)
        return math.ceil(INNER_DECADES * math.log(10) / self.inner_rate(tau)[1])

    def default_iterations(self, game: PreferenceGame) -> int:
        return DEFAULT_OUTER * self.inner_steps(self.prox_tau())

    def init(self, game: PreferenceGame) -> Tensor:
        self.exact_anchor.reset()
        self.anchor.reset()
        self.previous_scores = self.memory = None
        return game.log_mu.clone()

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        tau = self.prox_tau()
        steps = self.inner_steps(tau)
        if self.config.inner == "exact":
            return proximal_step(game, log_pi, tau)
        regularised = anchored_game(game, self.exact_anchor.at(log_pi, t, steps), tau)
        eta = self.inner_rate(tau)[0]
        if self.config.inner == "inpo":
            return regularised.mirror_step(log_pi, game.win_rates(log_pi.exp()), eta)
        if self.config.inner == "onpo":     # ONPO's step: (1 + c) g_t − c g_{t−1}, c = 1 − ητ; g_{−1} := g_0
            scores = game.win_rates(log_pi.exp())
            previous, self.previous_scores = None if t == 0 else self.previous_scores, scores
            return regularised.mirror_step(log_pi, optimistic(scores, previous, eta, tau), eta)
        return extragradient_step(regularised, log_pi, eta)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        period = check_count(self.config.period, "period", self.name)
        self.anchor.update(round, period)
        c = self.config
        if c.inner == "onpo" and (c.opponents or c.reference_samples):
            return self.optimistic_batch(round)
        if c.opponents or c.reference_samples:
            batch = scored_samples(round, self.name, "win_rate", c.opponents, c.reference_samples, c.distinct)
            for prefix in ("", "reference_") if "reference_responses" in batch else ("",):
                batch[f"{prefix}log_prob_anchor"] = self.anchor.log_prob(round.contexts,
                                                                         batch[f"{prefix}responses"])
            return batch
        responses, batch = pair_batch(round, self.name, c.distinct)
        return batch | {"log_prob_anchor": self.anchor.log_prob(round.contexts, responses)}

    def round_eta(self, tau: float) -> float:
        """The covered rounds' step: ONPO's 1/(1 + τ) for optimistic rounds, else INPO's τ/(τ² + ¼)."""
        return 1.0 / (1.0 + tau) if self.config.inner == "onpo" else default_eta(tau)

    def optimistic_batch(self, round: Round) -> Batch:
        """A covered round with ONPO's optimistic target (``optimistic_samples``), plus the anchor's log-probs."""
        c = self.config
        batch, self.memory = optimistic_samples(round, self.name, "win_rate", c.opponents, c.reference_samples,
                                                c.distinct, self.memory, self.round_eta(self.prox_tau()),
                                                self.prox_tau())
        for prefix in ("", "reference_") if "reference_responses" in batch else ("",):
            batch[f"{prefix}log_prob_anchor"] = self.anchor.log_prob(round.contexts, batch[f"{prefix}responses"])
        return batch

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        tau = self.prox_tau()
        if "win_rate" in batch:
            log_prob, previous, win_rate, weight, anchor = joined(batch, policy, "win_rate", self.config.distinct,
                                                                 "log_prob_anchor")
            per_context = covered_loss(log_prob, previous, anchor, win_rate, weight, self.round_eta(tau), tau)
            # distinct: each action once and contexts summed, so one SGD step of lr ½ is the inner INPO step
            return (per_context.sum() if weight is not None else per_context.mean()), {}
        return pair_loss(batch, policy, batch["log_prob_anchor"], default_eta(tau), tau), {}

    def loss_count(self, batch: Batch) -> float | None:
        if "win_rate" in batch and self.config.distinct and isinstance(batch["responses"], Tensor):
            return None
        return float(batch["contexts"].shape[0])

    # ---- checkpointed state (the anchor of sampled training) --------------------------------------------------
    def state_dict(self) -> dict:
        return self.anchor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.anchor.load_state_dict(state)
