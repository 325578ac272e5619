"""Exact equilibria against closed forms, an independent convex minimisation, nashpy, and the shipped games' claims."""

import warnings

import nashpy
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import PreferenceGame
from nashpref.core.gamefile import load_game
from nashpref.tolerance import tolerance

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

# Most bounds here are accuracy targets of the solvers, not rounding (which nashpref.tolerance covers):
NEWTON_GAP = 1e-12     # solve_equilibrium's stopping rule for τ > 0: gap ≤ tol = 1e-12
RESIDUAL = 1e-10       # ‖π − softmax(log μ + Pπ/τ)‖₁ left by its residual_tol (1e-14 on τ·s), recomputed in numpy
LP = 1e-9              # τ = 0: the linear program (HiGHS) and nashpy's pivoting are exact up to their 1e-9-level
                       # feasibility tolerances
PUBLISHED = 1e-6       # values recalled with 6 digits (truncated, not rounded)


def gibbs_tolerance(tau: float, n: int) -> float:
    """Rounding of a Newton fixed point π ∝ μ exp(s): s = Pπ/τ sums n terms of size ≤ 1/τ (float64)."""
    return tolerance(torch.float64, scale=1 / tau, length=n)


def weighted_rps(a, b, c):
    A = np.array([[0.0, -a, b], [a, 0.0, -c], [-b, c, 0.0]])
    return 0.5 + A / 2


def gap_np(P, mu, tau, pi):
    """The regularised duality gap, written independently of nashpref.core.game."""
    kl = np.sum(pi * (np.log(pi) - np.log(mu)))
    return 2 * (tau * logsumexp(np.log(mu) + P @ pi / tau) + tau * kl) - 1


def fixed_point_residual(game, pi):
    """‖π − softmax(log μ + Pπ/τ)‖₁ per context, in numpy."""
    P, mu, p = game.P.numpy(), game.mu.numpy(), pi.numpy()
    target = softmax(np.log(mu) + np.einsum("cij,cj->ci", P, p) / game.tau, axis=-1)
    return np.abs(p - target).sum(-1)


# ---- weighted rock-paper-scissors ---------------------------------------------------------------------------------
def test_weighted_rps_unregularised_is_proportional_to_c_b_a():
    for a, b, c in [(0.2, 0.6, 1.0), (0.5, 0.3, 0.9)]:
        game = PreferenceGame.create(weighted_rps(a, b, c), [1 / 3] * 3, 0.0)
        eq = solve_equilibrium(game)
        np.testing.assert_allclose(eq.policy[0].numpy(), np.array([c, b, a]) / (a + b + c), atol=LP)
        assert eq.gap.item() <= LP


@pytest.mark.parametrize("tau, published", [
    (1.0, [0.360812, 0.291658, 0.347530]),
    (0.1, [0.562000, 0.225349, 0.212650]),
])
def test_weighted_rps_regularised_matches_convex_gap_minimisation(tau, published):
    P, mu = weighted_rps(0.2, 0.6, 1.0), np.full(3, 1 / 3)
    eq = solve_equilibrium(PreferenceGame.create(P, mu, tau))
    # Independent certificate: BFGS on the convex gap over logits (algorithms.md §2.4).
    result = minimize(lambda z: gap_np(P, mu, tau, softmax(z)), np.zeros(3), method="BFGS",
                      options={"gtol": 1e-13})
    # BFGS stops on the gradient (gtol 1e-13); at a minimum the gap is quadratic in the error of π, so BFGS's π is
    # only good to ~sqrt(eps64) ≈ 1.5e-8: its accuracy, not ours, sets this bound.
    np.testing.assert_allclose(eq.policy[0].numpy(), softmax(result.x), atol=1e-7)
    # The recalled 6-digit values are truncated, not rounded (τ=0.1: 0.5620005…).
    np.testing.assert_allclose(eq.policy[0].numpy(), published, atol=PUBLISHED)
    assert eq.gap.item() <= NEWTON_GAP


