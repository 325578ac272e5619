"""INPO: Iterative Nash Policy Optimization (Zhang, Yu, Peng, Song, Tian, Huo, Jiang, Mi, Yu; arXiv 2407.00617,
ICLR 2025).

Exact dynamics: online mirror descent of each player against itself on the KL-regularised game,
π_{t+1} ∝ π_t^(1−ητ) μ^(ητ) exp(η P(y ≻ π_t)); the default step τ/(τ² + ¼) is derived so that the last iterate
converges locally and linearly for every τ > 0. Sampled training: a squared loss on every pair of the round's K
samples whose minimiser, with exact expectations, is exactly that mirror step.

The update, the loss, the sampling scheme, the options and the sources: docs/algorithms.md#inpo. What it reaches on
tabular games: bench/solvers.md.
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
    positive = ("eta",)

    eta: float | None = None
    """Mirror-descent step η (the third-party LM code's 1/eta). None: τ/(τ² + ¼), which converges locally for
    every τ > 0. η·τ must be at most 1. For language models the 3rd-party setting is η·τ = 1/3, η ≈ 133."""


@register
class INPO(Solver):
    name = "inpo"
    Config = Config
    min_samples = 2
    # Adam: η only rescales the gradient of the first step, and the loss's stationary point is π*_τ for every η
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

    def check_sampled(self, samples: int, tau: float | None) -> None:
        super().check_sampled(samples, tau)
        self.step_size(tau)                 # the loss uses the step: η·τ ≤ 1

    def default_iterations(self, game: PreferenceGame) -> int:
        tau = require_tau(game, self.name)
        rate = self.step_size(tau) * tau
        return min(math.ceil(GAP_DECADES * math.log(10) / rate), MAX_DEFAULT_ITERATIONS)

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        eta = self.step_size(require_tau(game, self.name))
        return game.mirror_step(log_pi, game.win_rates(log_pi.exp()), eta)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        responses, batch = pair_batch(round, self.name)
        return batch | {"log_prob_reference": round.log_prob(responses, "reference"),
                        "tau": round_tau(round, self.name)}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        tau = batch["tau"]
        return pair_loss(batch, policy, batch["log_prob_reference"], self.step_size(tau), tau), {}


def pair_batch(round: Round, name: str, distinct: bool = False) -> tuple[object, Batch]:
    """(responses, batch): K samples from π_t, the label of every unordered pair and π_t's log-probs (with
    ``distinct`` on action ids, each distinct pair of different actions is queried once)."""
    k = round.samples
    require_samples(name, k)
    responses = round.sample(k)
    label = preference_matrix(round, responses, k, distinct)
    i, j = torch.triu_indices(k, k, offset=1)
    return responses, {"contexts": round.contexts, "responses": responses, "label": label[:, i, j],
                       "log_prob_previous": round.log_prob(responses, "previous")}


def pair_loss(batch: Batch, policy: Policy, log_prob_reference: Tensor, eta: float, tau: float) -> Tensor:
    """Mean ``inpo_loss`` over every pair i < j of a ``pair_batch``, with the given reference log-probs (μ for
    INPO, the previous outer iterate for COMAL)."""
    log_prob = policy.log_prob(batch["contexts"], batch["responses"])
    k = log_prob.shape[-1]
    i, j = torch.triu_indices(k, k, offset=1)

    def pair_difference(x: Tensor) -> Tensor:
        x = x.to(log_prob)
        return x[:, i] - x[:, j]

    per_pair = inpo_loss(pair_difference(log_prob), pair_difference(log_prob_reference),
                         pair_difference(batch["log_prob_previous"]), batch["label"].to(log_prob), eta, tau)
    return per_pair.mean()
