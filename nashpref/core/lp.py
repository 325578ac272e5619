"""τ = 0: the symmetric equilibrium of a skew-symmetric game, by an interior point method certified exactly.

With A = P − ½ (skew-symmetric) an equilibrium is a π in the simplex with Aπ ≤ 0, and its gap is 2 max_y (Aπ)(y).
Write L = 11ᵀ − A. Then π solves the linear complementarity problem

    w = Lz − 1 ≥ 0,   z ≥ 0,   zᵀw = 0                                         (LCP)

and conversely: zᵀLz = (1ᵀz)² because zᵀAz = 0, so complementarity gives (1ᵀz)² = 1ᵀz, i.e. 1ᵀz = 1, and then
w = −Az ≥ 0. L is positive semidefinite (xᵀLx = (1ᵀx)² ≥ 0), so the LCP is monotone and a primal-dual interior
point method (Mehrotra predictor-corrector) converges; its Newton matrix L + Z⁻¹W is positive definite, never
singular. A step costs one dense LU of an n×n matrix; three things cut that cost (see ``newton_solver``):

- **eliminating** actions whose z is far below their slack w (off the support on the central path): they leave
  a Schur complement on the other actions only, about half of them near the end;
- **float32** factors, refined against the exact float64 matrix (twice as fast);
- **finishing exactly**: once μ = zᵀw/n is small, the support S = {z + Δz > w + Δw} is read off the affine
  predictor's point and the square system A_SS x_S = v·1, 1ᵀx_S = 1 is solved directly (v = 0 for a skew A); the
  result is accepted only if it is in the simplex and its exact float64 gap 2 max(Ax) over *all* actions is
  ≤ ``tol``. Otherwise the iteration goes on.

The regularised Newton path (equilibrium.py) could also find the support, but each of its steps is an n×n solve
too and it needs more of them. The caller falls back to the HiGHS linear program when nothing is certified
(e.g. degenerate games whose support system is singular and whose interior iterate is not exact enough).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

ELIMINATE_ABOVE = 20.0       # eliminate actions with d = w/z ≥ this · √n (‖A_bb‖₂ ≈ 0.6 √|b| for random A)
MAX_REFINEMENTS = 10
REFINE_TO = 1e-10            # backward error of a refined Newton solve (the finish is exact anyway)
FINISH_BELOW = 1e-9          # try the exact finish once μ is below this
STEP_TO_BOUNDARY = 0.9995    # fraction of the longest feasible step (keeps z, w > 0)
MAX_ITERATIONS = 100
SYMMETRIC_BLOCKS = 4         # the Schur complement's symmetric product in 4×4 blocks: 10/16 of a full GEMM
DIRECT_BELOW = 150           # below this many actions, factor G in float64 directly


def simplex_gap(A: np.ndarray, x: np.ndarray) -> float:
    """2 max_y (Ax)(y): the τ = 0 gap of a point x of the simplex."""
    return 2.0 * float((A @ x).max())


def exact_finish(A: np.ndarray, support: np.ndarray) -> np.ndarray | None:
    """The point of the simplex on ``support`` with (Ax)_S = v (v = 0 for a skew A), or None if singular."""
    k = len(support)
    if k == 0:
        return None
    K = np.empty((k + 1, k + 1))
    K[:k, :k] = A[np.ix_(support, support)]
    K[:k, k] = -1.0
    K[k, :k] = 1.0
    K[k, k] = 0.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    try:
        solution = np.linalg.solve(K, rhs)
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(solution).all():
        return None
    return on_simplex(A.shape[0], support, solution[:k])


def on_simplex(n: int, support: np.ndarray, values: np.ndarray) -> np.ndarray | None:
    x = np.zeros(n)
    x[support] = np.clip(values, 0.0, None)  # rounding may leave −1e-18; the gap check decides
    total = x.sum()
    return x / total if total > 0 else None


def certified(A: np.ndarray, x: np.ndarray | None, tol: float) -> bool:
    return x is not None and simplex_gap(A, x) <= tol


def symmetric_equilibrium(A: np.ndarray, tol: float, on_step: Callable[[int, float], None] | None = None
                          ) -> tuple[np.ndarray, int] | None:
    """A point x of the simplex with exact gap 2 max(Ax) ≤ ``tol`` for skew-symmetric A, and the number of
    interior point iterations; None if none was certified within MAX_ITERATIONS."""
    n = A.shape[0]
    L = 1.0 - A
    A32 = A.astype(np.float32)
    row_norms = np.abs(A).sum(1)
    tried = None                     # the last support whose exact finish failed
    z = np.full(n, 4.0 / n)          # feasible start: w = 4 − 4(A1)/n − 1 ≥ 1 since |A| ≤ ½
    w = L @ z - 1.0
    for iteration in range(1, MAX_ITERATIONS + 1):
        residual = L @ z - 1.0 - w            # rounding only: every step keeps w = Lz − 1 in exact arithmetic
        mu = float(z @ w) / n
        if on_step is not None:
            on_step(iteration, mu)
        if mu < 1e-18:             # nothing left to gain: the iterate's own support, or give up
            x, tried = finish(A, z, w, z, tol, tried)
            return None if x is None else (x, iteration)
        solve = newton_solver(A, A32, row_norms, w / z)
        if solve is None:
            return None

        def direction(target):
            # W Δz + Z Δw = target with Δw = L Δz − residual  ⇒  (L + Z⁻¹W) Δz = (target + Z·residual)/Z
            dz = solve((target + z * residual) / z)
            return dz, L @ dz - residual

        dz, dw = direction(-z * w)
        if mu < FINISH_BELOW:        # the affine predictor's limit point: where z + Δz > w + Δw is the support
            x, tried = finish(A, z + dz, w + dw, z, tol, tried)
            if x is not None:
                return x, iteration
        step = longest_step(z, w, dz, dw)
        mu_affine = float((z + step * dz) @ (w + step * dw)) / n
        sigma = (mu_affine / mu) ** 3
        dz, dw = direction(sigma * mu - z * w - dz * dw)
        step = min(1.0, STEP_TO_BOUNDARY * longest_step(z, w, dz, dw))
        z = z + step * dz
        w = w + step * dw
        if not (np.isfinite(z).all() and np.isfinite(w).all()) or z.min() <= 0 or w.min() <= 0:
            return None
    return None


def newton_solver(A: np.ndarray, A32: np.ndarray, row_norms: np.ndarray, d: np.ndarray
                  ) -> Callable[[np.ndarray], np.ndarray] | None:
    """x ↦ (L + diag d)⁻¹ x with L = 11ᵀ − A: Sherman-Morrison for the rank-one 11ᵀ around solves with
    G = diag d − A, which is never singular (xᵀGx = xᵀ diag(d) x > 0).

    G is solved approximately and refined against the exact G in float64: actions with a huge d (z ≪ w: far off
    the support) are eliminated with their block of G taken as diag d, which leaves a Schur complement on the
    other actions only, and that is factored in float32 (twice as fast), or in float64 if refinement does not
    converge from float32; failing both, G is factored whole in float64. Small games (n ≤ DIRECT_BELOW) skip
    straight to that: there, the calls cost more than the arithmetic."""
    n = len(d)
    big = d >= ELIMINATE_ABOVE * np.sqrt(n)
    u = None
    try:
        # float32 first; float64 where G is too ill-conditioned for it
        for matrix in (A32, A) if n > DIRECT_BELOW else ():
            solve_g = refined(A, row_norms, d, schur_solver(matrix, d, big))
            try:
                u = solve_g(np.ones(n), strict=True)
                break
            except ArithmeticError:
                continue
        if u is None:
            factored = lu_solver(np.diag(d) - A)

            def solve_g(rhs, strict=False):
                return factored(rhs)

            u = solve_g(np.ones(n))
    except (ValueError, RuntimeError, np.linalg.LinAlgError):
        return None
    if not np.isfinite(u).all():
        return None
    denominator = 1.0 + u.sum()

    def solve(rhs):
        y = solve_g(rhs)
        return y - (y.sum() / denominator) * u

    return solve


def schur_solver(A32: np.ndarray, d: np.ndarray, big: np.ndarray):
    """x ↦ the solution of G x = rhs with G_bb replaced by diag d_b (b = ``big``), in the precision of ``A32``
    (A in float32, or A itself): an approximation of G⁻¹ for refinement."""
    d32 = d.astype(A32.dtype)
    if not big.any():
        matrix = -A32
        matrix[np.diag_indices(len(d))] += d32
        return lu_solver(matrix)
    big, small = np.flatnonzero(big), np.flatnonzero(~big)
    # A is skew: G_ba = −A_bs = A_sbᵀ = −G_abᵀ, so the Schur complement G_ss − G_ab D_b⁻¹ G_ba is
    # −A_ss + B D_b⁻¹ Bᵀ with B = A_sb, from one pass over the rows of the small actions (torch's index_select:
    # a third of numpy's fancy-indexing time)
    rows = torch.from_numpy(A32).index_select(0, torch.from_numpy(small))
    B = rows.index_select(1, torch.from_numpy(big))
    d_b = d32[big]
    schur = symmetric_product(B / torch.from_numpy(np.sqrt(d_b)))
    schur -= rows.index_select(1, torch.from_numpy(small))
    schur = schur.numpy()
    schur[np.diag_indices(len(small))] += d32[small]
    solve_schur = lu_solver(schur)
    G_ab, G_ba = -B.numpy(), B.T.numpy()

    def approximate(rhs):
        rhs = rhs.astype(A32.dtype)
        x = np.empty(len(d), dtype=A32.dtype)
        x[small] = solve_schur(rhs[small] - G_ab @ (rhs[big] / d_b))
        x[big] = (rhs[big] - G_ba @ x[small]) / d_b
        return x.astype(np.float64)

    return approximate


def symmetric_product(M: torch.Tensor, blocks: int = SYMMETRIC_BLOCKS) -> torch.Tensor:
    """M Mᵀ from the blocks on and below the diagonal only (a blocked SYRK without scipy.linalg's import):
    (blocks + 1)/(2·blocks) of a full product's arithmetic."""
    edges = [len(M) * i // blocks for i in range(blocks + 1)]
    out = torch.empty(len(M), len(M), dtype=M.dtype)
    for i in range(blocks):
        rows = M[edges[i]:edges[i + 1]]
        for j in range(i + 1):
            block = rows @ M[edges[j]:edges[j + 1]].T
            out[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = block
            if j < i:
                out[edges[j]:edges[j + 1], edges[i]:edges[i + 1]] = block.T
    return out


def lu_solver(matrix: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """rhs ↦ matrix⁻¹ rhs (float64 out) from one LU factorisation in ``matrix``'s precision (torch's LAPACK:
    importing scipy.linalg would cost more than a small game's whole solve)."""
    lu, pivots = torch.linalg.lu_factor(torch.from_numpy(matrix))

    def solve(rhs):
        b = torch.from_numpy(np.ascontiguousarray(rhs, dtype=matrix.dtype)).unsqueeze(-1)
        return torch.linalg.lu_solve(lu, pivots, b).squeeze(-1).numpy().astype(np.float64)

    return solve


def refined(A: np.ndarray, row_norms: np.ndarray, d: np.ndarray, approximate):
    """Iterative refinement of ``approximate`` against G = diag d − A, down to a componentwise backward error
    of REFINE_TO (what float64 can attain however ill-conditioned G is). If it has not got there after
    MAX_REFINEMENTS it raises ArithmeticError (``strict``) or returns what it has: an inexact Newton step, which
    is harmless since the next iteration computes its residual exactly. ``row_norms`` = Σ_j |A_ij|."""

    def solve(rhs, strict=False):
        x = approximate(rhs)
        for _ in range(MAX_REFINEMENTS):
            error = rhs - (d * x - A @ x)
            allowed = REFINE_TO * (np.abs(rhs) + np.abs(d * x) + row_norms * np.abs(x).max())
            if (np.abs(error) <= allowed).all():
                return x
            x += approximate(error)
        if strict:
            raise ArithmeticError("iterative refinement did not converge")
        return x

    return solve


def longest_step(z, w, dz, dw) -> float:
    """The largest α ≤ 1 with z + α dz ≥ 0 and w + α dw ≥ 0."""
    step = 1.0
    for value, change in ((z, dz), (w, dw)):
        falling = change < 0
        if falling.any():
            step = min(step, float((-value[falling] / change[falling]).min()))
    return step


def finish(A: np.ndarray, z: np.ndarray, w: np.ndarray, iterate: np.ndarray, tol: float,
           tried: np.ndarray | None):
    """(The exact solution on the support {z > w}, else ``iterate`` itself, if either is certified, else None;
    the support tried). A support that already failed is not solved again. The loop passes the affine predictor's
    point z + Δz, w + Δw, which reads the support off better than the iterate (on random N = 1000–2000 games
    exactly, one or two iterations earlier)."""
    support = np.flatnonzero(z > w)
    if tried is None or not np.array_equal(support, tried):
        x = exact_finish(A, support)
        if certified(A, x, tol):
            return x, support
    x = on_simplex(A.shape[0], np.arange(A.shape[0]), iterate)
    return (x if certified(A, x, tol) else None), support


def highs_equilibrium(P: np.ndarray, name: str = "game", method: str = "highs-ipm") -> np.ndarray:
    """min v  s.t.  Pπ ≤ v·1, 1ᵀπ = 1, π ≥ 0 by scipy's HiGHS — the value is ½ and π is a maximin strategy."""
    from scipy.optimize import linprog     # 0.9 s to import: only the fallback and the benchmark need it

    n = P.shape[0]
    c = np.zeros(n + 1)
    c[-1] = 1.0
    A_ub = np.hstack([P, -np.ones((n, 1))])
    A_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(n), A_eq=A_eq, b_eq=[1.0], bounds=[(0, None)] * n + [(None, None)],
                  method=method)
    if not res.success:  # cannot happen for a valid game; say so loudly if it does
        raise RuntimeError(f"{name}: HiGHS failed on the τ=0 linear program: {res.message}")
    pi = np.clip(res.x[:n], 0.0, None)
    return pi / pi.sum()
