"""Pessimism for offline preference data (Xiong et al., arXiv 2312.11456, Algorithm 1; Zhu, Jordan & Jiao,
arXiv 2301.11270): act on a lower confidence bound of the reward rather than on the MLE.

A BT reward is identified only up to a per-context constant, so rewards are measured from an anchor: the
behaviour policy ν that produced the data (the best-covered point), r(x, a) − r(x, ν) = θᵀ(φ(x, a) − φ(x, ν)).

* greedy MLE:      r̂(x, a)     = θ̂ᵀ(φ(x, a) − φ(x, ν))
* covariance LCB:  r_lcb(x, a) = θ̂ᵀ(φ(x, a) − φ(x, ν)) − β ‖φ(x, a) − φ(x, ν)‖_{Σ⁻¹}
* ensemble LCB:    r_ens(x, a) = min_k θ̂_kᵀ(φ(x, a) − φ(x, ν)), θ̂_k fitted on the k-th bootstrap resample
  (the ensemble's spread stands in for the confidence width where no Σ is at hand, e.g. neural reward models).

Each policy is the Gibbs policy μ exp(r/τ)/Z of its reward; it is then scored exactly with the true reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nashpref.core.game import DTYPE
from nashpref.theory.bandit import GameShape, LinearBandit, random_bandit
from nashpref.theory.enhancer import uncertainty
from nashpref.theory.mle import LogisticFit, Pairs, fit_bt, sample_pairs


def anchored_features(bandit: LinearBandit, anchor: Tensor) -> Tensor:
    """φ(x, a) − φ(x, ν): (C, N, d)."""
    return bandit.phi - bandit.policy_features(anchor).unsqueeze(1)


def mle_rewards(bandit: LinearBandit, fit: LogisticFit, anchor: Tensor) -> Tensor:
    return anchored_features(bandit, anchor) @ fit.w


def lcb_rewards(bandit: LinearBandit, fit: LogisticFit, anchor: Tensor, beta: float) -> Tensor:
    """θ̂ᵀ(φ − φ_ν) − β‖φ − φ_ν‖_{Σ⁻¹}: (C, N)."""
    z = anchored_features(bandit, anchor)
    return z @ fit.w - beta * uncertainty(torch.linalg.inv(fit.sigma), z)


def bootstrap_fits(bandit: LinearBandit, pairs: Pairs, lam: float, k: int,
                   generator: torch.Generator) -> list[LogisticFit]:
    """K BT fits, each on n pairs drawn with replacement from the n given."""
    n = len(pairs)
    return [fit_bt(bandit, pairs.take(torch.randint(n, (n,), generator=generator)), lam) for _ in range(k)]


def ensemble_rewards(bandit: LinearBandit, fits: list[LogisticFit], anchor: Tensor, aggregate: str = "min",
                     k_std: float = 1.0) -> Tensor:
    """min_k r̂_k, or mean − k_std·std (the unbiased std over the K models), of the anchored rewards: (C, N)."""
    z = anchored_features(bandit, anchor)
    rewards = torch.stack([z @ fit.w for fit in fits])
    if aggregate == "min":
        return rewards.min(0).values
    if aggregate == "mean-std":
        return rewards.mean(0) - k_std * (rewards.std(0) if len(fits) > 1 else torch.zeros_like(rewards[0]))
    raise ValueError(f"unknown aggregation {aggregate!r} (known: min, mean-std)")


def offline_values(bandit: LinearBandit, theta: Tensor, pairs: Pairs, behaviour: Tensor, *, lam: float,
                   beta: float, k: int, generator: torch.Generator) -> dict[str, float]:
    """True values J(π) = E_π r − τ KL(π‖μ) of the greedy-MLE, covariance-LCB and ensemble-min Gibbs policies,
    and the optimum J(π*)."""
    r = bandit.rewards(theta)
    fit = fit_bt(bandit, pairs, lam)
    policies = {
        "mle": bandit.gibbs(mle_rewards(bandit, fit, behaviour)),
        "lcb": bandit.gibbs(lcb_rewards(bandit, fit, behaviour, beta)),
        "ensemble": bandit.gibbs(ensemble_rewards(bandit, bootstrap_fits(bandit, pairs, lam, k, generator),
                                                  behaviour)),
    }
    return {name: bandit.value(pi, r).item() for name, pi in policies.items()} | {
        "optimal": bandit.optimal_value(r).item()}


# ---- the experiment: offline data from a narrow behaviour policy --------------------------------------------------
@dataclass(frozen=True)
class OfflineSpec(GameShape):
    """Each seed's instance: φ ~ N(0, I/d), μ uniform, θ ~ truth_scale·N(0, I), and a behaviour policy
    ν = softmax(skill·z(r) + noise·N(0, 1)) (z: the rewards standardised) that leans towards good actions and
    covers few: the usual offline RLHF data, drawn from a decent but narrow model. ``pairs`` comparisons
    (x uniform, a, b ~ ν)."""

    tau: float = 0.02
    """KL strength τ > 0."""
    truth_scale: float = 1.0
    """θ ~ truth_scale · N(0, I)."""
    skill: float = 2.0
    """How strongly the behaviour policy follows the true reward."""
    noise: float = 1.0
    """Noise in the behaviour policy's logits."""
    pairs: int = 30
    """Offline comparisons."""


def make_offline(spec: OfflineSpec, seed: int) -> tuple[LinearBandit, Tensor, Tensor, Pairs]:
    """(bandit, θ, ν, pairs) for one seed."""
    g = torch.Generator().manual_seed(seed)
    bandit = random_bandit(spec.contexts, spec.actions, spec.dim, spec.tau, g)
    theta = spec.truth_scale * torch.randn(spec.dim, generator=g, dtype=DTYPE)
    r = bandit.rewards(theta)
    z = (r - r.mean(-1, keepdim=True)) / r.std()
    behaviour = torch.softmax(spec.skill * z + spec.noise * torch.randn(r.shape, generator=g, dtype=DTYPE), -1)
    return bandit, theta, behaviour, sample_pairs(bandit.bt_preference(theta), behaviour, behaviour, spec.pairs, g)


def run_offline_seeds(spec: OfflineSpec, seeds, *, lam: float = 1.0, beta: float = 1.0, k: int = 10,
                      on_run=None) -> list[dict[str, float]]:
    """offline_values for each seed (the bootstrap draws from generator seed 10⁶ + s)."""
    rows = []
    for seed in seeds:
        bandit, theta, behaviour, pairs = make_offline(spec, seed)
        rows.append({"seed": seed} | offline_values(bandit, theta, pairs, behaviour, lam=lam, beta=beta, k=k,
                                                    generator=torch.Generator().manual_seed(1_000_000 + seed)))
        if on_run is not None:
            on_run()
    return rows
