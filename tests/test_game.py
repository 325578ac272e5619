"""PreferenceGame: exact quantities against brute force and numerical optimisation, and validation errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.errors import GameError
from nashpref.core.game import PreferenceGame
from nashpref.tolerance import tolerance

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

F64 = torch.float64


def objective_scale(mu, tau: float) -> float:
    """Size of the terms of f and of the gap: win-rates ≤ 1 and τ·log μ (the KL terms)."""
    return 1.0 + tau * float(np.abs(np.log(mu)).max())


# ---- an independent numpy reference of the game -------------------------------------------------------------------
def kl_np(p, q):
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def objective_np(P, mu, tau, pi, pi2):
    """f(π, π') = πᵀPπ' − τ KL(π‖μ) + τ KL(π'‖μ)."""
    return float(pi @ P @ pi2) - tau * kl_np(pi, mu) + tau * kl_np(pi2, mu)


def dirichlet_policies(rng, contexts, n, alpha=1.0):
    return torch.as_tensor(rng.dirichlet(np.full(n, alpha), size=contexts), dtype=torch.float64)


# ---- hypothesis: valid games from uniform draws ------------------------------------------------------------------
@st.composite
def games(draw, min_n=2, max_n=7, taus=st.one_of(st.just(0.0), st.floats(1e-3, 10.0))):
    n = draw(st.integers(min_n, max_n))
    lower = draw(st.lists(st.floats(0.0, 1.0), min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2))
    P = np.full((n, n), 0.5)
    P[np.tril_indices(n, k=-1)] = lower
    P = np.tril(P, k=-1) + np.triu(1.0 - np.tril(P, k=-1).T, k=1) + 0.5 * np.eye(n)
    weights = np.asarray(draw(st.lists(st.floats(1e-3, 1.0), min_size=n, max_size=n)))
    return PreferenceGame.create(P, weights / weights.sum(), draw(taus))


@st.composite
def policies(draw, n, allow_zeros=True):
    low = 0.0 if allow_zeros else 1e-6
    weights = np.asarray(draw(st.lists(st.floats(low, 1.0), min_size=n, max_size=n)))
    if weights.sum() == 0:
        weights[0] = 1.0
    return torch.as_tensor(weights / weights.sum(), dtype=torch.float64)[None]


# ---- exact quantities ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [2.0, 0.1, 0.01])
def test_gap_closed_form_equals_objective_at_best_responses(random_game, tau):
    game = random_game(7, seed=1, tau=tau, contexts=3)
    pi = dirichlet_policies(np.random.default_rng(0), 3, 7)
    gap = game.gap(pi)
    for c in range(3):
        P, mu, p = game.P[c].numpy(), game.mu[c].numpy(), pi[c].numpy()
        best_max = softmax(np.log(mu) + P @ p / tau)            # argmax_q f(q, π)
        best_min = softmax(np.log(mu) - P.T @ p / tau)          # argmin_q f(π, q)
        brute = objective_np(P, mu, tau, best_max, p) - objective_np(P, mu, tau, p, best_min)
        assert gap[c].item() == pytest.approx(brute, abs=tolerance(F64, scale=objective_scale(mu, tau), length=7))
        # a softmax of exponents Pπ/τ (n = 7 terms of size ≤ 1/τ): relative error ∝ the exponent's rounding
        np.testing.assert_allclose(game.best_response(pi)[c].numpy(), best_max, rtol=tolerance(F64, scale=1 / tau,
                                                                                                length=7), atol=0)
        # the minimiser's best response is the same distribution (P + Pᵀ = 1)
        np.testing.assert_allclose(best_min, best_max, rtol=tolerance(F64, scale=1 / tau, length=7), atol=0)


def test_objective_matches_numpy(random_game):
    game = random_game(6, seed=2, tau=0.3, contexts=2)
    rng = np.random.default_rng(1)
    pi, pi2 = dirichlet_policies(rng, 2, 6), dirichlet_policies(rng, 2, 6)
    got = game.objective(pi, pi2)
    for c in range(2):
        want = objective_np(game.P[c].numpy(), game.mu[c].numpy(), 0.3, pi[c].numpy(), pi2[c].numpy())
        assert got[c].item() == pytest.approx(want, abs=tolerance(F64, scale=objective_scale(game.mu[c].numpy(),
                                                                                             0.3), length=6))


def test_best_response_is_the_numerical_maximiser(random_game):
    tau = 0.2
    game = random_game(6, seed=3, tau=tau)
    pi = dirichlet_policies(np.random.default_rng(2), 1, 6)
    P, mu, p = game.P[0].numpy(), game.mu[0].numpy(), pi[0].numpy()
    result = minimize(lambda z: -objective_np(P, mu, tau, softmax(z), p), np.zeros(6), method="BFGS",
                      options={"gtol": 1e-10})
    best = game.best_response(pi)[0].numpy()
    # BFGS's accuracy, not rounding: it stops at gtol 1e-10 on the gradient; the objective is quadratic near its
    # maximum, so its value is good to ~gtol while its argmax is only good to ~sqrt(gtol).
    assert objective_np(P, mu, tau, best, p) == pytest.approx(-result.fun, abs=1e-10)
    np.testing.assert_allclose(softmax(result.x), best, atol=1e-5)


def test_unregularised_gap_is_the_best_pure_deviation(random_game):
    game = random_game(8, seed=4, tau=0.0, contexts=2)
    pi = dirichlet_policies(np.random.default_rng(3), 2, 8)
    eye = np.eye(8)
    for c in range(2):
        P, mu, p = game.P[c].numpy(), game.mu[c].numpy(), pi[c].numpy()
        best = max(objective_np(P, mu, 0.0, e, p) for e in eye)
        worst = min(objective_np(P, mu, 0.0, p, e) for e in eye)
        assert game.gap(pi)[c].item() == pytest.approx(best - worst, abs=tolerance(F64, length=8))
        pure = game.best_response(pi)[c].numpy()
        assert objective_np(P, mu, 0.0, pure, p) == pytest.approx(best, abs=tolerance(F64, length=8))
        assert sorted(pure.tolist()) == [0.0] * 7 + [1.0]


def test_symmetric_value_is_one_half(random_game):
    game = random_game(9, seed=5, tau=0.1, contexts=4)
    pi = dirichlet_policies(np.random.default_rng(4), 4, 9, alpha=0.3)
    np.testing.assert_allclose(game.preference(pi, pi).numpy(), 0.5, rtol=0, atol=tolerance(F64, length=9))


@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01])
def test_kl_at_equilibrium_is_half_over_tau_minus_log_partition(random_game, tau):
    game = random_game(10, seed=6, tau=tau, contexts=3)
    pi = solve_equilibrium(game).policy
    for c in range(3):
        P, mu, p = game.P[c].numpy(), game.mu[c].numpy(), pi[c].numpy()
        log_z = logsumexp(np.log(mu) + P @ p / tau)
        # log_z sums 10 exponents of size ≤ 1/τ; π* is a Newton fixed point, so it is accurate to rounding too
        assert kl_np(p, mu) == pytest.approx(1 / (2 * tau) - log_z, abs=tolerance(F64, scale=1 / tau, length=10))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_best_response_beats_random_alternatives(data):
    game = data.draw(games(taus=st.floats(1e-3, 10.0)))
    n, tau = game.num_actions, game.tau
    pi = data.draw(policies(n))
    alternative = data.draw(policies(n))
    P, mu, p, q = game.P[0].numpy(), game.mu[0].numpy(), pi[0].numpy(), alternative[0].numpy()
    best = game.best_response(pi)[0].numpy()
    slack = tolerance(F64, scale=objective_scale(mu, tau), length=n)     # q may be the best response itself
    assert objective_np(P, mu, tau, best, p) >= objective_np(P, mu, tau, q, p) - slack
    assert objective_np(P, mu, tau, p, best) <= objective_np(P, mu, tau, p, q) + slack


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_gap_is_nonnegative(data):
    game = data.draw(games())
    pi = data.draw(policies(game.num_actions))
    assert game.gap(pi).item() >= -tolerance(F64, scale=objective_scale(game.mu[0].numpy(), game.tau),
                                             length=game.num_actions)


