"""The KL-regularised preference game, exact and vectorised over contexts.

A game holds C contexts (prompts) with N actions (responses) each: preference matrices ``P`` of shape (C, N, N)
with ``P[c, i, j] = P(y_i ≻ y_j | x_c)`` and ``P + Pᵀ = 1``, a reference policy ``mu`` of shape (C, N) and a
strength ``tau ≥ 0``. The game is

    max_π min_π'  P(π ≻ π') − τ KL(π‖μ) + τ KL(π'‖μ),

symmetric with value ½; for τ > 0 its equilibrium π* is unique and π* ∝ μ exp(Pπ*/τ).
Policies are (C, N) probability tensors; everything here is float64 and works on whole batches of contexts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import Tensor

from nashpref.checks import number
from nashpref.errors import GameError

DTYPE = torch.float64
COMPLEMENT_TOL = 1e-9
SIMPLEX_TOL = 1e-9


def as_tensor(x, dtype=DTYPE) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(x, dtype=dtype)


def kl_divergence(pi: Tensor, mu: Tensor) -> Tensor:
    """KL(π‖μ) per row, with 0·log 0 = 0."""
    return (torch.xlogy(pi, pi) - torch.xlogy(pi, mu)).sum(-1)


def gibbs(log_mu: Tensor, scores: Tensor, tau: float) -> Tensor:
    """argmax_π E_π[scores] − τ KL(π‖μ) = softmax(log μ + scores/τ)."""
    return torch.softmax(log_mu + scores / tau, dim=-1)


@dataclass(frozen=True)
class PreferenceGame:
    P: Tensor
    mu: Tensor
    tau: float
    name: str = "game"
    actions: tuple[str, ...] | None = None
    description: str = ""

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, P, mu, tau: float, *, name: str = "game", actions=None, description: str = "",
               where: str | None = None) -> "PreferenceGame":
        """Validate and build a game. ``P`` is (N, N) or (C, N, N); ``mu`` is (N,) or (C, N).

        Raises GameError naming ``where`` (default: the game name), the context and the rule broken.
        """
        where = where or name
        P = as_tensor(P)
        mu = as_tensor(mu)
        if P.dim() == 2:
            P = P.unsqueeze(0)
        if P.dim() != 3:
            raise GameError(f"{where}: preference must be an N×N matrix (or C×N×N), got shape {tuple(P.shape)}")
        if mu.dim() == 1:
            mu = mu.unsqueeze(0).expand(P.shape[0], -1)
        validate_tau(tau, where)
        for c in range(P.shape[0]):
            validate_matrix(P[c], context_label(where, c, P.shape[0]))
        if mu.dim() != 2 or mu.shape != P.shape[:2]:
            raise GameError(f"{where}: reference has shape {tuple(mu.shape)}, expected {tuple(P.shape[:2])} "
                            "(one probability per action, per context)")
        for c in range(mu.shape[0]):
            validate_reference(mu[c], context_label(where, c, mu.shape[0]))
        if actions is not None:
            actions = tuple(str(a) for a in actions)
            if len(actions) != P.shape[-1]:
                raise GameError(f"{where}: {len(actions)} action labels for {P.shape[-1]} actions")
        # Renormalise only beyond rounding error: dividing by a sum of 1 ± ulp changes bits, and then
        # create(game.P, game.mu) would not reproduce game.mu (a saved game would not reload exactly).
        total = mu.sum(-1, keepdim=True)
        mu = torch.where((total - 1).abs() > 4 * mu.shape[-1] * torch.finfo(DTYPE).eps, mu / total, mu)
        return cls(P=P.contiguous(), mu=mu.contiguous(), tau=float(tau), name=name, actions=actions,
                   description=description)

    def with_tau(self, tau: float) -> "PreferenceGame":
        validate_tau(tau, self.name)
        return replace(self, tau=float(tau))

    @property
    def num_contexts(self) -> int:
        return self.P.shape[0]

    @property
    def num_actions(self) -> int:
        return self.P.shape[-1]

    @cached_property
    def log_mu(self) -> Tensor:  # cached: every solver step needs it
        return torch.log(self.mu)

    # ---- exact quantities ---------------------------------------------------------------------------------
    def win_rates(self, pi: Tensor) -> Tensor:
        """P(y ≻ π) for every action y: (C, N)."""
        return torch.bmm(self.P, pi.unsqueeze(-1)).squeeze(-1)

    def preference(self, pi: Tensor, pi2: Tensor) -> Tensor:
        """P(π ≻ π') = πᵀ P π' per context: (C,)."""
        return (pi * self.win_rates(pi2)).sum(-1)

    def kl(self, pi: Tensor) -> Tensor:
        """KL(π‖μ) per context: (C,)."""
        return kl_divergence(pi, self.mu)

    def objective(self, pi: Tensor, pi2: Tensor, tau: float | None = None) -> Tensor:
        """f(π, π') = P(π ≻ π') − τ KL(π‖μ) + τ KL(π'‖μ): (C,)."""
        tau = self.tau if tau is None else tau
        return self.preference(pi, pi2) - tau * self.kl(pi) + tau * self.kl(pi2)

    def best_response(self, pi: Tensor, tau: float | None = None) -> Tensor:
        """argmax_p f(p, π): softmax(log μ + Pπ/τ); for τ = 0 a pure best response (first argmax)."""
        tau = self.tau if tau is None else tau
        scores = self.win_rates(pi)
        if tau > 0:
            return gibbs(self.log_mu, scores, tau)
        return torch.nn.functional.one_hot(scores.argmax(-1), self.num_actions).to(DTYPE)

    def gap(self, pi: Tensor, tau: float | None = None) -> Tensor:
        """Exact duality gap max_p f(p, π) − min_p f(π, p) per context: (C,). Zero iff π is the equilibrium.

        τ > 0: 2[τ log Σ_y μ(y) exp(P(y ≻ π)/τ) + τ KL(π‖μ)] − 1;   τ = 0: 2 max_y P(y ≻ π) − 1.
        """
        tau = self.tau if tau is None else tau
        scores = self.win_rates(pi)
        if tau > 0:
            lse = torch.logsumexp(self.log_mu + scores / tau, dim=-1)
            return 2.0 * (tau * lse + tau * self.kl(pi)) - 1.0
        return 2.0 * scores.max(-1).values - 1.0

    def mirror_step(self, log_pi: Tensor, scores: Tensor, eta: float) -> Tensor:
        """log of π' ∝ π^(1−ητ) μ^(ητ) exp(η·scores): the regularised mirror-descent step most solvers share."""
        et = eta * self.tau
        return torch.log_softmax((1.0 - et) * log_pi + et * self.log_mu + eta * scores, dim=-1)

    def uniform(self) -> Tensor:
        return torch.full((self.num_contexts, self.num_actions), 1.0 / self.num_actions, dtype=DTYPE)


# ---- validation ------------------------------------------------------------------------------------------------
def context_label(where: str, c: int, num_contexts: int) -> str:
    return f"{where}: context {c}" if num_contexts > 1 else where


def validate_tau(tau, where: str) -> None:
    number(tau, f"{where}: tau", low_open=False, error=GameError)


def validate_matrix(P: Tensor, where: str) -> None:
    if P.dim() != 2 or P.shape[0] != P.shape[1] or P.shape[0] < 1:
        raise GameError(f"{where}: preference matrix must be square, got shape {tuple(P.shape)}")
    if not torch.isfinite(P).all():
        i, j = (~torch.isfinite(P)).nonzero()[0].tolist()
        raise GameError(f"{where}: preference matrix has a non-finite entry P[{i}][{j}] = {P[i, j].item()}")
    if (P < 0).any() or (P > 1).any():
        i, j = ((P < 0) | (P > 1)).nonzero()[0].tolist()
        raise GameError(f"{where}: preference entries must lie in [0, 1], P[{i}][{j}] = {P[i, j].item():g}")
    err = (P + P.T - 1).abs()
    if (err > COMPLEMENT_TOL).any():
        i, j = (err > COMPLEMENT_TOL).nonzero()[0].tolist()
        raise GameError(f"{where}: preference matrix must satisfy P + Pᵀ = 1: P[{i}][{j}] + P[{j}][{i}] = "
                        f"{(P[i, j] + P[j, i]).item():.12g}")


def validate_reference(mu: Tensor, where: str) -> None:
    if not torch.isfinite(mu).all():
        raise GameError(f"{where}: reference policy has a non-finite entry")
    if (mu <= 0).any():
        i = int((mu <= 0).nonzero()[0])
        raise GameError(f"{where}: reference policy must give every action probability > 0, "
                        f"action {i} has {mu[i].item():g}")
    if abs(mu.sum().item() - 1.0) > SIMPLEX_TOL:
        raise GameError(f"{where}: reference policy must sum to 1, sums to {mu.sum().item():.12g}")
