"""The enhancer: the policy that maximises the uncertainty about its comparison with the main policy, within a KL
budget of it (Xiong et al., arXiv 2312.11456, Algorithm 2; Ye et al., arXiv 2402.07314, for general preferences).

For both preference models the expected pair feature of (π1, π) is affine in π:  w(π) = Gᵀπ + g  per context
(BT: w = φ(x, π1) − φ(x, π); bilinear: w_ij = φ(π1)_i φ(π)_j − φ(π1)_j φ(π)_i). We solve, per context,

    max_π ‖Gᵀπ + g‖_{Σ⁻¹}   subject to   KL(π‖π1) ≤ ε.

The norm is convex, so this maximises a convex function: no convex solver applies. Write the norm as its dual,
‖w‖_{Σ⁻¹} = max_{vᵀΣv ≤ 1} vᵀw. For a fixed v the inner problem is linear in π, and its solution on the KL ball is
the exponential tilt π ∝ π1 exp(β·Gv) with β ≥ 0 set so that KL = ε (or β = 0 if Gv is constant). For a fixed π
the best v is Σ⁻¹w/‖w‖_{Σ⁻¹}. Alternating the two never decreases the objective; we start from ±each eigenvector
of Σ (2D starts) and keep the best. (The global optimum is max_v of the tilt's value, so a check over a fine grid
of v bounds it from below — the test does that.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from nashpref.core.game import DTYPE, kl_divergence
from nashpref.theory.bandit import LinearBandit
from nashpref.theory.mle import bilinear_pair_features

BISECTION_STEPS = 200
ALTERNATIONS = 50


def kl_tilt(log_base: Tensor, scores: Tensor, budget: float) -> Tensor:
    """Per row: the π ∝ base·exp(β·scores), β ≥ 0 largest with KL(π‖base) ≤ budget (β = ∞: the argmax set).

    KL of the tilt increases with β, so β is found by bisection on log β; rows whose budget exceeds the KL of
    the limit (all mass on the argmax of scores) take that limit.
    """
    base = log_base.exp()
    centred = scores - scores.amax(-1, keepdim=True)
    top = centred >= -1e-12 * scores.abs().amax(-1, keepdim=True).clamp_min(1.0)
    limit = torch.where(top, base, torch.zeros_like(base))
    limit = limit / limit.sum(-1, keepdim=True)
    saturated = kl_divergence(limit, base) <= budget

    def tilt(beta: Tensor) -> Tensor:
        return torch.softmax(log_base + beta.unsqueeze(-1) * centred, dim=-1)

    lo = torch.full(scores.shape[:-1], -30.0, dtype=DTYPE)    # log β
    hi = torch.full(scores.shape[:-1], 30.0, dtype=DTYPE)
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        over = kl_divergence(tilt(mid.exp()), base) > budget
        hi = torch.where(over, mid, hi)
        lo = torch.where(over, lo, mid)
        if ((hi - lo) <= 1e-11).all():
            break
    pi = tilt(lo.exp())
    return torch.where(saturated.unsqueeze(-1), limit, pi)


def uncertainty(sigma_inv: Tensor, w: Tensor) -> Tensor:
    """‖w‖_{Σ⁻¹} over the last axis."""
    return torch.einsum("...i,ij,...j->...", w, sigma_inv, w).clamp_min(0).sqrt()


def affine_map(bandit: LinearBandit, main: Tensor, model: str) -> tuple[Tensor, Tensor]:
    """(G, g) with w(π) = Gᵀπ + g per context: G (C, N, D), g (C, D)."""
    phi1 = bandit.policy_features(main)
    if model == "bt":
        return -bandit.phi, phi1
    if model == "skew":
        G = bilinear_pair_features(phi1.unsqueeze(1).expand_as(bandit.phi), bandit.phi)
        return G, torch.zeros(G.shape[0], G.shape[-1], dtype=DTYPE)
    raise ValueError(f"unknown preference model {model!r} (known: bt, skew)")


def enhancer(bandit: LinearBandit, main: Tensor, sigma: Tensor, budget: float, model: str = "bt") -> Tensor:
    """argmax_π ‖w(π)‖_{Σ⁻¹} s.t. KL(π‖main) ≤ budget, per context (see the module doc): (C, N)."""
    G, g = affine_map(bandit, main, model)
    sigma_inv = torch.linalg.inv(sigma)
    log_main = torch.log(main.clamp_min(torch.finfo(DTYPE).tiny))
    _, vecs = torch.linalg.eigh(sigma)
    # eigenvector e with eᵀΣe = λ: scaled to the dual ball's boundary
    starts = vecs.T / torch.sqrt(torch.einsum("ki,ij,kj->k", vecs.T, sigma, vecs.T)).unsqueeze(-1)
    # all 2D starts at once: (S, C, ·)
    v = torch.cat([starts, -starts]).unsqueeze(1).expand(-1, G.shape[0], -1)
    value = torch.full(v.shape[:2], -1.0, dtype=DTYPE)
    pi = main.expand(v.shape[0], -1, -1)
    for _ in range(ALTERNATIONS):
        candidate = kl_tilt(log_main, torch.einsum("cnd,scd->scn", G, v), budget)
        w = torch.einsum("scn,cnd->scd", candidate, G) + g
        new = uncertainty(sigma_inv, w)
        improved = new > value * (1 + 1e-12)
        if not improved.any():
            break
        pi = torch.where(improved.unsqueeze(-1), candidate, pi)
        value = torch.where(improved, new, value)
        norm = new.clamp_min(torch.finfo(DTYPE).tiny).unsqueeze(-1)
        v = torch.where((improved & (new > 0)).unsqueeze(-1), (w @ sigma_inv) / norm, v)
    best = value.argmax(0)
    chosen = pi[best, torch.arange(G.shape[0])]
    stay = uncertainty(sigma_inv, torch.einsum("cn,cnd->cd", main, G) + g)
    return torch.where((value[best, torch.arange(G.shape[0])] > stay).unsqueeze(-1), chosen, main)


def tilt_value(bandit: LinearBandit, main: Tensor, sigma: Tensor, budget: float, v: Tensor,
               model: str = "bt") -> Tensor:
    """‖w(π_v)‖_{Σ⁻¹} for the tilts π_v of directions v (K, D): feasible points, so lower bounds on the optimum;
    (K, C)."""
    G, g = affine_map(bandit, main, model)
    pi = kl_tilt(torch.log(main), torch.einsum("cnd,kd->kcn", G, v), budget)
    return uncertainty(torch.linalg.inv(sigma), torch.einsum("kcn,cnd->kcd", pi, G) + g)
