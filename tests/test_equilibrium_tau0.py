"""τ = 0: the certified interior point solver (nashpref.core.lp) against hand-derived equilibria, scipy's linprog
solving the maximin LP independently, degenerate games, and its HiGHS fallback."""

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

import nashpref.core.lp as lp
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import PreferenceGame
from nashpref.tolerance import tolerance

pytestmark = pytest.mark.numerics

LP = 1e-9          # HiGHS is exact up to its 1e-9-level feasibility tolerances (as in test_equilibrium.py)
CERTIFIED = 1e-12  # solve_equilibrium's tol: the fast path returns nothing with a larger exact gap
FAST = "interior point + exact support (certified)"


def certified_bound(n: int) -> float:
    """What solve_equilibrium certifies: gap ≤ tol, or the rounding of Pπ's n-term sums if that is larger."""
    return max(CERTIFIED, tolerance(torch.float64, length=n))


def game_of(A: np.ndarray) -> PreferenceGame:
    n = A.shape[0]
    return PreferenceGame.create(0.5 + A, np.full(n, 1.0 / n), 0.0)


def solve_rounding(A: np.ndarray, x: np.ndarray) -> float:
    """Rounding bound of the exact finish: a linear solve of the bordered (k+1)×(k+1) system on x's support
    is accurate to about cond · eps (times the system size)."""
    support = np.flatnonzero(x > 0)
    k = len(support)
    K = np.zeros((k + 1, k + 1))
    K[:k, :k] = A[np.ix_(support, support)]
    K[:k, k], K[k, :k] = -1.0, 1.0
    return tolerance(torch.float64, scale=np.linalg.cond(K), length=k + 1)


def maximin_linprog(P: np.ndarray) -> np.ndarray:
    """The row player's maximin strategy, max v s.t. (πᵀP)_j ≥ v for every column j (HiGHS dual simplex): the
    transposed formulation of the one our fallback solves."""
    n = P.shape[0]
    res = linprog(np.r_[np.zeros(n), -1.0], A_ub=np.hstack([-P.T, np.ones((n, 1))]), b_ub=np.zeros(n),
                  A_eq=np.r_[np.ones(n), 0.0][None], b_eq=[1.0], bounds=[(0, None)] * n + [(None, None)],
                  method="highs-ds")
    assert res.success
    assert res.x[-1] == pytest.approx(0.5, abs=LP)       # a symmetric zero-sum game is worth ½
    return res.x[:n]


def rps(a: float, b: float, c: float) -> np.ndarray:
    return np.array([[0.0, -a, b], [a, 0.0, -c], [-b, c, 0.0]]) / 2


# ---- hand-derived ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, c", [(1, 1, 1), (0.2, 0.6, 1.0), (0.9, 0.05, 0.3), (1e-3, 1.0, 1.0)])
def test_rock_paper_scissors_variants(a, b, c):
    # A x = 0 for x ∝ (c, b, a): row 1 is −a·b + b·a = 0, row 2 a·c − c·a = 0, row 3 −b·c + c·b = 0
    A = rps(a, b, c)
    eq = solve_equilibrium(game_of(A))
    expected = np.array([c, b, a]) / (a + b + c)
    assert eq.method == FAST
    np.testing.assert_allclose(eq.policy[0].numpy(), expected, rtol=0, atol=solve_rounding(A, expected))
    assert eq.gap.item() <= certified_bound(3)


def test_partial_support_hand_derived():
    # Rock-paper-scissors plus two actions outside the support: "rock+" beats rock by 0.4 but loses to paper
    # and scissors by 0.3 each, so against (⅓, ⅓, ⅓) it scores (0.4 − 0.6)/3 < 0; "dud" loses to everything.
    A = np.zeros((5, 5))
    A[:3, :3] = rps(1, 1, 1)
    A[3, :3] = [0.4, -0.3, -0.3]
    A[4, :4] = [-0.2, -0.1, -0.3, -0.05]
    A = np.tril(A, -1) - np.tril(A, -1).T        # rows 3 and 4 were filled below the diagonal only
    eq = solve_equilibrium(game_of(A))
    expected = np.array([1, 1, 1, 0, 0]) / 3
    assert eq.method == FAST
    np.testing.assert_allclose(eq.policy[0].numpy(), expected, rtol=0, atol=solve_rounding(A, expected))
    assert (eq.policy[0, 3:] == 0).all()      # exactly off the support, not merely small


# ---- random games against scipy's linprog ---------------------------------------------------------------------------
@pytest.mark.parametrize("n, seed", [(2, 0), (5, 1), (12, 2), (40, 3), (120, 4), (250, 5)])
def test_random_games_agree_with_linprog(random_game, n, seed):
    game = random_game(n, seed=seed, tau=0.0)
    P = game.P[0].numpy()
    eq = solve_equilibrium(game)
    ours = eq.policy[0].numpy()
    theirs = maximin_linprog(P)
    assert eq.method == FAST
    assert eq.gap.item() <= certified_bound(n)
    assert 2 * (P @ theirs).max() - 1 <= LP              # linprog's answer is an equilibrium too...
    # ...and generic random games have exactly one, so the two agree, support included
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=LP)
    assert set(np.flatnonzero(ours > 0)) == set(np.flatnonzero(theirs > LP))
    if n >= 12:
        assert 0 < (ours > 0).sum() < n                   # partial support: roughly half the actions


