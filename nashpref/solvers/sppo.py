"""SPPO: Self-Play Preference Optimization (Wu, Sun, Yuan, Ji, Yang, Gu; arXiv 2405.00675, ICLR 2025).

**Exact dynamics.** Multiplicative weights (Hedge) on the *unregularised* game, started at μ:

    π_{t+1}(y) ∝ π_t(y) exp(η P(y ≻ π_t)).

SPPO has no KL term to μ, so it ignores τ and solves the τ = 0 game. The guarantee is on the **average iterate**
π̄_T = (1/T) Σ_t π_t. Its unregularised gap equals 2·regret/T exactly (see ``_shared_b``), and Hedge's regret bound
gives Gap₀(π̄_T) ≤ √(2L/T) = O(1/√T) for the step η = √(8L/T), with L = log(1/min μ). By default the horizon is
chosen so that this bound is ``target_gap``. The **last iterate does not converge**: around an interior
equilibrium it cycles outward (tests/test_sppo.py measures this).

**Sampled training** (paper §4, code ``uclaml/SPPO``). Draw K responses per prompt from π_t and query the K×K
preference matrix. The self term ½ is included, not queried. Estimate P̂(y ≻ π_t) as the row mean, then
regress every chosen response onto the multiplicative-weights target:

    ℓ(y) = (log π_θ(y)/π_t(y) − η(P̂(y ≻ π_t) − ½))².

The paper replaces log Z by η/2 (E_{π_t} P(y ≻ π_t) = ½), so the population minimiser is close to the MW step
but not equal to it. The L1 bias at η = 2 is 2e-3 to 1e-2 and grows 5–7× per doubling of η.

On tabular policies (tests/test_sppo.py), with Adam and one step per round, η only rescales the gradient, and
Adam's normalisation removes that scale. SAMPLED_ETA = 1 is therefore a neutral default: set η explicitly for
SGD or several epochs. The paper's η = 1000 is for language-model sequence log-probs.
* weighted-rps (K = 8, Adam lr 1e-3, 6000 rounds): Gap₀(π̄) = 0.010–0.018 over 5 seeds.
* egpo-random: 0.57 in the worst context (mean 0.27; μ itself: 0.60 / 0.37). Exact MW reaches 0.018 in 4351
  steps. The on-policy loss moves only sampled actions, so an action with π(y) ≪ 1/K is almost never drawn again
  and cannot recover, while MW's cycles pass close to the boundary.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from nashpref.game import GameError, PreferenceGame
from nashpref.solvers._shared_b import hedge_horizon, hedge_step, preference_matrix, require_samples, take
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.common import check_number

SAMPLED_ETA = 1.0


def sppo_loss(log_prob: Tensor, log_prob_previous: Tensor, win_rate: Tensor, eta: float) -> Tensor:
    """Per-response SPPO loss (log π_θ(y) − log π_t(y) − η(P̂(y ≻ π_t) − ½))², same shape as the inputs."""
    return (log_prob - log_prob_previous - eta * (win_rate - 0.5)) ** 2


@dataclasses.dataclass
class Config(SolverConfig):
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
    on; mid-ranked actions get no target). Tabular, Adam lr 1e-3, 6000 rounds: weighted-rps 0.012 vs 0.011 (a tie
    at N = 3), egpo-random worst context 0.57 vs 0.61."""


@register
class SPPO(Solver):
    name = "sppo"
    Config = Config
    iterate = "average"
    needs_tau = False

    def default_iterations(self, game: PreferenceGame) -> int:
        return hedge_horizon(game, self.config.target_gap)

    def step_size(self, game: PreferenceGame) -> float:
        if self.config.eta is None:
            return hedge_step(game, self.default_iterations(game))
        return check_number(self.config.eta, "eta", self.name)

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        return torch.log_softmax(log_pi + self.step_size(game) * game.win_rates(log_pi.exp()), dim=-1)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        k = round.samples
        require_samples(self.name, k)
        responses = round.sample(k)
        if self.config.pairs not in ("all", "best-worst"):
            raise GameError(f"{self.name}: pairs must be 'all' or 'best-worst', got {self.config.pairs!r}")
        win_rate = preference_matrix(round, responses, k).mean(-1)   # row mean incl. the self term ½
        if self.config.pairs == "best-worst":
            index = torch.stack([win_rate.argmax(-1), win_rate.argmin(-1)], dim=-1)
            responses, win_rate = take(responses, index), win_rate.gather(1, index)
        return {"contexts": round.contexts, "responses": responses, "win_rate": win_rate,
                "log_prob_previous": round.log_prob(responses, "previous")}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        log_prob = policy.log_prob(batch["contexts"], batch["responses"])
        previous = batch["log_prob_previous"].to(log_prob)
        eta = SAMPLED_ETA if self.config.eta is None else check_number(self.config.eta, "eta", self.name)
        loss = sppo_loss(log_prob, previous, batch["win_rate"].to(log_prob), eta).mean()
        return loss, {"log_ratio": (log_prob - previous).mean().item()}
