"""DNO: Direct Nash Optimization (Rosset, Cheng, Mitra, Santacroce, Awadallah, Xie; arXiv 2404.03715).

Exact dynamics: batched on-policy soft policy iteration on the unregularised game, π_{t+1} ∝ π_t exp(r_t/η) with
r_t(y) = P(y ≻ π_t): SPPO's multiplicative-weights step with step 1/η, so the average iterate carries the same
Hedge guarantee (``nashpref.solvers.hedge``). Sampled training: the two-sided soft-label logistic loss on every
pair of the round's samples (``variant="soft"``, Algorithm 1), or DNO-Prct's best-against-worst DPO with a margin
filter (``variant="prct"``, Algorithm 2). The coverage options work as for SPPO.

The update, the losses, the sampling scheme, the options and the sources: docs/algorithms.md#dno. What it reaches on
tabular games: bench/solvers.md.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.solvers.base import Batch, Policy, Round, SolverConfig, register, take
from nashpref.solvers.checks import require_samples
from nashpref.solvers.coverage import compact, distinct_weights
from nashpref.solvers.hedge import HedgeSolver
from nashpref.solvers.losses import dpo_loss
from nashpref.solvers.win_rates import preference_matrix, scored_samples



def dno_soft_loss(log_ratio_1: Tensor, log_ratio_2: Tensor, reward_1: Tensor, reward_2: Tensor,
                  eta: float) -> Tensor:
    """Per-pair soft-label logistic loss −[σ(r₁−r₂) log σ(η(ℓ₁−ℓ₂)) + σ(r₂−r₁) log σ(η(ℓ₂−ℓ₁))]."""
    target = torch.sigmoid(reward_1 - reward_2)
    logit = eta * (log_ratio_1 - log_ratio_2)
    return -(target * F.logsigmoid(logit) + (1.0 - target) * F.logsigmoid(-logit))


def dno_context_loss(log_ratio: Tensor, reward: Tensor, eta: float, weight: Tensor | None = None) -> Tensor:
    """(B,) per-context soft loss over all pairs i < j of K responses: the mean of ``dno_soft_loss``, or with
    ``weight`` (B, K) the sum Σ w_i w_j ℓ_ij divided by Σ_i w_i."""
    k = log_ratio.shape[-1]
    i, j = torch.triu_indices(k, k, offset=1)
    per_pair = dno_soft_loss(log_ratio[:, i], log_ratio[:, j], reward[:, i], reward[:, j], eta)
    if weight is None:
        return per_pair.mean(-1)
    weight = weight.to(per_pair)
    return (weight[:, i] * weight[:, j] * per_pair).sum(-1) / weight.sum(-1)


@dataclasses.dataclass
class Config(SolverConfig):
    positive = ("eta",)
    choices = {"variant": ("soft", "prct")}
    bounded = {"margin": 1.0}
    counts = ("reference_samples", "opponents")

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
    reference_samples: int = 0
    """Soft variant: also train on this many responses per context drawn from μ, each scored against the same draws
    from π_t as the on-policy samples (the K samples, or ``opponents``), in pairs with every other trained response.
    The loss's minimiser does not depend on where the pairs come from, so this only adds coverage. 0 (the paper)
    uses π_t's samples."""
    opponents: int = 0
    """Soft variant: score every trained response against this many fresh draws from π_t, an unbiased estimate
    of r_t(y) = P(y ≻ π_t) (with ``distinct`` on action ids each distinct pair is asked once, so many draws cost
    at most N(N−1)/2 queries). 0 (the paper) scores the K samples against each other, self term ½ included."""
    distinct: bool = False
    """Soft variant on action ids: each distinct pair of actions is queried once (``win_rates``), each pair of distinct
    responses counts once (repeats are dropped), a context's loss is divided by its number of distinct responses,
    and contexts are summed, so SGD with lr ≈ 4/η² is about one Newton step. Ignored for language-model responses
    (never repeated)."""


@register
class DNO(HedgeSolver):
    name = "dno"
    Config = Config
    min_samples = 2
    # 1024 opponents, each distinct pair asked once: nearly exact win-rates for ~N²/2 queries a round
    sampled_options: ClassVar[dict] = {"eta": 1.0, "reference_samples": 1024, "opponents": 1024, "distinct": True}
    # SGD lr 4/η² is about one Newton step on a round's pairwise loss
    sampled_defaults: ClassVar[dict] = {"lr": 4.0, "optimizer": "sgd", "samples": 4, "iterations": 1000,
                                        "epochs": 2}

    def inverse_step(self, game: PreferenceGame) -> float:
        if self.config.eta is None:
            return 1.0 / self.hedge_step(game)
        return self.config.eta

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        return torch.log_softmax(log_pi + game.win_rates(log_pi.exp()) / self.inverse_step(game), dim=-1)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        k = round.samples
        require_samples(self.name, k)
        c = self.config
        if c.variant == "soft":
            return scored_samples(round, self.name, "reward", c.opponents, c.reference_samples, c.distinct)
        responses = round.sample(k)
        reward = preference_matrix(round, responses, k).mean(-1)     # r̂_t(y_k): win-rate incl. the self term ½
        index = torch.stack([reward.argmax(-1), reward.argmin(-1)], dim=-1)
        pair = take(responses, index)
        best_worst = reward.gather(1, index)
        spread = best_worst[:, 0] - best_worst[:, 1]
        keep = (spread > 0) & (spread >= self.config.margin)
        return {"contexts": round.contexts, "responses": pair, "keep": keep.to(torch.float64),
                "log_prob_previous": round.log_prob(pair, "previous")}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        log_prob = policy.log_prob(batch["contexts"], batch["responses"])
        log_ratio = log_prob - batch["log_prob_previous"].to(log_prob)
        eta = self.sampled_eta()
        if "keep" not in batch:
            return self.soft_loss(batch, policy, log_ratio, eta)
        keep = batch["keep"].to(log_prob)          # DNO-Prct: column 0 chosen, column 1 rejected
        per_pair = dpo_loss(log_ratio[:, 0], log_ratio[:, 1], eta)
        loss = (per_pair * keep).sum() / keep.sum().clamp(min=1.0)
        return loss, {"kept": keep.mean().item()}

    def loss_count(self, batch: Batch) -> float | None:
        if "keep" in batch:
            return float(batch["keep"].sum())
        return None if self.config.distinct else float(batch["contexts"].shape[0])

    def soft_loss(self, batch: Batch, policy: Policy, log_ratio: Tensor, eta: float) -> tuple[Tensor, dict]:
        responses, reward = batch["responses"], batch["reward"]
        if "reference_responses" in batch:
            others = batch["reference_responses"]
            log_prob = policy.log_prob(batch["contexts"], others)
            log_ratio = torch.cat([log_ratio, log_prob - batch["reference_log_prob_previous"].to(log_prob)], -1)
            reward = torch.cat([reward, batch["reference_reward"]], -1)
            if isinstance(responses, Tensor):
                responses = torch.cat([responses, others], -1)
        reward = reward.to(log_ratio)
        weight = distinct_weights(responses) if self.config.distinct else None
        if weight is not None:
            weight, log_ratio, reward = compact(weight, log_ratio, reward)
        per_context = dno_context_loss(log_ratio, reward, eta, weight)
        # distinct: summed over contexts, so lr 4/η² stays about one Newton step whatever the batch size
        loss = per_context.sum() if weight is not None else per_context.mean()
        return loss, {"log_ratio": log_ratio.mean().item()}
