"""Exact equilibria of preference games.

τ > 0: the equilibrium is the unique root of  s = P softmax(log μ + s) / τ  (s = Pπ*/τ, the scaled win-rates).
We warm-start with entropy-regularised extragradient (Cen et al. 2021; linear last-iterate convergence) and
finish with damped Newton on that equation. Its Jacobian I − P(diag π − ππᵀ)/τ is never singular: P = ½11ᵀ + A
with A skew, so Jv = 0 gives vᵀDv = vᵀDADv/τ = 0, hence Dv = 0 and then v = 0. Newton converges quadratically,
which is what makes gap ≤ 1e-12 reachable for small τ where extragradient alone needs ~1/τ·log(1/ε) steps.
(Plain fixed-point iteration π ← softmax(log μ + Pπ/τ) is not a contraction for τ < ½ and diverges.)

τ = 0: a linear program (scipy HiGHS). The equilibrium may not be unique; the returned gap certifies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog
from torch import Tensor

from nashpref.game import DTYPE, PreferenceGame


@dataclass
class Equilibrium:
    policy: Tensor          # (C, N)
    gap: Tensor             # (C,) exact duality gap of `policy`
    method: str
    iterations: int         # extragradient + Newton steps (τ > 0) or LP solves (τ = 0)


def extragradient_step(game: PreferenceGame, log_pi: Tensor, eta: float) -> Tensor:
    """π_{t+½} ∝ π_t^(1−ητ) μ^(ητ) exp(η Pπ_t);  π_{t+1} ∝ π_t^(1−ητ) μ^(ητ) exp(η Pπ_{t+½})."""
    half = game.mirror_step(log_pi, game.win_rates(log_pi.exp()), eta)
    return game.mirror_step(log_pi, game.win_rates(half.exp()), eta)


def solve_equilibrium(game: PreferenceGame, tol: float = 1e-12, warm_start_steps: int = 200,
                      max_newton_steps: int = 100) -> Equilibrium:
    """The exact equilibrium of every context of ``game`` at its τ."""
    if game.tau > 0:
        return _solve_regularised(game, tol, warm_start_steps, max_newton_steps)
    return _solve_linear_program(game)


def _solve_regularised(game: PreferenceGame, tol: float, warm_start_steps: int, max_newton_steps: int):
    tau, log_mu, P = game.tau, game.log_mu, game.P
    eta = 1.0 / (tau + 1.0)
    log_pi = game.log_mu.clone()
    for _ in range(warm_start_steps):
        log_pi = extragradient_step(game, log_pi, eta)

    def residual(s: Tensor) -> Tensor:
        pi = torch.softmax(log_mu + s, dim=-1)
        return s - game.win_rates(pi) / tau

    s = game.win_rates(log_pi.exp()) / tau
    r = residual(s)
    eye = torch.eye(game.num_actions, dtype=DTYPE)
    steps = warm_start_steps
    for _ in range(max_newton_steps):
        pi = torch.softmax(log_mu + s, dim=-1)
        if (game.gap(pi) <= tol).all():
            break
        D = torch.diag_embed(pi) - pi.unsqueeze(-1) * pi.unsqueeze(-2)
        J = eye - torch.bmm(P, D) / tau
        delta = torch.linalg.solve(J, -r.unsqueeze(-1)).squeeze(-1)
        # Backtracking per context on the residual norm keeps Newton globally safe.
        norm = r.abs().amax(-1)
        step = torch.ones_like(norm)
        for _ in range(40):
            candidate = s + step.unsqueeze(-1) * delta
            r_new = residual(candidate)
            worse = r_new.abs().amax(-1) > norm * (1 - 1e-4 * step)
            if not worse.any():
                break
            step = torch.where(worse, step / 2, step)
        s, r = candidate, r_new
        steps += 1
    pi = torch.softmax(log_mu + s, dim=-1)
    return Equilibrium(policy=pi, gap=game.gap(pi), method="extragradient+newton", iterations=steps)


def _solve_linear_program(game: PreferenceGame) -> Equilibrium:
    """min v  s.t.  Pπ ≤ v·1, 1ᵀπ = 1, π ≥ 0 — the value is ½ and π is a maximin (equilibrium) strategy."""
    n = game.num_actions
    policies = []
    for P in game.P.numpy():
        c = np.zeros(n + 1)
        c[-1] = 1.0
        A_ub = np.hstack([P, -np.ones((n, 1))])
        A_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
        res = linprog(c, A_ub=A_ub, b_ub=np.zeros(n), A_eq=A_eq, b_eq=[1.0],
                      bounds=[(0, None)] * n + [(None, None)], method="highs")
        if not res.success:  # cannot happen for a valid game; say so loudly if it does
            raise RuntimeError(f"{game.name}: HiGHS failed on the τ=0 linear program: {res.message}")
        pi = np.clip(res.x[:n], 0.0, None)
        policies.append(pi / pi.sum())
    pi = torch.as_tensor(np.stack(policies), dtype=DTYPE)
    return Equilibrium(policy=pi, gap=game.gap(pi), method="linear-program (HiGHS)", iterations=len(policies))
