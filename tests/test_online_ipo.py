"""Online IPO: the per-pair loss by hand, the exact step by hand and by autograd on the population loss,
convergence of the exact dynamics to the solver-independent π*, and sampled training on a tabular policy."""

import math

import pytest
import torch

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.exact import run_exact
from nashpref.errors import NashprefError
from nashpref.core.game import PreferenceGame
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.solvers import get_solver
from nashpref.solvers.online_ipo import online_ipo_loss
from nashpref.tolerance import assert_close, tolerance

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

F64 = torch.float64
# weighted rock-paper-scissors (a, b, c) = (0.2, 0.6, 1.0), P = ½ + A/2: the shipped games/weighted-rps.toml
WRPS = [[0.5, 0.4, 0.8], [0.6, 0.5, 0.0], [0.2, 1.0, 0.5]]


def solver(**options):
    cls = get_solver("online-ipo")
    return cls(cls.Config(**options))


def test_loss_on_three_pairs_by_hand():
    log_prob = torch.tensor([-1.0, -2.0, -0.5], dtype=F64, requires_grad=True)
    log_prob_other = torch.tensor([-1.5, -1.0, -3.0], dtype=F64, requires_grad=True)
    ref = torch.tensor([-1.2, -1.2, -1.2], dtype=F64)
    ref_other = torch.tensor([-0.8, -1.6, -2.0], dtype=F64)
    preference = torch.tensor([0.7, 0.5, 0.1], dtype=F64)
    # h = (logπ − ref) − (logπ' − ref'):  0.2 − (−0.7) = 0.9;  −0.8 − 0.6 = −1.4;  0.7 − (−1.0) = 1.7
    # target (P − ½)/τ with τ = 0.5:       0.4;                0;                  −0.8
    # loss (h − target)²:                  0.25;               1.96;               6.25
    loss = online_ipo_loss(log_prob, log_prob_other, ref, ref_other, preference, tau=0.5)
    assert_close(loss, torch.tensor([0.25, 1.96, 6.25], dtype=F64))
    loss.sum().backward()
    # ∂/∂logπ = 2(h − target) = (1.0, −2.8, 5.0); the other response gets the opposite sign
    assert_close(log_prob.grad, torch.tensor([1.0, -2.8, 5.0], dtype=F64))
    assert_close(log_prob_other.grad, torch.tensor([-1.0, 2.8, -5.0], dtype=F64))


def test_one_exact_step_by_hand():
    # μ uniform, π = (0.5, 0.3, 0.2), τ = 0.5, lr = 0.3 on weighted RPS.
    # Win-rates Pπ by hand: 0.25+0.12+0.16 = 0.53;  0.30+0.15+0 = 0.45;  0.10+0.30+0.10 = 0.50  (πᵀPπ = ½).
    pi, wins, tau, lr = [0.5, 0.3, 0.2], [0.53, 0.45, 0.50], 0.5, 0.3
    a = [math.log(3 * p) for p in pi]                    # log π − log μ
    mean_a = sum(p * x for p, x in zip(pi, a))
    grad = [4 * p * (x - mean_a - (w - 0.5) / tau) for p, x, w in zip(pi, a, wins)]
    new = [p * math.exp(-lr * g) for p, g in zip(pi, grad)]
    expected = torch.tensor([[x / sum(new) for x in new]], dtype=F64)
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, tau)
    got = solver(lr=lr).step(game, torch.tensor([pi], dtype=F64).log(), 0).exp()
    assert_close(got, expected, length=3)


def test_first_step_from_uniform_reference_closed_form():
    # From π = μ uniform a = 0 and Pμ − ½ = (0.2, −0.4, 0.2)/3, so the gradient is −(4/3)(Pμ − ½)/τ and with
    # τ = 0.5, lr = 0.3 the logits move by (0.16, −0.32, 0.16)/3: π' = (1, e^−0.16, 1)/(2 + e^−0.16).
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.5)
    got = solver(lr=0.3).step(game, game.log_mu, 0).exp()
    z = 2 + math.exp(-0.16)
    assert_close(got, torch.tensor([[1 / z, math.exp(-0.16) / z, 1 / z]], dtype=F64), length=3)


