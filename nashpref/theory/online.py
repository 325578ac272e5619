"""Online iterative RLHF with exploration (Xiong et al., arXiv 2312.11456, Algorithm 2, for Bradley-Terry; Ye et al.,
arXiv 2402.07314, for general preferences), run exactly on a linear contextual bandit.

Each round t:
1. fit the preference model to all pairs so far (ridge MLE, design covariance Σ_t);
2. main policy π¹_t = the oracle for the estimate: Gibbs(μ, θ̂ᵀφ/τ) under BT, the τ-regularised equilibrium of the
   estimated game σ(φᵀÂφ) under the general model;
3. second policy π²_t (the ``strategy``):
   - ``explore``: the enhancer, argmax ‖E_{π¹,π} z‖_{Σ⁻¹} within KL(π‖π¹) ≤ budget (``nashpref.theory.enhancer``);
   - ``greedy``: π¹ itself — no exploration, the iterative-DPO recipe (both responses from the main policy);
   - ``passive``: μ against μ — no exploration and no adaptation (the offline design, collected in rounds);
4. draw m comparisons x ~ uniform, a ~ π¹(x), b ~ π²(x), y ~ Bernoulli(P*(a ≻ b | x)); append.

After each round the main policy of the refitted model is scored exactly against the truth: the suboptimality
J(π*) − J(π) of the KL-regularised objective (BT), or the duality gap of the true τ-game (general model).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import DTYPE
from nashpref.theory.bandit import GameShape, LinearBandit, random_bandit, random_skew
from nashpref.theory.enhancer import enhancer
from nashpref.theory.mle import LogisticFit, Pairs, fit_bt, fit_skew, sample_pairs, skew_from_vector

Model = Literal["bt", "skew"]
Strategy = Literal["explore", "greedy", "passive"]
STRATEGIES: tuple[str, ...] = ("explore", "greedy", "passive")
LABELS = {"explore": "explore (main vs enhancer)", "greedy": "greedy = iterative DPO (main vs main)",
          "passive": "passive = no exploration (μ vs μ)"}


@dataclass(frozen=True)
class OnlineConfig:
    model: Model = "bt"
    strategy: Strategy = "explore"
    rounds: int = 10
    pairs_per_round: int = 64
    lam: float = 1.0
    budget: float = 2.0


def fit_model(bandit: LinearBandit, pairs: Pairs, model: Model, lam: float) -> LogisticFit:
    return (fit_bt if model == "bt" else fit_skew)(bandit, pairs, lam)


def main_policy(bandit: LinearBandit, fit: LogisticFit, model: Model) -> Tensor:
    """The oracle for the estimate: Gibbs(μ, θ̂ᵀφ/τ) (BT) or the equilibrium of the estimated τ-game (general)."""
    if model == "bt":
        return bandit.gibbs(bandit.rewards(fit.w))
    A = skew_from_vector(fit.w, bandit.dim)
    return solve_equilibrium(bandit.game(bandit.skew_preference(A))).policy


def true_preference(bandit: LinearBandit, truth: Tensor, model: Model) -> Tensor:
    """truth is θ (BT) or the skew A (general)."""
    return bandit.bt_preference(truth) if model == "bt" else bandit.skew_preference(truth)


def score(bandit: LinearBandit, truth: Tensor, model: Model, pi: Tensor) -> float:
    """BT: J(π*) − J(π) for r = θᵀφ; general: mean over contexts of the exact duality gap of the true τ-game."""
    if model == "bt":
        return bandit.suboptimality(pi, bandit.rewards(truth)).item()
    return bandit.game(bandit.skew_preference(truth)).gap(pi).mean().item()


def run_online(bandit: LinearBandit, truth: Tensor, config: OnlineConfig, generator: torch.Generator) -> list[dict]:
    """Rows for rounds 0 (no data: the main policy is μ) to ``config.rounds``: pairs so far and the exact score."""
    P = true_preference(bandit, truth, config.model)
    pairs = Pairs.empty()
    fit = fit_model(bandit, pairs, config.model, config.lam)
    main = main_policy(bandit, fit, config.model)
    rows = [{"round": 0, "pairs": 0, "score": score(bandit, truth, config.model, main)}]
    for t in range(1, config.rounds + 1):
        if config.strategy == "explore":
            first, second = main, enhancer(bandit, main, fit.sigma, config.budget, config.model)
        elif config.strategy == "greedy":
            first, second = main, main
        elif config.strategy == "passive":
            first, second = bandit.mu, bandit.mu
        else:
            raise ValueError(f"unknown strategy {config.strategy!r} (known: {', '.join(STRATEGIES)})")
        pairs = pairs + sample_pairs(P, first, second, config.pairs_per_round, generator)
        fit = fit_model(bandit, pairs, config.model, config.lam)
        main = main_policy(bandit, fit, config.model)
        rows.append({"round": t, "pairs": len(pairs), "score": score(bandit, truth, config.model, main)})
    return rows


# ---- the experiment: random linear games, many seeds ------------------------------------------------------------
@dataclass(frozen=True)
class InstanceSpec(GameShape):
    """How each seed's game is drawn: φ ~ N(0, I/d), μ = softmax(reference_scale·N(0, 1)) (a large scale gives a
    reference that covers a few actions only), truth θ ~ truth_scale·N(0, I) or A = truth_scale·(G − Gᵀ)/√2."""

    tau: float = 0.05
    """KL strength τ > 0."""
    reference_scale: float = 3.0
    """μ = softmax(reference_scale · N(0, 1)): larger covers fewer actions."""
    truth_scale: float = 3.0
    """Size of the true θ or A."""


def make_instance(spec: InstanceSpec, model: Model, seed: int) -> tuple[LinearBandit, Tensor]:
    g = torch.Generator().manual_seed(seed)
    bandit = random_bandit(spec.contexts, spec.actions, spec.dim, spec.tau, g, spec.reference_scale)
    if model == "bt":
        return bandit, spec.truth_scale * torch.randn(spec.dim, generator=g, dtype=DTYPE)
    return bandit, random_skew(spec.dim, spec.truth_scale, g)


def run_seeds(spec: InstanceSpec, config: OnlineConfig, strategies, seeds, on_run=None) -> dict[str, list[list[float]]]:
    """scores[strategy][seed_index][round]: seed s draws game s and, for every strategy, the same data seed
    10⁶ + s, so strategies are compared on the same games (paired)."""
    scores: dict[str, list[list[float]]] = {s: [] for s in strategies}
    for seed in seeds:
        bandit, truth = make_instance(spec, config.model, seed)
        for strategy in strategies:
            rows = run_online(bandit, truth, replace(config, strategy=strategy),
                              torch.Generator().manual_seed(1_000_000 + seed))
            scores[strategy].append([r["score"] for r in rows])
            if on_run is not None:
                on_run()
    return scores
