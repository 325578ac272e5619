"""Nash-MP: the loss by hand, one exact step by hand, the identity with EGPO's extragradient step, the linear
last-iterate rate against the exact π* (and against EGPO's), the loss's population minimiser as the proximal
step, the collect plan, and sampled training on tabular policies."""

import math

import pytest
import torch
from torch.testing import assert_close

from conftest import WRPS, Scripted, lbfgs_minimiser, make_solver, train_tiny
from conftest_lm import tiny_dir  # noqa: F401  (fixture)
from nashpref.core.equilibrium import extragradient_step, solve_equilibrium
from nashpref.errors import BadInput
from nashpref.core.game import GameError, PreferenceGame, kl_divergence
from nashpref.core.tabular import TabularPolicy
from nashpref.core.tabular import MatrixOracle
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.rounds import SelfPlayRound
from nashpref.solvers import get_solver
from nashpref.solvers.nash_mp import nash_mp_loss

F64 = torch.float64


def solver(**options):
    return make_solver("nash-mp", **options)


def test_loss_on_three_pairs_by_hand():
    # η = 2, τ = 0.5: ητ = 1, a = ½, ηa = 1.
    d_policy = torch.tensor([1.0, 0.0, -0.5], dtype=F64, requires_grad=True)
    d_prev = torch.tensor([0.4, -0.2, 0.6], dtype=F64)
    d_ref = torch.tensor([0.2, 0.4, 0.0], dtype=F64)
    pref = torch.tensor([0.9, 0.5, 0.1], dtype=F64)
    pref_other = torch.tensor([0.4, 0.5, 0.6], dtype=F64)
    # anchor ½(Δt + Δμ) = 0.3, 0.1, 0.3;  target 0.5, 0, −0.5;  residual 1 − 0.3 − 0.5 = 0.2, −0.1, −0.5 − 0.3 + 0.5 = −0.3
    loss = nash_mp_loss(d_policy, d_prev, d_ref, pref, pref_other, eta=2.0, tau=0.5)
    assert_close(loss, torch.tensor([0.04, 0.01, 0.09], dtype=F64))
    loss.sum().backward()
    assert_close(d_policy.grad, torch.tensor([0.4, -0.2, -0.6], dtype=F64))


def test_one_exact_step_by_hand():
    # μ uniform, π = (0.5, 0.3, 0.2), τ = 0.5, η = 2: a = ½ and ηa = 1. Pπ = (0.53, 0.45, 0.50) (test_egpo).
    pi, mu, tau = [0.5, 0.3, 0.2], [1 / 3] * 3, 0.5
    prior = [math.sqrt(p * m) for p, m in zip(pi, mu)]
    half = [q * math.exp(w) for q, w in zip(prior, [0.53, 0.45, 0.50])]
    half = [h / sum(half) for h in half]
    half_wins = [sum(p_ij * h for p_ij, h in zip(row, half)) for row in WRPS]
    new = [q * math.exp(w) for q, w in zip(prior, half_wins)]
    expected = torch.tensor([[x / sum(new) for x in new]], dtype=F64)
    game = PreferenceGame.create(WRPS, mu, tau)
    got = solver().step(game, torch.tensor([pi], dtype=F64).log(), 0).exp()
    assert_close(got, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0, 4.0])
def test_the_step_is_egpos_extragradient_step_with_eta_over_one_plus_eta_tau(random_game, eta):
    game = random_game(10, 3, 0.1, contexts=5)
    start = torch.log_softmax(torch.randn(game.mu.shape, dtype=F64, generator=torch.Generator().manual_seed(2)), -1)
    eps = torch.finfo(F64).eps
    assert_close(solver(eta=eta).step(game, start, 0), extragradient_step(game, start, eta / (1 + eta * game.tau)),
                 rtol=0, atol=64 * eps)