def test_many_small_random_games_are_certified(random_game):
    game = random_game(9, seed=99, tau=0.0, contexts=60)
    eq = solve_equilibrium(game)
    assert eq.gap.max().item() <= certified_bound(9)
    assert eq.method == FAST
    for c in range(0, 60, 7):   # contexts are solved one by one: the batch gives each context's own answer
        single = solve_equilibrium(PreferenceGame.create(game.P[c], game.mu[c], 0.0))
        np.testing.assert_array_equal(eq.policy[c].numpy(), single.policy[0].numpy())


# ---- degenerate games -----------------------------------------------------------------------------------------------
def test_all_ties_every_policy_is_an_equilibrium():
    eq = solve_equilibrium(PreferenceGame.create(np.full((6, 6), 0.5), np.full(6, 1 / 6), 0.0))
    assert abs(eq.gap.item()) <= tolerance(torch.float64, length=6)       # 2·(½·Σπ) − 1: rounding only
    assert eq.policy.sum().item() == pytest.approx(1.0, abs=tolerance(torch.float64, length=6))


def test_duplicated_action_splits_its_mass():
    # Weighted RPS with scissors duplicated: the equilibria are (c, b, t·a, (1−t)·a)/(a+b+c) for t in [0, 1]
    # (the support system is singular), so only the sum over the copies is determined.
    a, b, c = 0.2, 0.6, 1.0
    A = rps(a, b, c)[np.ix_([0, 1, 2, 2], [0, 1, 2, 2])]
    eq = solve_equilibrium(game_of(A))
    pi = eq.policy[0].numpy()
    assert eq.gap.item() <= LP
    np.testing.assert_allclose([pi[0], pi[1], pi[2] + pi[3]], np.array([c, b, a]) / (a + b + c), rtol=0, atol=LP)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tournaments_with_ties_agree_with_linprog_on_the_value(seed):
    # P ∈ {0, ½, 1}: many ties and, typically, many equilibria; both solvers must guarantee the value ½
    rng = np.random.default_rng(seed)
    n = 30
    upper = np.triu(rng.choice([0.0, 0.5, 1.0], size=(n, n)), 1)
    P = upper + np.tril(1.0 - upper.T, -1) + 0.5 * np.eye(n)
    eq = solve_equilibrium(PreferenceGame.create(P, np.full(n, 1 / n), 0.0))
    theirs = maximin_linprog(P)
    assert eq.gap.item() <= LP
    assert (eq.policy[0].numpy() @ P).min() >= 0.5 - LP       # what π guarantees against every action
    assert (theirs @ P).min() >= 0.5 - LP


# ---- certificate and fallback ---------------------------------------------------------------------------------------
def test_an_uncertified_answer_is_replaced_by_highs(random_game, monkeypatch):
    game = random_game(15, seed=3, tau=0.0)
    monkeypatch.setattr(lp, "symmetric_equilibrium", lambda A, tol, on_step: (np.full(15, 1 / 15), 1))
    eq = solve_equilibrium(game)          # the uniform policy is no equilibrium: its gap is checked and rejected
    assert eq.method == "linear-program (HiGHS)"
    assert eq.gap.item() <= LP
    np.testing.assert_allclose(eq.policy[0].numpy(), maximin_linprog(game.P[0].numpy()), rtol=0, atol=LP)


def test_no_answer_falls_back_to_highs_per_context(random_game, monkeypatch):
    game = random_game(8, seed=4, tau=0.0, contexts=3)
    real = lp.symmetric_equilibrium
    calls = []

    def fail_on_second(A, tol, on_step):
        calls.append(1)
        return None if len(calls) == 2 else real(A, tol, on_step)

    monkeypatch.setattr(lp, "symmetric_equilibrium", fail_on_second)
    eq = solve_equilibrium(game)
    assert eq.method == FAST + "; HiGHS for 1"
    assert eq.gap.max().item() <= LP


def test_progress_reports_every_interior_point_step(random_game):
    steps = []
    eq = solve_equilibrium(random_game(60, seed=6, tau=0.0, contexts=2),
                           on_step=lambda context, iteration, mu: steps.append((context, iteration, mu)))
    assert [s[0] for s in steps] == sorted(s[0] for s in steps) and {s[0] for s in steps} == {0, 1}
    assert len(steps) == eq.iterations
    first = [mu for context, _, mu in steps if context == 0]
    assert first[-1] < first[0]


def test_interior_point_refuses_what_it_cannot_certify():
    # An impossible tolerance: nothing is certified, so None (and the caller uses HiGHS), never a bad point
    A = rps(0.2, 0.6, 1.0)
    assert lp.symmetric_equilibrium(A, -1.0) is None
