"""A linear contextual bandit with preferences: features φ(x, a), reference μ, strength τ, and exact values.

Two ground truths are used throughout (Xiong et al., arXiv 2312.11456; Ye et al., arXiv 2402.07314):

* Bradley-Terry with a linear reward r(x, a) = θᵀφ(x, a):  P(a ≻ b | x) = σ(r(x, a) − r(x, b)).
* A general skew-symmetric bilinear preference:  P(a ≻ b | x) = σ(φ(x, a)ᵀ A φ(x, b)) with Aᵀ = −A.
  It is intransitive in general; BT is the special case φ' = (φ, 1), A = [[0, θ], [−θᵀ, 0]].

Everything is float64; policies are (C, N) probability tensors; values are means over the C contexts (uniform ρ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nashpref.core.game import DTYPE, PreferenceGame, as_tensor, gibbs, kl_divergence


def sigmoid_pair(logits: Tensor) -> Tensor:
    """σ(L) as ½(1 + tanh(L/2)): odd around ½, so a skew L gives P + Pᵀ = 1 to rounding."""
    return 0.5 * (1.0 + torch.tanh(logits / 2))


@dataclass(frozen=True)
class GameShape:
    """The size of a random linear game: C contexts of N actions with d-dimensional features."""

    contexts: int = 5
    """Contexts C."""
    actions: int = 8
    """Actions N per context."""
    dim: int = 4
    """Feature dimension d."""


@dataclass(frozen=True)
class LinearBandit:
    phi: Tensor     # (C, N, d)
    mu: Tensor      # (C, N)
    tau: float

    @classmethod
    def create(cls, phi, mu, tau: float) -> "LinearBandit":
        phi, mu = as_tensor(phi), as_tensor(mu)
        if phi.dim() != 3 or mu.shape != phi.shape[:2]:
            raise ValueError(f"features must be (C, N, d) and μ (C, N), got {tuple(phi.shape)}, {tuple(mu.shape)}")
        if (mu <= 0).any() or ((mu.sum(-1) - 1).abs() > 1e-9).any():
            raise ValueError("μ must be a probability vector with every entry > 0, per context")
        if not tau > 0:
            raise ValueError(f"τ must be > 0, got {tau!r}")
        return cls(phi=phi, mu=mu, tau=float(tau))

    @property
    def num_contexts(self) -> int:
        return self.phi.shape[0]

    @property
    def num_actions(self) -> int:
        return self.phi.shape[1]

    @property
    def dim(self) -> int:
        return self.phi.shape[2]

    # ---- truths -----------------------------------------------------------------------------------------------
    def rewards(self, theta: Tensor) -> Tensor:
        """r(x, a) = θᵀφ(x, a): (C, N)."""
        return self.phi @ as_tensor(theta)

    def bt_preference(self, theta: Tensor) -> Tensor:
        """P(a ≻ b | x) = σ(r(x, a) − r(x, b)): (C, N, N)."""
        r = self.rewards(theta)
        return sigmoid_pair(r.unsqueeze(-1) - r.unsqueeze(-2))

    def bilinear_logits(self, A: Tensor) -> Tensor:
        """φ(x, a)ᵀ A φ(x, b): (C, N, N), skew when A is."""
        return self.phi @ as_tensor(A) @ self.phi.transpose(-1, -2)

    def skew_preference(self, A: Tensor) -> Tensor:
        """P(a ≻ b | x) = σ(φ(x, a)ᵀ A φ(x, b)): (C, N, N)."""
        return sigmoid_pair(self.bilinear_logits(A))

    def game(self, P: Tensor, name: str = "bandit") -> PreferenceGame:
        return PreferenceGame.create(P, self.mu, self.tau, name=name)

    # ---- policies and values ----------------------------------------------------------------------------------
    def policy_features(self, pi: Tensor) -> Tensor:
        """φ(x, π) = E_{a~π(x)} φ(x, a): (C, d)."""
        return torch.einsum("cn,cnd->cd", pi, self.phi)

    def gibbs(self, rewards: Tensor) -> Tensor:
        """argmax_π E_π[r] − τ KL(π‖μ) = μ exp(r/τ)/Z, per context."""
        return gibbs(torch.log(self.mu), rewards, self.tau)

    def kl(self, pi: Tensor, reference: Tensor | None = None) -> Tensor:
        return kl_divergence(pi, self.mu if reference is None else reference)

    def value(self, pi: Tensor, rewards: Tensor) -> Tensor:
        """J(π) = mean_x [E_π r(x, ·) − τ KL(π(x)‖μ(x))]."""
        return ((pi * rewards).sum(-1) - self.tau * self.kl(pi)).mean()

    def optimal_value(self, rewards: Tensor) -> Tensor:
        """max_π J(π) = mean_x τ log Σ_a μ(a) exp(r(a)/τ), attained by the Gibbs policy."""
        return (self.tau * torch.logsumexp(torch.log(self.mu) + rewards / self.tau, dim=-1)).mean()

    def suboptimality(self, pi: Tensor, rewards: Tensor) -> Tensor:
        """J(π*) − J(π) ≥ 0, exact; it equals τ·mean_x KL(π‖π*) (the Gibbs variational identity)."""
        return self.optimal_value(rewards) - self.value(pi, rewards)


# ---- random instances -------------------------------------------------------------------------------------------
def random_bandit(contexts: int, actions: int, dim: int, tau: float, generator: torch.Generator,
                  reference_scale: float = 0.0) -> LinearBandit:
    """φ(x, a) ~ N(0, I/d) (so ‖φ‖ ≈ 1); μ = softmax(reference_scale · N(0, 1)) per context."""
    phi = torch.randn(contexts, actions, dim, generator=generator, dtype=DTYPE) / dim ** 0.5
    logits = reference_scale * torch.randn(contexts, actions, generator=generator, dtype=DTYPE)
    return LinearBandit.create(phi, torch.softmax(logits, -1), tau)


def random_skew(dim: int, scale: float, generator: torch.Generator) -> Tensor:
    """A = scale·(G − Gᵀ)/√2 with G ~ N(0, 1)^{d×d}: a random skew-symmetric matrix."""
    G = torch.randn(dim, dim, generator=generator, dtype=DTYPE)
    return scale * (G - G.T) / 2 ** 0.5
