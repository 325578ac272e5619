"""Preference models fitted by maximum likelihood on labelled pairs, with the design covariance for confidence bounds.

Both models are logistic regressions on a pair feature z(x, a, b) with P(a ≻ b | x) = σ(wᵀz):

* linear Bradley-Terry (Xiong et al., arXiv 2312.11456, §2):  z = φ(x, a) − φ(x, b),  w = θ ∈ R^d;
* skew-symmetric bilinear (Ye et al., arXiv 2402.07314):  φ_aᵀAφ_b = Σ_{i<j} A_ij (φ_a,i φ_b,j − φ_a,j φ_b,i),
  so z_ij = φ_a,i φ_b,j − φ_a,j φ_b,i and w = (A_ij)_{i<j} ∈ R^{d(d−1)/2}.

The ridge MLE  ŵ = argmin Σ_k [log(1 + e^{wᵀz_k}) − y_k wᵀz_k] + (λ/2)‖w‖²  is strictly convex; damped Newton
solves it to the gradient's rounding floor. The design covariance Σ = λI + Σ_k z_k z_kᵀ gives the confidence
radius ‖z‖_{Σ⁻¹} used by exploration and pessimism (Zhu et al., arXiv 2301.11270; Xiong et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nashpref.core.game import DTYPE
from nashpref.theory.bandit import LinearBandit


@dataclass(frozen=True)
class Pairs:
    """Labelled comparisons: context x, first action a, second action b, label y = 1 if a won."""

    x: Tensor   # (n,) long
    a: Tensor   # (n,) long
    b: Tensor   # (n,) long
    y: Tensor   # (n,) float64 in {0, 1} (or a probability)

    def __len__(self) -> int:
        return self.x.shape[0]

    @staticmethod
    def empty() -> "Pairs":
        idx = torch.zeros(0, dtype=torch.long)
        return Pairs(idx, idx, idx, torch.zeros(0, dtype=DTYPE))

    def __add__(self, other: "Pairs") -> "Pairs":
        return Pairs(*(torch.cat([u, v]) for u, v in zip((self.x, self.a, self.b, self.y),
                                                         (other.x, other.a, other.b, other.y))))

    def take(self, index: Tensor) -> "Pairs":
        return Pairs(self.x[index], self.a[index], self.b[index], self.y[index])


def sample_pairs(P: Tensor, pi1: Tensor, pi2: Tensor, n: int, generator: torch.Generator) -> Pairs:
    """n comparisons: x uniform over contexts, a ~ π1(x), b ~ π2(x), y ~ Bernoulli(P[x, a, b])."""
    C = P.shape[0]
    x = torch.randint(C, (n,), generator=generator)
    a = torch.multinomial(pi1[x], 1, generator=generator).squeeze(-1)
    b = torch.multinomial(pi2[x], 1, generator=generator).squeeze(-1)
    y = (torch.rand(n, generator=generator, dtype=DTYPE) < P[x, a, b]).to(DTYPE)
    return Pairs(x, a, b, y)


# ---- pair features ----------------------------------------------------------------------------------------------
def skew_index(dim: int) -> tuple[Tensor, Tensor]:
    """The (i, j), i < j, that parametrise a skew-symmetric d×d matrix, in row-major order."""
    return torch.triu_indices(dim, dim, offset=1).unbind(0)


def skew_from_vector(w: Tensor, dim: int) -> Tensor:
    i, j = skew_index(dim)
    A = torch.zeros(dim, dim, dtype=DTYPE)
    A[i, j] = w
    return A - A.T


def skew_to_vector(A: Tensor) -> Tensor:
    i, j = skew_index(A.shape[0])
    return A[i, j]


def bilinear_pair_features(u: Tensor, v: Tensor) -> Tensor:
    """z_ij = u_i v_j − u_j v_i for i < j (the last axis): wᵀz = uᵀ A(w) v."""
    i, j = skew_index(u.shape[-1])
    return u[..., i] * v[..., j] - u[..., j] * v[..., i]


def bt_features(bandit: LinearBandit, pairs: Pairs) -> Tensor:
    return bandit.phi[pairs.x, pairs.a] - bandit.phi[pairs.x, pairs.b]


def skew_features(bandit: LinearBandit, pairs: Pairs) -> Tensor:
    return bilinear_pair_features(bandit.phi[pairs.x, pairs.a], bandit.phi[pairs.x, pairs.b])


# ---- the fit ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogisticFit:
    w: Tensor           # (D,) the ridge MLE
    sigma: Tensor       # (D, D) design covariance λI + Σ z zᵀ
    steps: int          # Newton steps taken
    grad_norm: float    # ‖∇‖∞ of the penalised objective at w


def fit_logistic(Z: Tensor, y: Tensor, lam: float, max_steps: int = 100, weights: Tensor | None = None,
                 start: Tensor | None = None) -> LogisticFit:
    """Ridge logistic MLE by damped Newton (Armijo backtracking on the objective); stops at the rounding floor.
    ``weights`` γ_k ≥ 0 weight each comparison's log-likelihood (EM's M-step); Σ then sums γ_k z_k z_kᵀ."""
    n, D = Z.shape
    gamma = torch.ones(n, dtype=DTYPE) if weights is None else weights
    if not lam > 0:
        raise ValueError(f"the ridge λ must be > 0 (Σ must be invertible), got {lam!r}")
    eye = torch.eye(D, dtype=DTYPE)

    def loss(w: Tensor) -> Tensor:
        s = Z @ w
        return (gamma * (torch.nn.functional.softplus(s) - y * s)).sum() + 0.5 * lam * w @ w

    w = torch.zeros(D, dtype=DTYPE) if start is None else start.clone()
    f = loss(w)
    # the floor: each of the n terms of the gradient carries ~eps·‖z‖ of rounding
    scale = float((gamma.unsqueeze(-1) * Z.abs()).sum(0).max()) if n else 1.0
    floor = 16 * torch.finfo(DTYPE).eps * max(1.0, scale)
    grad = torch.zeros(D, dtype=DTYPE)
    steps = 0
    for steps in range(max_steps):
        p = torch.sigmoid(Z @ w)
        grad = Z.T @ (gamma * (p - y)) + lam * w
        if grad.abs().max() <= floor:
            break
        H = (Z * (gamma * p * (1 - p)).unsqueeze(-1)).T @ Z + lam * eye
        delta = torch.linalg.solve(H, -grad)
        slope = grad @ delta
        t = 1.0
        while True:
            candidate = loss(w + t * delta)
            if candidate <= f + 1e-4 * t * slope or t < 1e-12:
                break
            t /= 2
        if candidate >= f and t < 1e-12:    # no descent left at this precision
            break
        w, f = w + t * delta, candidate
    sigma = lam * eye + (Z * gamma.unsqueeze(-1)).T @ Z
    return LogisticFit(w=w, sigma=sigma, steps=steps, grad_norm=float(grad.abs().max()))


def fit_bt(bandit: LinearBandit, pairs: Pairs, lam: float) -> LogisticFit:
    """Linear BT: ŵ = θ̂ ∈ R^d."""
    return fit_logistic(bt_features(bandit, pairs), pairs.y, lam)


def fit_skew(bandit: LinearBandit, pairs: Pairs, lam: float) -> LogisticFit:
    """Skew bilinear: ŵ = (Â_ij)_{i<j}; skew_from_vector(ŵ, d) is Â."""
    return fit_logistic(skew_features(bandit, pairs), pairs.y, lam)


def fisher_information(Z: Tensor, p: Tensor, weights: Tensor) -> Tensor:
    """Per-comparison Fisher information E[σ'(wᵀz) z zᵀ] of a design that draws z_k with probability weights_k."""
    return (Z * (weights * p * (1 - p)).unsqueeze(-1)).T @ Z
