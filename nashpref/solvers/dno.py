"""DNO: Direct Nash Optimization (Rosset, Cheng, Mitra, Santacroce, Awadallah, Xie; arXiv 2404.03715).

**Exact dynamics** (the paper's Algorithm 1 in the tabular limit). Batched on-policy soft policy iteration on the
*unregularised* game, started at μ:

    r_t(y) = P(y ≻ π_t),    π_{t+1}(y) ∝ π_t(y) exp(r_t(y)/η).

η is the paper's inverse step (a KL-to-π_t weight). This is SPPO's multiplicative-weights step with step 1/η, so
the same guarantee holds. It is on the **average iterate**: the unregularised gap of π̄_T is
≤ √(2L/T) = O(1/√T) for η = √(T/(8L)), L = log(1/min μ) (Hedge regret bound, see ``_shared_b``). The paper claims
average-iterate convergence to the Nash equilibrium. τ is ignored (needs_tau False). The last iterate cycles.

**Sampled training.** K responses from π_t. Their win-rates against the K samples, self term ½ included, estimate
r_t. Two variants:

* ``soft`` (Algorithm 1, §7.1): the two-sided soft-label logistic loss on every pair (y₁, y₂) of the K samples,

      −[σ(r₁−r₂) log σ(η(ℓ₁−ℓ₂)) + σ(r₂−r₁) log σ(η(ℓ₂−ℓ₁))],   ℓ = log π_θ(y)/π_t(y).

  Its population minimiser is exactly π_t exp(r_t/η)/Z: the normaliser cancels in the pairwise difference.
* ``prct`` (DNO-Prct, Algorithm 2, §7.2): the best vs the worst of K by win-rate. A pair is kept only if the
  win-rates differ by at least ``margin``. It is trained with the DPO loss −log σ(η(ℓ_w − ℓ_l)) against π_t.
  The paper's teacher ("gold") outputs are not modelled.

On tabular policies (tests/test_dno.py), with Adam and one step per round, η only rescales the gradient, so the
sampled default η = 1 is neutral. Soft variant, K = 8, Adam lr 1e-3, 6000 rounds:
* weighted-rps: Gap₀(π̄) = 0.010–0.018 over 5 seeds.
* egpo-random: 0.57 in the worst context. This is the same on-policy limit as SPPO: actions that are no longer
  sampled cannot recover.
* DNO-Prct on weighted-rps, same settings: 0.018–0.020 over 3 seeds.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from nashpref.game import GameError, PreferenceGame
from nashpref.solvers._shared_b import dpo_loss, hedge_horizon, hedge_step, preference_matrix, require_samples, take
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register
from nashpref.solvers.common import check_number

SAMPLED_ETA = 1.0


def dno_soft_loss(log_ratio_1: Tensor, log_ratio_2: Tensor, reward_1: Tensor, reward_2: Tensor,
                  eta: float) -> Tensor:
    """Per-pair soft-label logistic loss −[σ(r₁−r₂) log σ(η(ℓ₁−ℓ₂)) + σ(r₂−r₁) log σ(η(ℓ₂−ℓ₁))]."""
    target = torch.sigmoid(reward_1 - reward_2)
    logit = eta * (log_ratio_1 - log_ratio_2)
    return -(target * F.logsigmoid(logit) + (1.0 - target) * F.logsigmoid(-logit))


@dataclasses.dataclass
class Config(SolverConfig):
    eta: float | None = None
    """Inverse step η of π_{t+1} ∝ π_t exp(r_t/η) (the paper's KL-to-π_t weight). None: exact dynamics use the
    Hedge-optimal √(T/(8 log(1/min μ))) for the default horizon T. Sampled training uses 1.0, which is
    neutral under Adam with one step per round. In the loss, η multiplies the log-ratios, as DPO's β does."""
    target_gap: float = 0.05
    """The default horizon is the smallest T whose Hedge bound √(2 log(1/min μ)/T) on the average iterate's
    unregularised gap is at most this."""
    variant: Literal["soft", "prct"] = "soft"
    """Sampled loss: 'soft' is the soft-label two-sided logistic loss on all pairs of the K samples (Algorithm 1).
    'prct' is DNO-Prct: best vs worst of K by win-rate, margin filter, DPO against π_t (Algorithm 2)."""
    margin: float = 0.1
    """DNO-Prct only: keep a best/worst pair only if their win-rates differ by at least this."""


@register
class DNO(Solver):
    name = "dno"
    Config = Config
    iterate = "average"
    needs_tau = False

    def default_iterations(self, game: PreferenceGame) -> int:
        return hedge_horizon(game, self.config.target_gap)

    def inverse_step(self, game: PreferenceGame) -> float:
        if self.config.eta is None:
            return 1.0 / hedge_step(game, self.default_iterations(game))
        return check_number(self.config.eta, "eta", self.name)

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        return torch.log_softmax(log_pi + game.win_rates(log_pi.exp()) / self.inverse_step(game), dim=-1)

    # ---- sampled training ----------------------------------------------------------------------------------
    def sampled_eta(self) -> float:
        return SAMPLED_ETA if self.config.eta is None else check_number(self.config.eta, "eta", self.name)

    def collect(self, round: Round) -> Batch:
        k = round.samples
        require_samples(self.name, k)
        responses = round.sample(k)
        reward = preference_matrix(round, responses, k).mean(-1)     # r̂_t(y_k): win-rate incl. the self term ½
        if self.config.variant == "soft":
            return {"contexts": round.contexts, "responses": responses, "reward": reward,
                    "log_prob_previous": round.log_prob(responses, "previous")}
        if self.config.variant != "prct":
            raise GameError(f"{self.name}: variant must be 'soft' or 'prct', got {self.config.variant!r}")
        index = torch.stack([reward.argmax(-1), reward.argmin(-1)], dim=-1)
        pair = take(responses, index)
        best_worst = reward.gather(1, index)
        spread = best_worst[:, 0] - best_worst[:, 1]
        margin = check_number(self.config.margin, "margin", self.name, high=1.0, low_open=False)
        keep = (spread > 0) & (spread >= margin)
        return {"contexts": round.contexts, "responses": pair, "keep": keep.to(torch.float64),
                "log_prob_previous": round.log_prob(pair, "previous")}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        log_prob = policy.log_prob(batch["contexts"], batch["responses"])
        log_ratio = log_prob - batch["log_prob_previous"].to(log_prob)
        eta = self.sampled_eta()
        if "keep" in batch:          # DNO-Prct: column 0 chosen, column 1 rejected
            keep = batch["keep"].to(log_prob)
            per_pair = dpo_loss(log_ratio[:, 0], log_ratio[:, 1], eta)
            loss = (per_pair * keep).sum() / keep.sum().clamp(min=1.0)
            return loss, {"kept": keep.mean().item()}
        k = log_ratio.shape[-1]
        i, j = torch.triu_indices(k, k, offset=1)
        reward = batch["reward"].to(log_prob)
        loss = dno_soft_loss(log_ratio[:, i], log_ratio[:, j], reward[:, i], reward[:, j], eta).mean()
        return loss, {"log_ratio": log_ratio.mean().item()}