def test_exact_step_is_one_sgd_step_on_the_population_loss(random_game):
    """The closed-form gradient 4π(k)[a(k) − E_π a − (P(k ≻ π) − ½)/τ] against autograd on
    Σ_{y,y'} sg π(y) sg π(y') · online_ipo_loss(y, y')."""
    game = random_game(10, 3, 0.2, contexts=3)
    lr = 0.7
    start = torch.log_softmax(game.log_mu + torch.randn(game.mu.shape, dtype=F64,
                                                        generator=torch.Generator().manual_seed(0)), dim=-1)
    logits = start.clone().requires_grad_(True)
    log_pi = torch.log_softmax(logits, dim=-1)
    weight = log_pi.exp().detach()
    pairs = online_ipo_loss(log_pi.unsqueeze(-1), log_pi.unsqueeze(-2), game.log_mu.unsqueeze(-1),
                            game.log_mu.unsqueeze(-2), game.P, game.tau)          # (C, N, N) over (y, y')
    (weight.unsqueeze(-1) * weight.unsqueeze(-2) * pairs).sum().backward()
    expected = torch.log_softmax(start - lr * logits.grad, dim=-1)
    # the gradient sums N² pair terms; the result has the size of the moved logits
    scale = (start.abs() + lr * logits.grad.abs()).max().item()
    assert_close(solver(lr=lr).step(game, start, 0), expected, scale=scale, length=game.num_actions ** 2)


@pytest.mark.parametrize("n", [10, 50])
def test_default_converges_at_tau_point_one(random_game, n):
    game = random_game(n, 11, 0.1, contexts=10)
    run = run_exact(game, solver())
    assert run.metrics[-1]["gap"] <= 1e-3          # accuracy targets of the default budget, not rounding
    star = solve_equilibrium(game).policy
    assert (run.last_policies - star).abs().max() <= 1e-2     # the last iterate approaches the exact π*


def test_default_converges_on_weighted_rps_closed_form():
    # algorithms.md §10: τ = 0.1, uniform μ gives π* = (0.562000, 0.225349, 0.212650)
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.1)
    run = run_exact(game, solver())
    # the default budget's accuracy (its gap target is 1e-3), not rounding
    torch.testing.assert_close(run.last_policies, torch.tensor([[0.562000, 0.225349, 0.212650]], dtype=F64),
                               rtol=0, atol=1e-4)


def test_needs_positive_tau_and_valid_lr():
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.0, name="wrps")
    with pytest.raises(NashprefError, match="wrps: solver online-ipo needs tau > 0"):
        solver().init(game)
    with pytest.raises(NashprefError, match="needs tau > 0"):
        solver().default_iterations(game)
    with pytest.raises(NashprefError, match="online-ipo: lr must be a finite number"):
        solver(lr=-1.0).step(game.with_tau(0.1), game.log_mu, 0)


# ---- sampled training on a tabular policy ----------------------------------------------------------------------
SAMPLED = SampledConfig(iterations=400, samples=64, lr=0.05, optimizer="sgd")


def test_sampled_training_reaches_the_equilibrium_on_random_games(random_game):
    game = random_game(10, 0, 0.1, contexts=3)
    run = run_sampled(game, solver(), SAMPLED)
    assert run.metrics[-1]["gap"] <= 0.02          # measured 0.0034–0.0049 over seeds 0–4


def test_sampled_training_reaches_the_equilibrium_on_weighted_rps():
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.1)
    run = run_sampled(game, solver(), SAMPLED)
    assert run.metrics[-1]["gap"] <= 0.02          # measured 0.0002–0.0017 over seeds 0–4
