"""Nash-MD: the Nash-MD-PG loss by hand, exact steps by hand, the paper's KL bounds against the exact π*, and
sampled training (Nash-MD-PG and IPO-MD) on a tabular policy."""

import math

import pytest
import torch

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.exact import run_exact
from nashpref.errors import NashprefError
from nashpref.core.game import PreferenceGame, kl_divergence
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.solvers import get_solver
from nashpref.solvers.nash_md import nash_md_pg_loss
from nashpref.solvers.online_ipo import population_gradient
from nashpref.tolerance import assert_close, tolerance

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

F64 = torch.float64
# weighted rock-paper-scissors (a, b, c) = (0.2, 0.6, 1.0), P = ½ + A/2: the shipped games/weighted-rps.toml
WRPS = [[0.5, 0.4, 0.8], [0.6, 0.5, 0.0], [0.2, 1.0, 0.5]]


def solver(**options):
    cls = get_solver("nash-md")
    return cls(cls.Config(**options))


def win_rates(pi):
    return [sum(p_ij * q for p_ij, q in zip(row, pi)) for row in WRPS]


def normalise(weights):
    return [w / sum(weights) for w in weights]


def test_pg_loss_on_three_samples_by_hand():
    log_prob = torch.tensor([-1.0, -2.0, -0.5], dtype=F64, requires_grad=True)
    ref = torch.tensor([-1.5, -1.0, -0.5], dtype=F64)
    preference = torch.tensor([0.9, 0.2, 0.5], dtype=F64)
    # log π/μ = (0.5, −1.0, 0.0); with τ = 0.5 the advantage P − ½ − τ·log π/μ is
    #   0.4 − 0.25 = 0.15;  −0.3 + 0.5 = 0.2;  0 − 0 = 0
    # loss −advantage·log π = 0.15·1.0 = 0.15;  0.2·2.0 = 0.4;  0
    loss = nash_md_pg_loss(log_prob, ref, preference, tau=0.5)
    assert_close(loss, torch.tensor([0.15, 0.4, 0.0], dtype=F64))
    loss.sum().backward()
    # The KL weight is stop-gradient: ∂/∂logπ = −advantage. Through the KL term too it would be
    # −advantage + τ·logπ = (−0.65, −1.2, −0.25).
    assert_close(log_prob.grad, torch.tensor([-0.15, -0.2, 0.0], dtype=F64))


@pytest.mark.parametrize("beta", [0.0, 0.125])
def test_pg_loss_in_expectation_is_the_gradient_of_the_regularised_objective(random_game, beta):
    """Σ_y π(y) Σ_y' π^β(y') loss(y, y') has gradient −∇_θ[P(π_θ ≻ π^β) − τ KL(π_θ‖μ)] at θ (score function);
    at β = 0 this is τ/4 times the gradient of online IPO's population loss."""
    game = random_game(6, 8, 0.3, contexts=2)
    start = torch.log_softmax(game.log_mu + torch.randn(game.mu.shape, dtype=F64,
                                                        generator=torch.Generator().manual_seed(2)), dim=-1)
    pi = start.exp()
    opponent = torch.softmax((1 - beta) * start + beta * game.log_mu, dim=-1)
    logits = start.clone().requires_grad_(True)
    log_pi = torch.log_softmax(logits, dim=-1)
    per_pair = nash_md_pg_loss(log_pi.unsqueeze(-1).expand_as(game.P), game.log_mu.unsqueeze(-1).expand_as(game.P),
                               game.P, game.tau)                                        # (C, y, y')
    (pi.unsqueeze(-1) * opponent.unsqueeze(-2) * per_pair).sum().backward()

    objective_logits = start.clone().requires_grad_(True)
    policy = torch.softmax(objective_logits, dim=-1)
    objective = (policy * game.win_rates(opponent)).sum() - game.tau * kl_divergence(policy, game.mu).sum()
    objective.backward()
    # sums over the N² = 36 pairs of terms of size ≤ 1 + τ·|log π − log μ|
    scale, pairs = 1.0 + game.tau * (start - game.log_mu).abs().max().item(), game.num_actions ** 2
    assert_close(logits.grad, -objective_logits.grad, scale=scale, length=pairs)
    if beta == 0.0:
        assert_close(logits.grad, game.tau / 4 * population_gradient(game, start), scale=scale, length=pairs)


def test_first_step_is_a_gibbs_step_from_the_reference():
    # t = 0: η₀ = 2/(2τ) = 1/τ, so η₀τ = 1 and the mixture is μ itself; then π₁ ∝ μ exp(Pμ/τ).
    # Uniform μ: Pμ = (1.7, 1.1, 1.7)/3, τ = 0.5 → π₁ ∝ (1, e^(−0.4), 1).
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.5)
    got = solver().step(game, game.log_mu, 0).exp()
    z = 2 + math.exp(-0.4)
    assert_close(got, torch.tensor([[1 / z, math.exp(-0.4) / z, 1 / z]], dtype=F64), length=3)