def test_shipped_weighted_rps_has_the_stated_equilibria():
    game = load_game("weighted-rps")
    np.testing.assert_allclose(solve_equilibrium(game.with_tau(0.0)).policy[0].numpy(), [5 / 9, 1 / 3, 1 / 9],
                               atol=LP)
    np.testing.assert_allclose(solve_equilibrium(game.with_tau(1.0)).policy[0].numpy(),
                               [0.360812, 0.291658, 0.347530], atol=PUBLISHED)
    np.testing.assert_allclose(solve_equilibrium(game).policy[0].numpy(), [0.562001, 0.225349, 0.212650],
                               atol=PUBLISHED)


# ---- linear reward: Gibbs in closed form ----------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01, 0.001])
def test_linear_reward_equilibrium_is_gibbs(tau):
    rng = np.random.default_rng(7)
    rewards = rng.random((4, 12))
    logits = rng.standard_normal((4, 12))
    mu = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    P = 0.5 + (rewards[:, :, None] - rewards[:, None, :]) / 2
    eq = solve_equilibrium(PreferenceGame.create(P, mu, tau))
    gibbs = softmax(np.log(mu) + rewards / (2 * tau), axis=-1)
    np.testing.assert_allclose(eq.policy.numpy(), gibbs, rtol=0, atol=gibbs_tolerance(tau, 12))


def test_shipped_linear_reward_is_gibbs():
    game = load_game("linear-reward")
    rewards = np.array([0.1, 0.9, 0.4, 0.75, 0.55])
    for tau in [0.1, 0.01]:
        eq = solve_equilibrium(game.with_tau(tau))
        gibbs = softmax(np.log(game.mu[0].numpy()) + rewards / (2 * tau))
        np.testing.assert_allclose(eq.policy[0].numpy(), gibbs, rtol=0, atol=gibbs_tolerance(tau, 5))


# ---- cycles with a uniform equilibrium ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["condorcet-3", "rps"])
@pytest.mark.parametrize("tau", [0.0, 0.001, 0.1, 1.0])
def test_symmetric_cycles_have_a_uniform_equilibrium(name, tau):
    eq = solve_equilibrium(load_game(name, tau=tau))
    np.testing.assert_allclose(eq.policy[0].numpy(), np.full(3, 1 / 3),
                               atol=LP if tau == 0 else gibbs_tolerance(tau, 3))


# ---- accuracy on random games -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, contexts", [(10, 4), (300, 2)])
@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01, 0.001])
def test_random_games_reach_the_fixed_point(random_game, n, contexts, tau):
    game = random_game(n, seed=n, tau=tau, contexts=contexts)
    eq = solve_equilibrium(game)
    assert eq.policy.shape == (contexts, n)
    assert fixed_point_residual(game, eq.policy).max() <= RESIDUAL
    assert eq.gap.max().item() <= NEWTON_GAP
    for c in range(contexts):
        assert gap_np(game.P[c].numpy(), game.mu[c].numpy(), tau, eq.policy[c].numpy()) <= NEWTON_GAP


def test_small_tau_converges_on_every_one_of_many_random_games(random_game):
    # Newton started straight from the extragradient warm start stalled on 9 of these 200 games (gap up to 0.5).
    game = random_game(10, seed=10, tau=0.001, contexts=200)
    eq = solve_equilibrium(game)
    assert eq.gap.max().item() <= NEWTON_GAP
    assert fixed_point_residual(game, eq.policy).max() <= RESIDUAL


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 9), seed=st.integers(0, 2**32 - 1), tau=st.one_of(st.just(0.0), st.floats(1e-3, 5.0)))
def test_equilibrium_gap_vanishes_on_random_games(random_game, n, seed, tau):
    game = random_game(n, seed=seed, tau=tau, contexts=2)
    eq = solve_equilibrium(game)
    if tau == 0:
        assert eq.gap.max().item() <= LP
        return
    assert eq.gap.max().item() <= NEWTON_GAP
    assert fixed_point_residual(game, eq.policy).max() <= RESIDUAL


# ---- τ = 0: the linear program against nashpy ----------------------------------------------------------------------
def nashpy_equilibrium(P):
    """One equilibrium of the zero-sum game A = P − ½ by Lemke-Howson (a pivoting method, not an LP)."""
    A = P - 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        row, col = nashpy.Game(A, -A).lemke_howson(initial_dropped_label=0)
    return row, col