# ---- validation ---------------------------------------------------------------------------------------------------
RPS = [[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]
UNIFORM = [1 / 3] * 3


def raises(match, *args, **kwargs):
    with pytest.raises(GameError) as info:
        PreferenceGame.create(*args, where="demo.toml", **kwargs)
    message = str(info.value)
    assert message.startswith("demo.toml") and "\n" not in message, message
    assert match in message, message
    return message


@pytest.mark.parametrize("P, rule", [
    ([[0.5, 0.6], [0.6, 0.5]], "P + Pᵀ = 1"),
    ([[0.5, 1.5], [-0.5, 0.5]], "[0, 1]"),
    ([[0.5, math.nan], [0.5, 0.5]], "non-finite"),
    ([[0.5, math.inf], [0.5, 0.5]], "non-finite"),
    ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], "square"),
    ([0.5, 0.5], "N×N"),
])
def test_bad_matrix(P, rule):
    n = len(P[0]) if isinstance(P[0], list) else 2
    raises(rule, P, [1 / n] * n, 0.1)


@pytest.mark.parametrize("mu, rule", [
    ([0.5, 0.5, 0.0], "> 0"),
    ([0.6, 0.6, -0.2], "> 0"),
    ([0.3, 0.3, 0.3], "sum to 1"),
    ([0.5, math.nan, 0.5], "non-finite"),
    ([0.5, 0.5], "reference has shape"),
])
def test_bad_reference(mu, rule):
    raises(rule, RPS, mu, 0.1)


@pytest.mark.parametrize("tau", [-0.1, math.nan, math.inf, True, "0.1"])
def test_bad_tau(tau):
    raises("tau must be a finite number >= 0", RPS, UNIFORM, tau)


def test_bad_tau_override():
    game = PreferenceGame.create(RPS, UNIFORM, 0.1, name="rps")
    with pytest.raises(GameError, match="rps: tau must be"):
        game.with_tau(-1.0)


def test_bad_action_labels():
    raises("2 action labels for 3 actions", RPS, UNIFORM, 0.1, actions=["rock", "paper"])


def test_errors_name_the_context():
    bad = [[0.5, 0.7, 1.0], [0.4, 0.5, 0.0], [0.0, 1.0, 0.5]]
    message = raises("P + Pᵀ = 1", [RPS, bad], [UNIFORM, UNIFORM], 0.1)
    assert message.startswith("demo.toml: context 1:"), message
    message = raises("> 0", [RPS, RPS], [UNIFORM, [0.5, 0.5, 0.0]], 0.1)
    assert message.startswith("demo.toml: context 1:"), message


def test_reference_is_renormalised_only_beyond_rounding():
    game = PreferenceGame.create(RPS, [0.2, 0.3, 0.5 + 5e-10], 0.1)
    assert game.mu.sum().item() == pytest.approx(1.0, abs=tolerance(F64, length=3))
    again = PreferenceGame.create(game.P, game.mu, 0.1)
    assert torch.equal(again.mu, game.mu)