@pytest.mark.parametrize("t, eta", [(1, None), (7, 0.5)])
def test_one_step_by_hand(t, eta):
    # μ = (0.5, 0.25, 0.25), π = (0.5, 0.3, 0.2), τ = 0.5. Decaying step at t = 1: η = 2/(τ·3) = 4/3, ητ = 2/3;
    # the constant step η = 0.5 gives ητ = 0.25 whatever t is.
    mu, pi, tau = [0.5, 0.25, 0.25], [0.5, 0.3, 0.2], 0.5
    step = 2 / (tau * (t + 2)) if eta is None else eta
    mix = normalise([p ** (1 - step * tau) * m ** (step * tau) for p, m in zip(pi, mu)])
    new = normalise([q * math.exp(step * w) for q, w in zip(mix, win_rates(mix))])
    game = PreferenceGame.create(WRPS, mu, tau)
    got = solver(eta=eta).step(game, torch.tensor([pi], dtype=F64).log(), t).exp()
    assert_close(got, torch.tensor([new], dtype=F64), length=3)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_kl_bounds_of_the_paper(random_game, tau):
    """KL(π*‖π_{t+1}) ≤ (1 − η_t τ) KL(π*‖π_t) + 2η_t² at every step, and so KL(π*‖π_T) ≤ 8/(τ²(T+1)).
    Both held at every step: the one-step slack was at most −8e-6 (τ = 0.5) and −2e-4 (τ = 0.1), and the ratio of
    KL to the 8/(τ²(T+1)) bound at most 8e-5 and 1e-3."""
    game = random_game(10, 3, tau, contexts=10)
    star = solve_equilibrium(game).policy
    nash_md = solver()
    log_pi = nash_md.init(game)
    kl = kl_divergence(star, log_pi.exp())
    for t in range(2000):
        eta = 2 / (tau * (t + 2))
        log_pi = nash_md.step(game, log_pi, t)
        kl_next = kl_divergence(star, log_pi.exp())
        assert (kl_next <= (1 - eta * tau) * kl + 2 * eta ** 2).all(), f"one-step bound broken at t={t}"
        assert (kl_next <= 8 / (tau ** 2 * (t + 2))).all(), f"8/(τ²(T+1)) bound broken at T={t + 1}"
        kl = kl_next
    assert kl.max() <= 1e-5      # far inside the bound: 3.7e-9 at τ = 0.5, 2.7e-7 at τ = 0.1


@pytest.mark.parametrize("n", [10, 50])
def test_default_converges_at_tau_point_one(random_game, n):
    game = random_game(n, 12, 0.1, contexts=10)
    run = run_exact(game, solver())
    assert run.metrics[-1]["gap"] <= 1e-3          # the default budget's accuracy target, not rounding
    bound = 8 / (0.1 ** 2 * (run.iterations + 1))
    assert kl_divergence(solve_equilibrium(game).policy, run.last_policies).max() <= bound


def test_needs_positive_tau_and_valid_options():
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.0, name="wrps")
    with pytest.raises(NashprefError, match="wrps: solver nash-md needs tau > 0"):
        solver().init(game)
    with pytest.raises(NashprefError, match="needs tau > 0"):
        solver().default_iterations(game)
    with pytest.raises(NashprefError, match=r"nash-md: eta must be a finite number in \(0, 10\]"):
        solver(eta=20.0).step(game.with_tau(0.1), game.log_mu, 0)   # η·τ > 1 is not a mixture


# ---- sampled training on a tabular policy ----------------------------------------------------------------------
# The PG loss's expected gradient on tabular logits is τ/4 times online IPO's (same pairs), so it takes a
# ~4/τ times larger SGD step (the recommended settings; SGD's lr is a per-context step).
PG = SampledConfig(iterations=800, samples=64, lr=1.6, optimizer="sgd")
IPO_MD = SampledConfig(iterations=800, samples=64, lr=0.04, optimizer="sgd")


@pytest.mark.parametrize("loss, config", [("pg", PG), ("ipo", IPO_MD)])
def test_sampled_training_reaches_the_equilibrium_on_random_games(random_game, loss, config):
    # The β = 0.125 mixture moves the fixed point off π*: its gap is 3.2e-3 here (8.4e-4 on weighted RPS).
    game = random_game(10, 0, 0.1, contexts=3)
    run = run_sampled(game, solver(loss=loss), config)
    assert run.metrics[-1]["gap"] <= 0.02          # measured over seeds 0–4: pg 0.0043–0.0094, ipo 0.0016–0.0074


@pytest.mark.parametrize("loss, config", [("pg", PG), ("ipo", IPO_MD)])
def test_sampled_training_reaches_the_equilibrium_on_weighted_rps(loss, config):
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.1)
    run = run_sampled(game, solver(loss=loss), config)
    assert run.metrics[-1]["gap"] <= 0.02          # measured over seeds 0–4: pg 0.0003–0.0043, ipo 0.0002–0.0044