def contraction(game, step, iterations):
    """Per-iteration factor of KL(π*‖π_t), fitted between t = 5 and the last t with KL above 1e-13."""
    star = solve_equilibrium(game).policy
    log_pi, kls = game.log_mu.clone(), []
    for t in range(iterations):
        log_pi = step(log_pi, t)
        kls.append(kl_divergence(star, log_pi.exp()).max().item())
    last = max(t for t, kl in enumerate(kls) if kl > 1e-13)
    return math.exp((math.log(kls[last]) - math.log(kls[5])) / (last - 5)), kls


@pytest.mark.parametrize("tau", [0.1, 0.01])
def test_linear_rate_and_comparison_with_egpo(random_game, tau):
    """Measured KL contraction per iteration: Nash-MP (η = 2) 0.69 at τ = 0.1 and 0.96 at τ = 0.01, i.e.
    (1+ητ)^(−2); EGPO's default 0.82 and 0.98, i.e. (1+τ)^(−2). The abstract's rate (1+2τ)^(−N/2), N = queries
    (2 per iteration), is (1+2τ)^(−t): it holds, and the KL also stays below it at every t."""
    game = random_game(10, 5, tau, contexts=10)
    iterations = 400 if tau == 0.1 else 3000
    nash_mp, egpo = solver(), get_solver("egpo")()
    rate, kls = contraction(game, lambda lp, t: nash_mp.step(game, lp, t), iterations)
    egpo_rate, _ = contraction(game, lambda lp, t: egpo.step(game, lp, t), iterations)
    assert rate == pytest.approx((1 + 2 * tau) ** -2, rel=0.02)
    assert egpo_rate == pytest.approx((1 + tau) ** -2, rel=0.02)
    star = solve_equilibrium(game).policy
    kl_start = kl_divergence(star, game.mu).max().item()
    assert all(kl <= max(kl_start * (1 + 2 * tau) ** -(t + 1), 1e-13) for t, kl in enumerate(kls))


def test_default_budget_reaches_gap_1e_10(random_game):
    game = random_game(10, 13, 0.1, contexts=10)
    log_pi = solver().init(game)
    for t in range(solver().default_iterations(game)):
        log_pi = solver().step(game, log_pi, t)
    assert game.gap(log_pi.exp()).max().item() <= 1e-10


def test_population_minimiser_is_the_proximal_step():
    """Exact expectations: pairs (y, y') ~ π_t ⊗ π_t, opponent y'' ~ π (any policy); the loss's minimiser over
    all policies is π_t^a μ^(1−a) exp(ηa P(y ≻ π)). LBFGS's accuracy on this quadratic: 1e-7 in L1."""
    game = PreferenceGame.create([[0.5, 0.9, 0.3, 0.6], [0.1, 0.5, 0.7, 0.2], [0.7, 0.3, 0.5, 0.8],
                                  [0.4, 0.8, 0.2, 0.5]], [0.1, 0.2, 0.3, 0.4], 0.2)
    g = torch.Generator().manual_seed(4)
    log_prev = torch.log_softmax(torch.randn(game.mu.shape, generator=g, dtype=F64), -1)
    opponent = torch.softmax(torch.randn(game.mu.shape, generator=g, dtype=F64), -1)
    prev, wins, eta = log_prev.exp(), game.win_rates(opponent), 2.0

    def pair(x):
        return x.unsqueeze(-1) - x.unsqueeze(-2)

    def loss(log_policy):
        per_pair = nash_mp_loss(pair(log_policy), pair(log_prev), pair(game.log_mu), wins.unsqueeze(-1),
                                wins.unsqueeze(-2), eta, game.tau)
        return (prev.unsqueeze(-1) * prev.unsqueeze(-2) * per_pair).sum()

    a = 1 / (1 + eta * game.tau)
    expected = torch.softmax(a * log_prev + (1 - a) * game.log_mu + eta * a * wins, -1)
    assert (lbfgs_minimiser(log_prev, loss) - expected).abs().sum(-1).max().item() <= 1e-7


