"""SPPO: Self-Play Preference Optimization (Wu, Sun, Yuan, Ji, Yang, Gu; arXiv 2405.00675, ICLR 2025).

Exact dynamics: multiplicative weights (Hedge) on the unregularised game, started at μ; the average iterate
carries the O(1/√T) guarantee (the step comes from ``nashpref.solvers.hedge``) and the last iterate cycles.
Sampled training: each sampled response is regressed onto the multiplicative-weights target
log π_θ(y)/π_t(y) ≈ η(P̂(y ≻ π_t) − ½). The coverage options (``reference_samples``, ``log_partition="fit"``,
``distinct``) make a tabular round's minimiser the exact step; ``SPPO.sampled_defaults`` and
``SPPO.sampled_options`` hold them for ``nashpref solve --recommended``.

The update, the loss, the sampling scheme, the options and the sources: docs/algorithms.md#sppo. What it reaches on
tabular games: bench/solvers.md.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.solvers.base import Batch, Policy, Round, SolverConfig, register, take
from nashpref.solvers.checks import require_samples
from nashpref.solvers.hedge import HedgeSolver
from nashpref.solvers.win_rates import joined, preference_matrix, reference_entries, scored_samples



def sppo_loss(log_prob: Tensor, log_prob_previous: Tensor, win_rate: Tensor, eta: float) -> Tensor:
    """Per-response SPPO loss (log π_θ(y) − log π_t(y) − η(P̂(y ≻ π_t) − ½))², same shape as the inputs."""
    return (log_prob - log_prob_previous - eta * (win_rate - 0.5)) ** 2


def sppo_context_loss(log_prob: Tensor, log_prob_previous: Tensor, win_rate: Tensor, eta: float,
                      weight: Tensor | None = None, fit_log_partition: bool = False) -> Tensor:
    """(B,) per-context SPPO loss over K responses: the mean of ``sppo_loss``, or with ``weight`` (B, K) the sum
    Σ w·ℓ. ``fit_log_partition`` replaces the paper's log Z ≈ η/2 by its least-squares value, i.e. the
    (weighted) mean residual is subtracted first."""
    residual = log_prob - log_prob_previous - eta * (win_rate - 0.5)
    w = torch.full_like(residual, 1.0 / residual.shape[-1]) if weight is None else weight.to(residual)
    if fit_log_partition:
        residual = residual - (w * residual).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)
    return (w * residual ** 2).sum(-1)


@dataclasses.dataclass
class Config(SolverConfig):
    positive = ("eta",)
    choices = {"pairs": ("all", "best-worst"), "log_partition": ("half", "fit")}
    counts = ("reference_samples", "opponents")

    eta: float | None = None
    """Step size η of π_{t+1} ∝ π_t exp(η P(y ≻ π_t)) (the SPPO code's beta is 1/η). None: exact dynamics use
    the Hedge step √(8 log(1/min μ)/T) for the default horizon T. Sampled training uses 1.0, which is neutral
    under Adam with one step per round. The paper's η = 1000 is for language-model sequence log-probs: pass it
    explicitly there."""
    target_gap: float = 0.05
    """The default horizon is the smallest T whose Hedge bound √(2 log(1/min μ)/T) on the average iterate's
    unregularised gap is at most this."""
    pairs: Literal["all", "best-worst"] = "all"
    """Sampled training: regress all K samples ('all', the paper's population loss E_{y~π_t}, whose minimiser is
    the MW step up to the log Z bias), or only the best and worst by P̂ ('best-worst', what the paper's code trains
    on; mid-ranked actions get no target)."""
    reference_samples: int = 0
    """Sampled training: also regress this many responses per context drawn from μ, each scored against the same
    draws from π_t as the on-policy samples (the K samples, or ``opponents``). The regression's pointwise
    minimiser does not depend on where the regressed responses come from, so this only adds coverage: actions that
    π_t has nearly dropped still get targets. 0 (the paper) regresses the on-policy samples only."""
    log_partition: Literal["half", "fit"] = "half"
    """Sampled training: 'half' is the paper's target, which replaces log Z by η/2. 'fit' fits log Z per context
    by least squares (the residuals are centred), so a fully covered round's minimiser is the MW step exactly."""
    opponents: int = 0
    """Sampled training: score every regressed response against this many fresh draws from π_t, an unbiased
    estimate of P(y ≻ π_t) (with ``distinct`` on action ids each distinct pair is asked once, so many draws cost
    at most N(N−1)/2 queries). 0 (the paper) scores the K samples against each other, self term ½ included."""
    distinct: bool = False
    """Sampled training on action ids: each distinct pair of actions is queried once (``win_rates``), and each
    distinct response counts once, and the loss is summed over distinct responses and contexts, so SGD with lr ½
    solves a 'fit' round in one step. Ignored for language-model
    responses (never repeated)."""


@register
class SPPO(HedgeSolver):
    name = "sppo"
    Config = Config
    min_samples = 2
    # one SGD step of lr ½ solves a round's 'fit' + 'distinct' regression exactly
    # and 1024 opponents, each distinct pair asked once, make the round's win-rates nearly exact for ~N²/2 queries
    sampled_defaults: ClassVar[dict] = {"lr": 0.5, "optimizer": "sgd", "samples": 4, "iterations": 1000,
                                        "epochs": 1}
    sampled_options: ClassVar[dict] = {"eta": 1.0, "reference_samples": 1024, "opponents": 1024,
                                       "log_partition": "fit", "distinct": True}

    def step_size(self, game: PreferenceGame) -> float:
        if self.config.eta is None:
            return self.hedge_step(game)
        return self.config.eta

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        return torch.log_softmax(log_pi + self.step_size(game) * game.win_rates(log_pi.exp()), dim=-1)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        require_samples(self.name, round.samples)
        c = self.config
        if c.pairs == "best-worst":
            drawn = round.sample(round.samples)
            win_rate = preference_matrix(round, drawn, round.samples).mean(-1)   # incl. the self term ½
            index = torch.stack([win_rate.argmax(-1), win_rate.argmin(-1)], dim=-1)
            responses, win_rate = take(drawn, index), win_rate.gather(1, index)
            batch = {"contexts": round.contexts, "responses": responses, "win_rate": win_rate,
                     "log_prob_previous": round.log_prob(responses, "previous")}
            return batch | reference_entries(round, self.name, c.reference_samples, drawn, round.samples,
                                             "win_rate")
        return scored_samples(round, self.name, "win_rate", c.opponents, c.reference_samples, c.distinct)

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        log_prob, previous, win_rate, weight = joined(batch, policy, "win_rate", self.config.distinct)
        eta = self.sampled_eta()
        fit = self.config.log_partition == "fit"
        per_context = sppo_context_loss(log_prob, previous, win_rate, eta, weight, fit)
        # distinct: summed over contexts too, so lr ½ stays one exact step whatever the batch size
        loss = per_context.sum() if weight is not None else per_context.mean()
        return loss, {"log_ratio": (log_prob - previous).mean().item()}

    def loss_count(self, batch: Batch) -> float | None:
        return None if self.config.distinct else float(batch["contexts"].shape[0])
