"""ONPO: the loss by hand, two exact steps by hand, the O(1/T) bound on the average iterate's τ = 0 gap at every
T (and its fitted log-log slope), the linear last-iterate rate at τ > 0, the loss's population minimiser as
the optimistic step, the collect plan with its memory, and sampled training on tabular policies."""

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from conftest import WRPS, Scripted, lbfgs_minimiser, make_solver, train_tiny
from conftest_lm import tiny_dir  # noqa: F401  (fixture)
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.errors import BadInput
from nashpref.core.game import GameError, PreferenceGame, kl_divergence
from nashpref.core.tabular import TabularPolicy
from nashpref.core.tabular import MatrixOracle
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.rounds import SelfPlayRound
from nashpref.solvers.hedge import hedge_log_range
from nashpref.solvers.onpo import onpo_loss

F64 = torch.float64


def solver(**options):
    return make_solver("onpo", **options)


def test_loss_on_three_pairs_by_hand():
    # η = 1, τ = 0.5: ητ = ½, c = ½. h = Δθ − ½Δμ − ½Δt.
    d_policy = torch.tensor([1.0, 0.0, -0.5], dtype=F64)
    d_ref = torch.tensor([0.4, 0.2, 0.0], dtype=F64)
    d_prev = torch.tensor([0.2, -0.2, 0.6], dtype=F64)
    pref = torch.tensor([0.9, 0.5, 0.1], dtype=F64)
    memory = torch.tensor([0.2, -0.4, 0.0], dtype=F64)
    # h = 1 − 0.2 − 0.1 = 0.7;  0 − 0.1 + 0.1 = 0;  −0.5 − 0 − 0.3 = −0.8
    # target 1.5(P − ½) − ½ΔQ = 0.6 − 0.1 = 0.5;  0 + 0.2 = 0.2;  −0.6 − 0 = −0.6  → loss 0.04, 0.04, 0.04
    assert_close(onpo_loss(d_policy, d_ref, d_prev, pref, memory, eta=1.0, tau=0.5),
                 torch.tensor([0.04, 0.04, 0.04], dtype=F64))
    # no memory: target P − ½ = 0.4, 0, −0.4 → (0.3², 0, 0.4²)
    assert_close(onpo_loss(d_policy, d_ref, d_prev, pref, None, eta=1.0, tau=0.5),
                 torch.tensor([0.09, 0.0, 0.16], dtype=F64))


def test_two_exact_steps_by_hand():
    # τ = 0, η = 1, μ uniform on weighted RPS. Step 1 (no prediction): π_1 ∝ μ exp(g_0), g_0 = Pμ = (17/30, 11/30, 17/30).
    # Step 2: π_2 ∝ π_1 exp(2g_1 − g_0).
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.0)
    g0 = [sum(row) / 3 for row in WRPS]
    pi1 = [math.exp(g) for g in g0]
    pi1 = [p / sum(pi1) for p in pi1]
    g1 = [sum(p_ij * p for p_ij, p in zip(row, pi1)) for row in WRPS]
    pi2 = [p * math.exp(2 * a - b) for p, a, b in zip(pi1, g1, g0)]
    pi2 = [p / sum(pi2) for p in pi2]
    onpo = solver()
    log_pi = onpo.init(game)
    log_pi = onpo.step(game, log_pi, 0)
    assert_close(log_pi.exp(), torch.tensor([pi1], dtype=F64), rtol=0, atol=1e-15)
    assert_close(onpo.step(game, log_pi, 1).exp(), torch.tensor([pi2], dtype=F64), rtol=0, atol=1e-15)