def test_collect_keeps_the_pairs_for_the_full_step():
    """Half round: pairs and opponents from π_t; full round (same contexts object): the same pairs, fresh
    opponents from π_{t+½}, and the π_t log-probs of the half round."""
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.1)
    contexts = torch.arange(1)
    nash_mp = solver()
    first = Scripted(torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[0, 1]]))
    half = SelfPlayRound(first, TabularPolicy(game.log_mu), MatrixOracle(game), contexts, 2, True,
                         torch.Generator(), tau=0.1)
    batch = nash_mp.collect(half)        # first = second = opponent = [0, 1] (the scripted draw)
    assert_close(batch["preference"], torch.tensor([[0.5, 0.5]], dtype=F64))
    assert half.queries == 4
    second = Scripted(torch.zeros(1, 3), torch.tensor([[2, 2]]))
    full = SelfPlayRound(second, TabularPolicy(game.log_mu), MatrixOracle(game), contexts, 2, True,
                         torch.Generator(), tau=0.1)
    batch2 = nash_mp.collect(full)
    assert torch.equal(batch2["first"], batch["first"])
    assert_close(batch2["previous_first"], first.log_prob(contexts, torch.tensor([[0, 1]])))
    assert_close(batch2["preference"], torch.tensor([[0.8, 0.0]], dtype=F64))   # P(0 ≻ 2), P(1 ≻ 2)
    new_round = SelfPlayRound(second, TabularPolicy(game.log_mu), MatrixOracle(game), torch.arange(1), 2, True,
                              torch.Generator(), tau=0.1)
    assert torch.equal(nash_mp.collect(new_round)["first"], torch.tensor([[2, 2]]))   # a new iteration


def test_needs_positive_tau_and_valid_eta():
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.0, name="wrps")
    with pytest.raises(GameError, match="wrps: solver nash-mp needs tau > 0"):
        solver().init(game)
    with pytest.raises(BadInput, match="nash-mp: eta must be a finite number"):
        solver(eta=-1.0).step(game.with_tau(0.1), game.log_mu, 0)


# ---- sampled training on a tabular policy ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_default_sampled_run_reaches_the_equilibrium(random_game, seed):
    """The generic sampled settings (Adam lr 0.01, K = 8, one epoch) on a random N = 7 game at τ = 0.1: 16 000
    queries in 500 rounds. Measured final gaps over seeds 0–2: 0.0009–0.0021; gap ≤ 0.03 after ≤ 4 416 queries."""
    game = random_game(7, seed, 0.1)
    run = run_sampled(game, solver(), SampledConfig(iterations=500, seed=seed))
    assert run.metrics[-1]["queries"] == 500 * 4 * 8
    assert run.metrics[-1]["gap"] <= 0.01


def test_sampled_training_with_bernoulli_labels(random_game):
    game = random_game(7, 0, 0.1)
    run = run_sampled(game, solver(), SampledConfig(iterations=500, labels="bernoulli"))
    assert run.metrics[-1]["gap"] <= 0.03


# ---- language model, end to end through the command line -------------------------------------------------------
def test_train_command_on_the_tiny_model(tiny_dir, tmp_path):
    """`nashpref train --solver nash-mp`, hf sampler, 2 iterations, K = 3, 4 prompts: 4K queries per prompt and
    iteration. The reported loss is the full step's at θ_t = π_t = μ, the mean of (ηa(P(y ≻ y'') − P(y' ≻ y'')))²
    over the full step's saved queries, ηa = η/(1+ητ)."""
    from nashpref.io import read_jsonl

    out = train_tiny(tiny_dir, tmp_path, "nash-mp")
    rows = read_jsonl(out / "metrics.jsonl")
    saved = torch.tensor([r["preference"] for r in read_jsonl(out / "rounds" / "iteration-0001.jsonl")], dtype=F64)
    assert saved.numel() == 4 * 4 * 3 and rows[0]["queries"] == 48 and rows[1]["queries"] == 96
    full = saved[24:].reshape(2, -1)            # the full step's two prefer calls: (y, y''), then (y', y'')
    expected = ((full[0] - full[1]) * 2.0 / (1 + 2.0 * 0.25)).square().mean().item()
    assert rows[0]["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
