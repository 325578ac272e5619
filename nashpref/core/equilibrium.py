"""Exact equilibria of preference games.

τ > 0: the equilibrium is the unique root of  s = P softmax(log μ + s) / τ  (s = Pπ*/τ, the scaled win-rates).
We warm-start with entropy-regularised extragradient (Cen et al. 2021; linear last-iterate convergence) at
τ₀ = max(τ, 0.1) and follow the equilibrium path down to τ by damped Newton on that equation (continuation).
Its Jacobian I − P(diag π − ππᵀ)/τ is never singular: P = ½11ᵀ + A with A skew, so Jv = 0 gives
vᵀDv = vᵀDADv/τ = 0, hence Dv = 0 and then v = 0. Newton converges quadratically, which is what makes
gap ≤ 1e-12 reachable for small τ where extragradient alone needs ~1/τ·log(1/ε) steps.
(Plain fixed-point iteration π ← softmax(log μ + Pπ/τ) is not a contraction for τ < ½ and diverges.)

τ = 0: the game is symmetric zero-sum, and nashpref.core.lp finds a π with Aπ ≤ 0 (A = P − ½) by an interior
point method finished exactly on the support it identifies; the result is returned only if its exact float64 gap
is ≤ tol (or the rounding bound of an n-term sum, if larger). Otherwise (degenerate games) the linear program
is solved by scipy's HiGHS. The equilibrium may not be unique; the returned gap certifies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from nashpref.core.game import DTYPE, PreferenceGame
from nashpref.tolerance import tolerance


@dataclass
class Equilibrium:
    policy: Tensor          # (C, N)
    gap: Tensor             # (C,) exact duality gap of `policy`
    method: str
    iterations: int         # extragradient + Newton steps (τ > 0); interior point steps or LP solves (τ = 0)


def extragradient_step(game: PreferenceGame, log_pi: Tensor, eta: float) -> Tensor:
    """π_{t+½} ∝ π_t^(1−ητ) μ^(ητ) exp(η Pπ_t);  π_{t+1} ∝ π_t^(1−ητ) μ^(ητ) exp(η Pπ_{t+½})."""
    half = game.mirror_step(log_pi, game.win_rates(log_pi.exp()), eta)
    return game.mirror_step(log_pi, game.win_rates(half.exp()), eta)


def solve_equilibrium(game: PreferenceGame, tol: float = 1e-12, warm_start_steps: int = 10,
                      max_newton_steps: int = 100, residual_tol: float = 1e-14,
                      on_step: Callable[[int, int, float], None] | None = None) -> Equilibrium:
    """The exact equilibrium of every context of ``game`` at its τ.

    τ > 0 stops when gap ≤ ``tol`` *and* the fixed-point residual max_y |τ s(y) − (Pπ)(y)| ≤ ``residual_tol``
    (or Newton can no longer reduce it): the gap is quadratic in the error of π, so gap ≈ 1e-16 alone still
    allows errors of ~1e-8 in π. τ = 0 returns a policy whose exact gap is ≤ ``tol`` unless HiGHS had to be used;
    ``on_step(context, iteration, μ)`` is called at every interior point step (for a progress bar).
    """
    if game.tau > 0:
        return _solve_regularised(game, tol, warm_start_steps, max_newton_steps, residual_tol)
    return _solve_unregularised(game, tol, on_step)


CONTINUATION_START = 0.1    # extragradient contracts by 1 − τ/(τ+1) per step: fast down to here
CONTINUATION_FACTOR = 0.5   # τ shrinks by this much per continuation stage


def _solve_regularised(game: PreferenceGame, tol: float, warm_start_steps: int, max_newton_steps: int,
                       residual_tol: float):
    """Extragradient at τ₀ = max(τ, 0.1), then Newton along τ₀, τ₀/2, …, τ.

    Started far from the solution, damped Newton at small τ can stall where the softmax saturates (seen: 9 of
    200 random N=10 games at τ = 1e-3 ended with gap ≈ 0.5). The win-rates Pπ*_τ move smoothly with τ, so
    carrying them from one stage to the next starts every Newton solve close to its root.
    """
    tau = game.tau
    stage_tau = max(tau, CONTINUATION_START)
    stage = game.with_tau(stage_tau)
    eta = 1.0 / (stage_tau + 1.0)
    log_pi = game.log_mu.clone()
    for _ in range(warm_start_steps):
        log_pi = extragradient_step(stage, log_pi, eta)
    win_rates = game.win_rates(log_pi.exp())
    steps = warm_start_steps
    while True:
        final = stage_tau <= tau
        # intermediate stages only need to land inside the next stage's basin
        s, newton_steps = _newton(stage, win_rates / stage_tau, tol if final else float("inf"),
                                  residual_tol if final else 1e-3, max_newton_steps)
        steps += newton_steps
        if final:
            break
        win_rates = stage_tau * s
        stage_tau = max(tau, stage_tau * CONTINUATION_FACTOR)
        stage = game.with_tau(stage_tau)
    pi = torch.softmax(game.log_mu + s, dim=-1)
    return Equilibrium(policy=pi, gap=game.gap(pi), method="extragradient+newton", iterations=steps)


def _newton(game: PreferenceGame, s: Tensor, tol: float, residual_tol: float, max_steps: int):
    """Damped Newton on r(s) = s − P softmax(log μ + s)/τ from ``s``; returns (s, steps taken)."""
    tau, log_mu, P = game.tau, game.log_mu, game.P

    def residual(s: Tensor) -> Tensor:
        return s - game.win_rates(torch.softmax(log_mu + s, dim=-1)) / tau

    r = residual(s)
    eye = torch.eye(game.num_actions, dtype=DTYPE)
    for step_count in range(max_steps):
        pi = torch.softmax(log_mu + s, dim=-1)
        if ((game.gap(pi) <= tol) & (tau * r.abs().amax(-1) <= residual_tol)).all():
            return s, step_count
        # J = I − P(diag π − ππᵀ)/τ, formed in O(N²) per context: P diag π − (Pπ)πᵀ
        PD = P * pi.unsqueeze(-2) - game.win_rates(pi).unsqueeze(-1) * pi.unsqueeze(-2)
        # One context at a time: torch 2.13's batched LU (MKL) hangs once torch.set_num_threads(>1) has been
        # called ("oneMKL ERROR: Parameter 6 was incorrect on entry to DLASWP"); the unbatched solve does not
        jacobian = eye - PD / tau
        delta = torch.stack([torch.linalg.solve(jacobian[c], -r[c]) for c in range(jacobian.shape[0])])
        # Backtracking per context on ‖r‖²: the Newton step is a descent direction for it (∇ = Jᵀr, so the
        # slope is −‖r‖²), which the max-norm does not guarantee.
        merit = r.square().sum(-1)
        step = torch.ones_like(merit)
        for _ in range(60):
            candidate = s + step.unsqueeze(-1) * delta
            r_new = residual(candidate)
            worse = r_new.square().sum(-1) > merit * (1 - 1e-4 * step)
            if not worse.any():
                break
            step = torch.where(worse, step / 2, step)
        if worse.all():  # at the floating-point floor: no step reduces the residual any more
            return s, step_count
        s, r = candidate, r_new
    return s, max_steps


def _solve_unregularised(game: PreferenceGame, tol: float, on_step) -> Equilibrium:
    """Per context: the certified interior point solution (nashpref.core.lp), else the HiGHS linear program."""
    from nashpref.core.lp import highs_equilibrium, symmetric_equilibrium

    n = game.num_actions
    bound = max(tol, tolerance(DTYPE, length=n))     # Px sums n terms: its rounding alone can reach this
    policies, steps, fallbacks = [], 0, 0
    for c, P in enumerate(game.P.numpy()):
        step = None if on_step is None else (lambda i, mu, c=c: on_step(c, i, mu))
        found = symmetric_equilibrium((P - P.T) / 2, bound, step)   # A = P − ½ up to P + Pᵀ = 1's rounding
        if found is not None and 2.0 * float((P @ found[0]).max()) - 1.0 <= bound:
            policies.append(found[0])
            steps += found[1]
            continue
        policies.append(highs_equilibrium(P, game.name))
        fallbacks += 1
    pi = torch.as_tensor(np.stack(policies), dtype=DTYPE)
    method = "interior point + exact support (certified)"
    if fallbacks:
        method = "linear-program (HiGHS)" if fallbacks == len(policies) else f"{method}; HiGHS for {fallbacks}"
    return Equilibrium(policy=pi, gap=game.gap(pi), method=method, iterations=steps + fallbacks)
