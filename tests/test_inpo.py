"""INPO: loss arithmetic, one exact step, last-iterate convergence to the regularised equilibrium (and the local
stability analysis that fixes the default step), the loss minimiser = the mirror step, and sampled training."""

import math

import pytest
import torch

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.exact import run_exact
from nashpref.errors import NashprefError
from nashpref.core.game import PreferenceGame
from nashpref.core.gamefile import load_game
from nashpref.core.tabular import TabularPolicy
from nashpref.core.tabular import MatrixOracle
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.selfplay import SelfPlayRound
from nashpref.solvers.inpo import INPO, Config, default_eta, inpo_loss
from nashpref.tolerance import assert_close, tolerance
from conftest import Scripted, lbfgs_minimiser

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

f64 = torch.float64


def test_loss_matches_hand_computation():
    d_policy = torch.tensor([1.0, 0.0, -0.5], dtype=f64)
    d_ref = torch.tensor([0.5, 0.2, 0.0], dtype=f64)
    d_prev = torch.tensor([0.4, -0.1, 0.3], dtype=f64)
    label = torch.tensor([1.0, 0.5, 0.0], dtype=f64)
    # ητ = 0.2: h = Δθ − 0.2Δμ − 0.8Δt = (1 − 0.1 − 0.32, 0 − 0.04 + 0.08, −0.5 − 0 − 0.24) = (0.58, 0.04, −0.74)
    # η/2 = 0.25: (0.58 − 0.25)² = 0.1089;  ½(0.04 − 0.25)² + ½(0.04 + 0.25)² = 0.0641;  (−0.74 + 0.25)² = 0.2401
    expected = torch.tensor([0.1089, 0.0641, 0.2401], dtype=f64)
    assert_close(inpo_loss(d_policy, d_ref, d_prev, label, eta=0.5, tau=0.4), expected)


def test_collect_labels_every_pair_once():
    game = load_game("weighted-rps")          # P[0,1] = 0.4, P[0,2] = 0.8, P[1,2] = 0
    responses = torch.tensor([[0, 1, 2]])
    round_ = SelfPlayRound(Scripted(game.log_mu, responses), TabularPolicy(game.log_mu), MatrixOracle(game),
                           torch.arange(1), 3, True, torch.Generator(), tau=0.1)
    batch = INPO().collect(round_)
    assert_close(batch["label"], torch.tensor([[0.4, 0.8, 0.0]], dtype=f64))    # pairs (0,1), (0,2), (1,2)
    assert round_.queries == 3 and batch["tau"] == 0.1


def test_solver_loss_of_a_batch_by_hand():
    policy = TabularPolicy(torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=f64)))
    uniform = torch.full((1, 2), math.log(1 / 3), dtype=f64)
    batch = {"contexts": torch.tensor([0]), "responses": torch.tensor([[0, 1]]),
             "label": torch.tensor([[1.0]], dtype=f64), "log_prob_previous": uniform,
             "log_prob_reference": uniform, "tau": 0.5}
    loss, _ = INPO(Config(eta=1.0)).loss(batch, policy)
    # Δμ = Δt = 0, so h = log(0.5/0.3) = 0.5108256; label 1: (h − ½)² = 1.1740e-4
    assert loss.item() == pytest.approx((math.log(5 / 3) - 0.5) ** 2,
                                        abs=tolerance(f64, scale=1.0, length=2))


def test_one_exact_step_by_hand():
    game = PreferenceGame.create([[0.5, 0.7], [0.3, 0.5]], [0.8, 0.2], tau=0.5)
    log_pi = torch.log(torch.tensor([[0.5, 0.5]], dtype=f64))
    # η = 1, ητ = ½: log-odds = ½·log(0.5/0.5) + ½·log(0.8/0.2) + (0.6 − 0.4) = log 2 + 0.2
    # π₁(0) = 2e^0.2 / (1 + 2e^0.2) = 0.7095392
    step = INPO(Config(eta=1.0)).step(game, log_pi, 0).exp()
    assert_close(step, torch.tensor([[0.7095392129298094, 0.2904607870701906]], dtype=f64))


@pytest.mark.parametrize("name", ["weighted-rps", "egpo-random", "bt-mixture"])
def test_last_iterate_converges_linearly_at_tau_0_1(name):
    game = load_game(name, tau=0.1)
    star = solve_equilibrium(game).policy
    run = run_exact(game, INPO())                             # defaults only: η = τ/(τ²+¼) = 0.385, 599 steps
    assert run.iterations == 599
    # convergence targets of the default budget (599 steps at a linear rate), not rounding
    assert game.gap(run.last_policies).max().item() <= 1e-12
    assert (run.last_policies - star).abs().sum(-1).max().item() <= 1e-9
    log_pi, solver, gaps = game.log_mu, INPO(), [game.gap(game.mu).max().item()]
    for t in range(200):
        log_pi = solver.step(game, log_pi, t)
        if (t + 1) % 100 == 0:
            gaps.append(game.gap(log_pi.exp()).max().item())
    # linear rate: the gap falls by a steady factor per 100 steps, at least (1 − ητ)^100 = 0.02 (observed ≤ 1e-3)
    assert gaps[1] <= 0.02 * gaps[0] and gaps[2] <= 0.02 * gaps[1]


