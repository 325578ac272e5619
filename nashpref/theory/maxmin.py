"""Several objectives and user groups.

**Gated reward vectors** (a mixture of experts over objectives; e.g. Wang et al., ArmoRM, arXiv 2406.12845):
r(x, y) = Σ_k g_k(x) r_k(x, y) with g(x) on the simplex. Since Σ_k g_k = 1, Σ_k g_k(x)[E_π r_k − τKL] equals
E_π r − τKL, so the gated policy is Gibbs(μ, r/τ).

**Max-min alignment over user groups** (Chakraborty et al., MaxMin-RLHF, arXiv 2402.08925): U groups with BT
rewards θ_u; each user gives m comparisons, group unknown. EM for the mixture of BT models (E: responsibilities
per user from the sum of her log-likelihoods; M: mixture weights and a weighted logistic fit per group), then

    max_π min_u J_u(π),   J_u(π) = mean_x [E_π r_u(x, ·) − τ KL(π(x)‖μ(x))].

By the minimax theorem (J_u concave in π, linear in the group weights) this equals min_{w ∈ Δ_U} D(w) with
D(w) = max_π Σ_u w_u J_u(π) = mean_x τ log Σ_y μ(y) exp(Σ_u w_u r_u(x, y)/τ), convex and smooth; its maximiser is
π_w = Gibbs(μ, Σ_u w_u r_u/τ). D(w*) − min_u J_u(π_w*) is an exact certificate of optimality. At τ = 0 the problem
is the linear program max t s.t. mean_x π_x·r_u(x) ≥ t ∀u, π_x ∈ Δ, which scipy's HiGHS solves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog, minimize
from torch import Tensor

from nashpref.core.game import DTYPE
from nashpref.theory.bandit import LinearBandit
from nashpref.theory.mle import Pairs, bt_features, fit_logistic


def gated_rewards(rewards: Tensor, gates: Tensor) -> Tensor:
    """Σ_k g_k(x) r_k(x, y): rewards (K, C, N), gates (C, K) on the simplex → (C, N)."""
    return torch.einsum("kcn,ck->cn", rewards, gates)


# ---- max-min over groups ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaxMin:
    policy: Tensor      # (C, N)
    weights: Tensor     # (U,) the minimising group weights w*
    value: float        # min_u J_u(policy)
    certificate: float  # D(w*) − min_u J_u(policy) ≥ 0


def group_values(bandit: LinearBandit, rewards: Tensor, pi: Tensor, tau: float) -> Tensor:
    """J_u(π) for each group: (U,)."""
    kl = bandit.kl(pi) if tau > 0 else torch.zeros(pi.shape[0], dtype=DTYPE)
    return ((pi.unsqueeze(0) * rewards).sum(-1) - tau * kl).mean(-1)


def maxmin_policy(bandit: LinearBandit, rewards: Tensor) -> MaxMin:
    """max_π min_u J_u(π) at the bandit's τ > 0, through the convex dual over group weights (see module doc)."""
    tau, log_mu = bandit.tau, torch.log(bandit.mu)
    U = rewards.shape[0]

    def dual(v: np.ndarray):
        w = torch.as_tensor(v, dtype=DTYPE)
        scores = log_mu + torch.einsum("u,ucn->cn", w, rewards) / tau
        pi = torch.softmax(scores, -1)
        value = (tau * torch.logsumexp(scores, -1)).mean()
        return value.item(), (pi.unsqueeze(0) * rewards).sum(-1).mean(-1).numpy()    # ∇_w D = E_{π_w} r_u

    res = minimize(dual, np.full(U, 1.0 / U), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * U,
                   constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1.0, "jac": lambda v: np.ones(U)}],
                   options={"ftol": 1e-15, "maxiter": 500})
    w = torch.as_tensor(np.clip(res.x, 0.0, None), dtype=DTYPE)
    w = w / w.sum()
    pi = torch.softmax(log_mu + torch.einsum("u,ucn->cn", w, rewards) / tau, -1)
    value = group_values(bandit, rewards, pi, tau).min().item()
    return MaxMin(policy=pi, weights=w, value=value, certificate=dual(w.numpy())[0] - value)


def maxmin_linear_program(rewards: Tensor) -> tuple[float, Tensor]:
    """τ = 0: (value, policy) of max t s.t. mean_x π_x·r_u(x) ≥ t for every u, π_x ∈ Δ_N (HiGHS)."""
    U, C, N = rewards.shape
    c = np.zeros(C * N + 1)
    c[-1] = -1.0
    A_ub = np.hstack([-rewards.reshape(U, C * N).numpy() / C, np.ones((U, 1))])
    A_eq = np.hstack([np.kron(np.eye(C), np.ones((1, N))), np.zeros((C, 1))])
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(U), A_eq=A_eq, b_eq=np.ones(C),
                  bounds=[(0, None)] * (C * N) + [(None, None)], method="highs")
    if not res.success:
        raise RuntimeError(f"HiGHS failed on the max-min linear program: {res.message}")
    return -res.fun, torch.as_tensor(res.x[:-1].reshape(C, N), dtype=DTYPE)


# ---- EM for a mixture of Bradley-Terry groups ---------------------------------------------------------------------
@dataclass(frozen=True)
class Mixture:
    thetas: Tensor          # (U, d)
    weights: Tensor         # (U,)
    responsibilities: Tensor  # (users, U)
    log_likelihoods: list[float]   # penalised, per EM iteration: non-decreasing


def user_log_likelihoods(Z: Tensor, y: Tensor, user: Tensor, users: int, thetas: Tensor) -> Tensor:
    """Σ over each user's comparisons of log P(y | z, θ_u): (users, U)."""
    s = Z @ thetas.T                                            # (n, U)
    ll = y.unsqueeze(-1) * s - torch.nn.functional.softplus(s)
    return torch.zeros(users, thetas.shape[0], dtype=DTYPE).index_add_(0, user, ll)


