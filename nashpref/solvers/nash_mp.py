"""Nash-MP: Nash Mirror-Prox (Tiapkin, Calandriello, Belomestny, Moulines, Naumov, Rasul, Valko, Ménard;
*Accelerating Nash Learning from Human Feedback via Mirror Prox*, arXiv 2505.19731).

**Exact dynamics.** Two KL-proximal steps per iteration on the τ-regularised game, both from π_t:

    π_{t+½} = argmax_π η[P(π ≻ π_t) − τ KL(π‖μ)] − KL(π‖π_t),
    π_{t+1} = argmax_π η[P(π ≻ π_{t+½}) − τ KL(π‖μ)] − KL(π‖π_t).

On a finite set, with a = 1/(1+ητ): π ∝ π_t^a μ^(1−a) exp(ηa·P(y ≻ ·)). This is EGPO's extragradient step
with step ηa = η/(1+ητ) (EGPO's 1 − η_E τ = a): the two coincide to rounding error (tests/test_nash_mp.py).
EGPO's default η_E = 1/(1+τ) is Nash-MP with η = 1. The default here is η = 2 = 1/L, L = ½ the Lipschitz
constant of y ↦ P(y ≻ π) in (‖·‖₁, ‖·‖∞) (P − ½ has entries in [−½, ½]), the largest mirror-prox step.

**Rate.** The abstract claims KL(π*‖π_t) decreasing like (1+2τ)^(−N/2) in the number N of preference
queries, i.e. (1+ητ)^(−t) per iteration at η = 2. Measured (tests/test_nash_mp.py, random N = 10 games): the
KL contracts by ≈ (1+ητ)^(−2) per iteration: 0.69 at τ = 0.1 (EGPO's default: 0.82), 0.96 at τ = 0.01
(EGPO: 0.98), so Nash-MP needs about half of EGPO's iterations to a given gap. The **last iterate** converges.

**Sampled training.** The loop's extragradient protocol (half step, resample, restore, full step). At π_t:
y, y' ~ π_t (K pairs) and opponents y'' ~ π_t; at π_{t+½} the same y, y' with fresh opponents y'' ~ π_{t+½}.
Both phases minimise the proximal regression

    (Δ_θ − aΔ_t − (1−a)Δ_μ − ηa(P(y ≻ y'') − P(y' ≻ y'')))²,    Δ_m = log m(y) − log m(y').

Averaged over y'' the target is ηa(P(y ≻ π) − P(y' ≻ π)), and a least-squares fit of f(y) − f(y') over
pairs from any full-support distribution is solved by f = ηa·P(· ≻ π) + const: the population minimiser is
the proximal step itself (tests/test_nash_mp.py). The target is linear in P, so Bernoulli labels stay
unbiased. Unlike EGPO's loss, whose *one gradient step* is the mirror step, this one is anchored at π_t, so
more optimizer steps per round (epochs) move closer to the exact step rather than past it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.checks import check_number, require_tau, round_tau

DEFAULT_ETA = 2.0           # 1/L: the mirror-prox step for the ½-Lipschitz preference operator
DEFAULT_DECADES = 12        # default budget: (1 + ητ)^(−t) ≤ 10^-12
MAX_DEFAULT_ITERATIONS = 200_000


def nash_mp_loss(log_ratio_policy: Tensor, log_ratio_previous: Tensor, log_ratio_reference: Tensor,
                 preference: Tensor, preference_other: Tensor, eta: float, tau: float) -> Tensor:
    """Per-pair (Δ_θ − aΔ_t − (1−a)Δ_μ − ηa(P(y ≻ y'') − P(y' ≻ y'')))², a = 1/(1+ητ); each Δ is a log-prob
    of y minus that of y' under the trained policy, π_t and μ."""
    a = 1.0 / (1.0 + eta * tau)
    anchor = a * log_ratio_previous + (1.0 - a) * log_ratio_reference
    return (log_ratio_policy - anchor - eta * a * (preference - preference_other)) ** 2


def proximal_step(game: PreferenceGame, log_pi: Tensor, scores: Tensor, eta: float) -> Tensor:
    """log of argmax_π η[⟨scores, π⟩ − τ KL(π‖μ)] − KL(π‖π_t) = π_t^a μ^(1−a) exp(ηa·scores), a = 1/(1+ητ)."""
    a = 1.0 / (1.0 + eta * game.tau)
    return torch.log_softmax(a * log_pi + (1.0 - a) * game.log_mu + eta * a * scores, dim=-1)


@dataclasses.dataclass
class Config(SolverConfig):
    eta: float = DEFAULT_ETA
    """Proximal step η (> 0). 2 = 1/L is the largest step the mirror-prox analysis covers; each iteration
    then shrinks KL(π*‖π_t) by about (1+ητ)^(−2) (measured)."""


@register
class NashMP(Solver):
    name = "nash-mp"
    Config = Config
    iterate = "last"
    needs_tau = True
    extragradient = True
    # the generic settings (tests/test_nash_mp.py): gap ≤ 0.0153 on random N ≤ 10 games at τ = 0.1, 16 000 queries;
    # 4 epochs of Adam lr 0.05 (K = 16) fitted the noise instead (up to 0.086). 1000 rounds, not 500: on the
    # 10-context egpo-random game the worst context still sat at 0.025–0.037 after 500 (0.005–0.010 after 1000)
    sampled_defaults = {"lr": 0.01, "optimizer": "adam", "samples": 8, "iterations": 1000}

    def __init__(self, config: Config | None = None):
        super().__init__(config)
        self._pairs: Batch | None = None     # the π_t pairs of the current iteration, kept for its full step

    def step_size(self) -> float:
        return check_number(self.config.eta, "eta", self.name)

    def default_iterations(self, game: PreferenceGame) -> int:
        rate = math.log1p(self.step_size() * require_tau(game, self.name))
        return min(math.ceil(DEFAULT_DECADES * math.log(10) / rate), MAX_DEFAULT_ITERATIONS)

    def init(self, game: PreferenceGame) -> Tensor:
        require_tau(game, self.name)
        return game.log_mu.clone()

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        require_tau(game, self.name)
        eta = self.step_size()
        half = proximal_step(game, log_pi, game.win_rates(log_pi.exp()), eta)
        return proximal_step(game, log_pi, game.win_rates(half.exp()), eta)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        """At π_t (a new ``contexts`` tensor: the loop builds one per iteration) draw and keep the pairs; at
        π_{t+½} (the same ``contexts`` object) reuse them against fresh opponents."""
        tau = round_tau(round, self.name)
        k = round.samples
        pairs = self._pairs
        if pairs is None or pairs["contexts"] is not round.contexts:
            first, second = round.sample(k), round.sample(k)
            pairs = {"contexts": round.contexts, "first": first, "second": second,
                     "previous_first": round.log_prob(first, "previous"),
                     "previous_second": round.log_prob(second, "previous"),
                     "reference_first": round.log_prob(first, "reference"),
                     "reference_second": round.log_prob(second, "reference")}
            self._pairs = pairs
        else:
            self._pairs = None                # the full step consumes them
        opponent = round.sample(k)
        return pairs | {"tau": tau, "preference": round.prefer(pairs["first"], opponent),
                        "preference_other": round.prefer(pairs["second"], opponent)}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        contexts = batch["contexts"]
        log_prob = policy.log_prob(contexts, batch["first"])
        log_prob_other = policy.log_prob(contexts, batch["second"])

        def difference(key: str) -> Tensor:
            return batch[f"{key}_first"].to(log_prob) - batch[f"{key}_second"].to(log_prob)

        per_pair = nash_mp_loss(log_prob - log_prob_other, difference("previous"), difference("reference"),
                                batch["preference"].to(log_prob), batch["preference_other"].to(log_prob),
                                self.step_size(), batch["tau"])
        return per_pair.mean(), {}