def test_default_step_converges_at_tau_0_01_where_the_constant_step_fails():
    game = load_game("egpo-random", tau=0.01)
    default = run_exact(game, INPO(), 35_000, log_points=2)    # η = 0.04 (the default budget is 57 588)
    assert game.gap(default.last_policies).max().item() <= 1e-10       # a convergence target; observed 5e-11
    constant = run_exact(game, INPO(Config(eta=1 / 1.01)), 3000, log_points=2)    # η = 1/(τ+1)
    assert game.gap(constant.last_policies).max().item() >= 0.5         # observed 0.82: no convergence


def test_local_rate_matches_the_jacobian_at_the_equilibrium():
    """docstring claim: the log-space Jacobian of the step at π* has eigenvalues (1−ητ) ± iηω, ω the eigenvalues
    of D^½ A D^½ (A = P − ½, D = diag π* − π*π*ᵀ), |ω| ≤ ½, plus 0 along the constant direction."""
    game = load_game("egpo-random", tau=0.1)
    star = solve_equilibrium(game).policy
    eta = default_eta(0.1)
    for c in range(game.num_contexts):
        one = PreferenceGame.create(game.P[c], game.mu[c], 0.1)
        jac = torch.autograd.functional.jacobian(lambda z: one.mirror_step(z, one.win_rates(z.exp()), eta),
                                                 torch.log(star[c:c + 1]))[0, :, 0, :]
        pi = star[c]
        D = torch.diag(pi) - torch.outer(pi, pi)
        evals, evecs = torch.linalg.eigh(D)
        half = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
        omega = torch.linalg.eigvals(half @ (game.P[c] - 0.5) @ half).imag
        assert omega.abs().max().item() <= 0.5
        predicted = torch.abs((1 - eta * 0.1) + 1j * eta * omega).max().item()
        # eigenvalues of a non-symmetric 10×10 Jacobian: their conditioning (not eps) bounds the agreement
        assert torch.linalg.eigvals(jac).abs().max().item() == pytest.approx(predicted, rel=1e-9)
        assert predicted ** 2 <= 1 - eta * 0.1 + tolerance(f64, length=game.num_actions)


def test_bad_settings_are_one_line_errors():
    game = load_game("rps")
    with pytest.raises(NashprefError, match="tau > 0"):
        INPO().step(game.with_tau(0.0), game.log_mu, 0)
    with pytest.raises(NashprefError, match="eta·tau ≤ 1"):
        INPO(Config(eta=20.0)).step(game, game.log_mu, 0)


def test_population_minimiser_is_the_mirror_step():
    """§5.2: with exact expectations over (y, y') ~ π_t ⊗ π_t and soft labels P(y ≻ y'), the loss is minimised
    exactly at π ∝ π_t^(1−ητ) μ^(ητ) exp(η P(y ≻ π_t)). Started away from μ (π_t = a random policy). The
    tolerance 1e-7 (L1) is LBFGS's accuracy on this smooth quadratic (measured 1e-9)."""
    game = load_game("egpo-random", tau=0.1)
    log_prev = torch.log_softmax(torch.randn(game.mu.shape, generator=torch.Generator().manual_seed(1),
                                             dtype=f64), -1)
    eta = default_eta(0.1)
    prev = log_prev.exp()
    weight = prev.unsqueeze(-1) * prev.unsqueeze(-2)

    def pair(x):
        return x.unsqueeze(-1) - x.unsqueeze(-2)

    def loss(log_policy):
        per_pair = inpo_loss(pair(log_policy), pair(game.log_mu), pair(log_prev), game.P, eta, 0.1)
        return (weight * per_pair).sum()

    minimiser = lbfgs_minimiser(log_prev, loss)
    mirror = game.mirror_step(log_prev, game.win_rates(prev), eta).exp()
    assert (minimiser - mirror).abs().sum(-1).max().item() <= 1e-7       # LBFGS's accuracy, not rounding


@pytest.mark.parametrize("name", ["weighted-rps", "egpo-random"])
def test_sampled_training_reaches_the_regularised_equilibrium(name):
    """K = 8, every pair, soft labels, Adam (lr 0.02, one step per round), 1000 rounds at τ = 0.1. Measured gap of
    the last iterate over seeds 0–4: weighted-rps ≤ 0.012, egpo-random (worst of 10 contexts) ≤ 0.016."""
    game = load_game(name)
    run = run_sampled(game, INPO(), SampledConfig(iterations=1000, samples=8, lr=0.02, optimizer="adam"))
    assert game.gap(run.last_policies).max().item() <= 0.02