def mixture_log_likelihood(Z, y, user, users, thetas, weights, lam: float) -> float:
    """The penalised mixture log-likelihood EM climbs."""
    ll = torch.logsumexp(torch.log(weights) + user_log_likelihoods(Z, y, user, users, thetas), -1).sum().item()
    return ll - 0.5 * lam * thetas.square().sum().item()


def fit_mixture(bandit: LinearBandit, pairs: Pairs, user: Tensor, groups: int, lam: float,
                generator: torch.Generator, iterations: int = 200, restarts: int = 5, tol: float = 1e-10) -> Mixture:
    """EM from random responsibilities (``user`` gives each comparison's user), best of ``restarts`` by the
    penalised mixture log-likelihood Σ_users log Σ_u w_u Π σ(±θ_uᵀz) − (λ/2) Σ_u ‖θ_u‖²."""
    Z, y = bt_features(bandit, pairs), pairs.y
    users = int(user.max()) + 1
    best = None
    for _ in range(restarts):
        resp = _dirichlet(users, groups, generator)
        history: list[float] = []
        thetas = torch.zeros(groups, Z.shape[1], dtype=DTYPE)
        for _ in range(iterations):
            weights = resp.mean(0).clamp_min(1e-300)
            thetas = torch.stack([fit_logistic(Z, y, lam, weights=resp[user, u], start=thetas[u]).w
                                  for u in range(groups)])
            ll = torch.log(weights) + user_log_likelihoods(Z, y, user, users, thetas)
            resp = torch.softmax(ll, -1)
            # EM never decreases the penalised log-likelihood (the M-step maximises it exactly)
            history.append(torch.logsumexp(ll, -1).sum().item() - 0.5 * lam * thetas.square().sum().item())
            if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
                break
        if best is None or history[-1] > best.log_likelihoods[-1]:
            best = Mixture(thetas=thetas, weights=weights, responsibilities=resp, log_likelihoods=history)
    return best


def _dirichlet(rows: int, k: int, generator: torch.Generator) -> Tensor:
    e = -torch.log(torch.rand(rows, k, generator=generator, dtype=DTYPE))    # Exp(1) → Dirichlet(1, …, 1)
    return e / e.sum(-1, keepdim=True)


# ---- the experiment -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupSpec:
    """Each seed's instance: φ ~ N(0, I/d), μ uniform, U groups with θ_u ~ truth_scale·N(0, I) and population
    shares ``shares``; ``users`` users, each of a random group, give ``per_user`` comparisons with a, b ~ μ."""

    contexts: int = 5
    """Contexts C."""
    actions: int = 8
    """Actions N per context."""
    dim: int = 4
    """Feature dimension d."""
    tau: float = 0.1
    """KL strength τ > 0."""
    truth_scale: float = 2.0
    """θ_u ~ truth_scale · N(0, I)."""
    shares: tuple[float, ...] = (0.8, 0.2)
    """Population share of each group (a majority and a minority by default)."""
    users: int = 200
    """Users (each from one group, which the learner does not see)."""
    per_user: int = 10
    """Comparisons per user."""


def make_groups(spec: GroupSpec, seed: int):
    """(bandit, θ (U, d), pairs, user index per comparison, group per user)."""
    from nashpref.theory.bandit import random_bandit
    from nashpref.theory.mle import sample_pairs

    g = torch.Generator().manual_seed(seed)
    bandit = random_bandit(spec.contexts, spec.actions, spec.dim, spec.tau, g)
    thetas = spec.truth_scale * torch.randn(len(spec.shares), spec.dim, generator=g, dtype=DTYPE)
    group = torch.multinomial(torch.tensor(spec.shares, dtype=DTYPE), spec.users, replacement=True, generator=g)
    pairs, users = Pairs.empty(), []
    for i, u in enumerate(group.tolist()):
        pairs = pairs + sample_pairs(bandit.bt_preference(thetas[u]), bandit.mu, bandit.mu, spec.per_user, g)
        users.append(torch.full((spec.per_user,), i, dtype=torch.long))
    return bandit, thetas, pairs, torch.cat(users), group


def anchored(bandit: LinearBandit, thetas: Tensor) -> Tensor:
    """Each group's reward measured from the reference, r_u(x, y) − E_μ r_u(x, ·): (U, C, N). BT fixes rewards
    only up to a per-context constant, so group utilities are compared as gains over μ."""
    r = torch.einsum("cnd,ud->ucn", bandit.phi, thetas)
    return r - (bandit.mu.unsqueeze(0) * r).sum(-1, keepdim=True)


def group_experiment(spec: GroupSpec, seed: int, lam: float = 1.0) -> dict[str, float]:
    """True min-group utility of: the pooled single-reward RLHF policy, the max-min policy of the EM mixture,
    and the true max-min policy (with its certificate)."""
    from nashpref.theory.mle import fit_bt

    bandit, thetas, pairs, user, _ = make_groups(spec, seed)
    truth = anchored(bandit, thetas)
    pooled = bandit.gibbs(anchored(bandit, fit_bt(bandit, pairs, lam).w.unsqueeze(0))[0])
    mixture = fit_mixture(bandit, pairs, user, len(spec.shares), lam, torch.Generator().manual_seed(10**6 + seed))
    learned = maxmin_policy(bandit, anchored(bandit, mixture.thetas)).policy
    best = maxmin_policy(bandit, truth)
    return {"pooled": group_values(bandit, truth, pooled, spec.tau).min().item(),
            "maxmin_em": group_values(bandit, truth, learned, spec.tau).min().item(),
            "maxmin_true": best.value, "certificate": best.certificate}