def average_gaps(game, onpo, iterations):
    log_pi, total, gaps = onpo.init(game), torch.zeros_like(game.mu), []
    for t in range(iterations):
        log_pi = onpo.step(game, log_pi, t)
        total += log_pi.exp()
        gaps.append(game.gap(total / (t + 1), tau=0.0).max().item())
    return np.array(gaps), log_pi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_iterate_gap_is_order_one_over_t_at_tau_zero(random_game, seed):
    """Gap₀(π̄_T) ≤ 2(L + η)/(ηT) at every T (RVU bound); measured ≤ 0.9·2L/(ηT). The fitted log-log slope of
    the gap over T ∈ [100, 4000] is −1.00 (Hedge, SPPO's dynamics, has −½)."""
    game = random_game(10, seed, 0.0, contexts=10)
    onpo = solver()
    gaps, _ = average_gaps(game, onpo, 4000)
    T = np.arange(1, 4001)
    eta, log_range = 1.0, hedge_log_range(game)
    assert (gaps <= 2 * (log_range + eta) / (eta * T)).all()
    slope = np.polyfit(np.log(T[99:]), np.log(gaps[99:]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.05)


def test_default_budget_meets_the_target_gap(random_game):
    game = random_game(10, 7, 0.0, contexts=10)
    onpo = solver(target_gap=0.01)
    gaps, _ = average_gaps(game, onpo, onpo.default_iterations(game))
    assert gaps[-1] <= 0.01


def test_last_iterate_converges_linearly_at_tau_0_1(random_game):
    """KL(π*‖π_t) contracts by ≈ (1 − ητ)² = 0.826 per iteration at η = 1/(1+τ) (measured 0.81–0.83)."""
    game = random_game(10, 5, 0.1, contexts=10)
    star = solve_equilibrium(game).policy
    onpo, log_pi, kls = solver(), game.log_mu.clone(), []
    for t in range(300):
        log_pi = onpo.step(game, log_pi, t)
        kls.append(kl_divergence(star, log_pi.exp()).max().item())
    last = max(t for t, kl in enumerate(kls) if kl > 1e-13)
    rate = math.exp((math.log(kls[last]) - math.log(kls[10])) / (last - 10))
    assert rate == pytest.approx((1 - 0.1 / 1.1) ** 2, rel=0.03)
    assert game.gap(log_pi.exp()).max().item() <= 1e-12


def test_population_minimiser_is_the_optimistic_step():
    """Pairs (y, y') ~ π_t ⊗ π_t with P(y ≻ y'), memory Q(y) = P(y ≻ π_{t−1}) in expectation: the loss's minimiser
    is π_t^c μ^(ητ) exp(η[(1+c)P(y ≻ π_t) − c P(y ≻ π_{t−1})]). LBFGS accuracy: 1e-7 in L1."""
    game = PreferenceGame.create([[0.5, 0.9, 0.3, 0.6], [0.1, 0.5, 0.7, 0.2], [0.7, 0.3, 0.5, 0.8],
                                  [0.4, 0.8, 0.2, 0.5]], [0.1, 0.2, 0.3, 0.4], 0.2)
    g = torch.Generator().manual_seed(4)
    log_prev = torch.log_softmax(torch.randn(game.mu.shape, generator=g, dtype=F64), -1)
    older = torch.softmax(torch.randn(game.mu.shape, generator=g, dtype=F64), -1)
    prev, eta = log_prev.exp(), 0.8
    memory = game.win_rates(older)

    def pair(x):
        return x.unsqueeze(-1) - x.unsqueeze(-2)

    def loss(log_policy):
        per_pair = onpo_loss(pair(log_policy), pair(game.log_mu), pair(log_prev), game.P, pair(memory), eta,
                             game.tau)
        return (prev.unsqueeze(-1) * prev.unsqueeze(-2) * per_pair).sum()

    c = 1 - eta * game.tau
    expected = game.mirror_step(log_prev, (1 + c) * game.win_rates(prev) - c * memory, eta).exp()
    assert (lbfgs_minimiser(log_prev, loss) - expected).abs().sum(-1).max().item() <= 1e-7


def test_collect_queries_every_pair_and_then_the_previous_round():
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.0)
    onpo = solver()

    def round_with(responses):
        return SelfPlayRound(Scripted(game.log_mu, responses), TabularPolicy(game.log_mu), MatrixOracle(game),
                             torch.arange(1), 3, True, torch.Generator(), tau=0.0)

    first = round_with(torch.tensor([[0, 1, 2]]))
    batch = onpo.collect(first)
    assert_close(batch["preference"], torch.tensor([[0.4, 0.8, 0.0]], dtype=F64))   # pairs (0,1), (0,2), (1,2)
    assert "memory" not in batch and first.queries == 3
    second = round_with(torch.tensor([[2, 2, 1]]))
    batch = onpo.collect(second)
    # against the previous round's (0, 1, 2): P(2 ≻ 0), P(2 ≻ 1), P(1 ≻ 2)
    assert_close(batch["memory"], torch.tensor([[0.2, 1.0, 0.0]], dtype=F64))
    assert second.queries == 3 + 3


def test_bad_eta():
    game = PreferenceGame.create(WRPS, [1 / 3] * 3, 0.5, name="wrps")
    with pytest.raises(GameError, match="onpo: needs eta·tau < 1"):
        solver(eta=2.0).step(game, game.log_mu, 0)
    with pytest.raises(BadInput, match="onpo: eta must be a finite number"):
        solver(eta=0.0).step(game, game.log_mu, 0)


# ---- sampled training on a tabular policy ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_generic_sampled_run_reaches_the_regularised_equilibrium(random_game, seed):
    """Generic settings (Adam lr 0.01, K = 8, one epoch, 500 rounds: 18 000 queries) on a random N = 7 game at
    τ = 0.1. Measured over seeds 0–2: average iterate 0.0055–0.010, last iterate 0.0016–0.0042."""
    game = random_game(7, seed, 0.1)
    run = run_sampled(game, solver(), SampledConfig(iterations=500, seed=seed))
    assert run.metrics[-1]["gap"] <= 0.02 and run.metrics[-1]["gap_last"] <= 0.01


# ---- language model, end to end through the command line -------------------------------------------------------
def test_train_command_on_the_tiny_model(tiny_dir, tmp_path):
    """`nashpref train --solver onpo`, hf sampler, 2 iterations, K = 3, 4 prompts. Round 1 has no memory, so its
    loss at θ = π_t = μ is the mean of (η(P − ½))² over the saved pairs (η = 1/(1+τ)); round 2 adds K queries per
    prompt against round 1's responses."""
    from nashpref.io import read_jsonl

    out = train_tiny(tiny_dir, tmp_path, "onpo")
    rows = read_jsonl(out / "metrics.jsonl")
    first = [r["preference"] for r in read_jsonl(out / "rounds" / "iteration-0001.jsonl")]
    assert len(first) == 4 * 3 and rows[1]["pairs"] == 4 * (3 + 3)
    expected = ((torch.tensor(first, dtype=F64) - 0.5) / 1.25).square().mean().item()
    assert rows[0]["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert rows[1]["optimistic"] == 1.0 and rows[0]["optimistic"] == 0.0