@pytest.mark.parametrize("n", [4, 7, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_program_agrees_with_nashpy(random_game, n, seed):
    game = random_game(n, seed=seed, tau=0.0)
    P = game.P[0].numpy()
    ours = solve_equilibrium(game)
    row, col = nashpy_equilibrium(P)
    # value of the game: ½ by nashpy's equilibrium, and what our π guarantees against every action
    assert row @ P @ col == pytest.approx(0.5, abs=LP)
    assert (P @ ours.policy[0].numpy()).max() == pytest.approx(0.5, abs=LP)
    assert ours.gap.item() <= LP
    # nashpy's strategy is an equilibrium by our gap; equilibria of a zero-sum game are interchangeable, so
    # ours paired with nashpy's must also pay the value ½ in nashpy's own payoff evaluation
    assert game.gap(torch.as_tensor(row)[None]).item() <= LP
    A = P - 0.5
    pi = ours.policy[0].numpy()
    assert nashpy.Game(A, -A)[pi, col][0] == pytest.approx(0.0, abs=LP)
    assert nashpy.Game(A, -A)[row, pi][0] == pytest.approx(0.0, abs=LP)


def test_bt_mixture_equilibrium_is_the_unique_one_of_support_enumeration():
    game = load_game("bt-mixture", tau=0.0)
    P = game.P[0].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        equilibria = list(nashpy.Game(P - 0.5, 0.5 - P).support_enumeration())
    assert len(equilibria) == 1
    ours = solve_equilibrium(game).policy[0].numpy()
    np.testing.assert_allclose(ours, equilibria[0][0], atol=LP)
    np.testing.assert_allclose(ours[[0, 2, 3]], [0.412, 0.231, 0.357], atol=5e-4)   # 3 published digits
    assert ours[[1, 4]].max() <= LP
    # no Condorcet winner: every action loses to some other action
    assert all((P[:, i] > 0.5).any() for i in range(5))


# ---- Bradley-Terry: transitive -----------------------------------------------------------------------------------
def test_bradley_terry_unregularised_equilibrium_is_pure_argmax():
    rng = np.random.default_rng(11)
    for _ in range(5):
        r = rng.standard_normal(8)
        P = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
        eq = solve_equilibrium(PreferenceGame.create(P, np.full(8, 1 / 8), 0.0))
        np.testing.assert_allclose(eq.policy[0].numpy(), np.eye(8)[r.argmax()], atol=LP)


def test_shipped_bt_transitive_equilibrium_is_not_the_rlhf_policy():
    game = load_game("bt-transitive")
    rewards = np.array([2.0, 1.5, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(solve_equilibrium(game.with_tau(0.0)).policy[0].numpy(), np.eye(5)[0], atol=LP)
    eq = solve_equilibrium(game)
    rlhf = softmax(np.log(game.mu[0].numpy()) + rewards / game.tau)
    # the game file's description states these to 3 (and 2) digits
    assert eq.policy[0, 0].item() == pytest.approx(0.553, abs=5e-4)
    assert rlhf[0] == pytest.approx(0.990, abs=5e-4)
    assert np.abs(eq.policy[0].numpy() - rlhf).sum() == pytest.approx(0.87, abs=5e-3)
    assert game.gap(torch.as_tensor(rlhf)[None]).item() > 0.1


# ---- regression: a thread-count change must not hang the multi-context Newton solve ----------------------------------
def test_newton_survives_a_thread_count_change():
    """torch 2.13's batched LU (MKL) hangs after torch.set_num_threads(2); the solver factors one context at a time.
    Run in a fresh process with a time limit, so a regression fails instead of stalling the suite."""
    import subprocess
    import sys

    script = ("import torch, numpy as np\n"
              "from nashpref.core.equilibrium import solve_equilibrium\n"
              "from nashpref.core.game import PreferenceGame\n"
              "rng = np.random.default_rng(3)\n"
              "low = np.tril(rng.random((2, 300, 300)), k=-1)\n"
              "P = low + np.triu(1 - np.swapaxes(low, 1, 2), k=1) + 0.5 * np.eye(300)\n"
              "torch.set_num_threads(1); torch.set_num_threads(2)\n"
              "game = PreferenceGame.create(P, np.full((2, 300), 1 / 300), 1.0)\n"
              "print(solve_equilibrium(game).gap.max().item())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) <= NEWTON_GAP
