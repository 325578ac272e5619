"""Iterative DPO (the RLHF baseline): cDPO arithmetic, the BT fit against scipy, one exact step, its fixed points
(Gibbs of the BT reward, not the Nash equilibrium), the unstable symmetric cycle, the drift of the 'previous'
recipe, and sampled training that does not reach the NE on intransitive games."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import root

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.exact import run_exact
from nashpref.core.game import PreferenceGame
from nashpref.core.gamefile import load_game
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.core.tabular import MatrixOracle, TabularPolicy
from nashpref.errors import NashprefError
from nashpref.selfplay import SelfPlayRound
from nashpref.solvers.iterative_dpo import CHUNK, Config, IterativeDPO, _solve_positive_definite, fit_bradley_terry
from nashpref.solvers.losses import dpo_loss
from nashpref.tolerance import assert_close, tolerance
from conftest import Scripted

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

f64 = torch.float64


def scipy_bt_scores(P: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Independent BT maximum likelihood under pair weights w_i w_j, no ridge: scipy's root finder on the
    stationarity equations divided by w_i, Σ_j w_j (P_ij − σ(s_i − s_j)) = 0 for i ≥ 1, with s_0 = 0. The
    division keeps rare actions (w_i ~ 1e-9) as well resolved as common ones."""
    def equations(free):
        s = np.concatenate([[0.0], free])
        return ((P - 1.0 / (1.0 + np.exp(s[None, :] - s[:, None]))) * w[None, :]).sum(1)[1:]

    result = root(equations, np.zeros(len(w) - 1), method="hybr", tol=1e-13)
    assert np.abs(equations(result.x)).max() <= 1e-13       # scipy's own stopping tolerance (tol above)
    return np.concatenate([[0.0], result.x])


def test_cdpo_loss_matches_hand_computation():
    chosen = torch.tensor([0.5, 0.0, 1.0], dtype=f64)
    rejected = torch.tensor([0.0, 0.0, 2.0], dtype=f64)
    # β = 2: logits (1, 0, −2); −log σ(1) = 0.3132617, −log σ(−1) = 1.3132617,
    #                            −log σ(−2) = 2.1269280, −log σ(2) = 0.1269280
    # ε = 0.1: 0.9·0.3132617 + 0.1·1.3132617 = 0.4132617;  log 2;  0.9·2.1269280 + 0.1·0.1269280 = 1.9269280
    expected = torch.tensor([0.4132616875182229, math.log(2), 1.9269280110429727], dtype=f64)
    assert_close(dpo_loss(chosen, rejected, beta=2.0, label_smoothing=0.1), expected)
    plain = torch.tensor([0.31326168751822286, math.log(2), 2.1269280110429727], dtype=f64)
    assert_close(dpo_loss(chosen, rejected, beta=2.0), plain)


def test_bt_fit_matches_scipy():
    generator = np.random.default_rng(3)
    game = load_game("egpo-random")
    for c in range(3):
        P = game.P[c].numpy()
        w = generator.dirichlet(np.ones(10) * 0.5)
        ours = fit_bradley_terry(game.P[c:c + 1], torch.tensor(w[None]), ridge=1e-10)[0].numpy()
        theirs = scipy_bt_scores(P, w)
        assert np.abs((ours - ours[0]) - theirs).max() <= 1e-6      # two iterative fits (ridge 1e-10): their accuracy


def test_batched_bt_fit_matches_scipy_across_chunks():
    """More contexts than one chunk, with weights from near-uniform to near-pure, so that contexts converge after
    different numbers of steps and stop one by one: each must still match its own scipy fit."""
    generator = np.random.default_rng(5)
    game = load_game("egpo-random")
    repeats = CHUNK // game.num_contexts + 2
    P = game.P.repeat(repeats, 1, 1)
    w = np.stack([generator.dirichlet(np.ones(10) * concentration)
                  for concentration in np.geomspace(0.05, 5.0, P.shape[0])])
    ours = fit_bradley_terry(P, torch.tensor(w), ridge=1e-10).numpy()
    assert P.shape[0] > CHUNK
    for c in range(P.shape[0]):
        theirs = scipy_bt_scores(P[c].numpy(), w[c])
        assert np.abs((ours[c] - ours[c, 0]) - theirs).max() <= 1e-6    # as above: the fits' accuracy


def test_linear_solve_falls_back_when_cholesky_fails():
    spd = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=f64)
    indefinite = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=f64)   # no Cholesky factor
    rhs = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=f64)
    for matrices in (torch.stack([spd, spd]), torch.stack([spd, indefinite])):
        expected = np.linalg.solve(matrices.numpy(), rhs.numpy()[..., None])[..., 0]
        # a 2×2 solve: backward error of a few eps, amplified by the condition number
        cond = float(np.linalg.cond(matrices.numpy()).max())
        assert_close(_solve_positive_definite(matrices, rhs), torch.tensor(expected),
                     scale=cond * float(np.abs(expected).max()), length=2)


def test_bt_fit_stays_finite_on_deterministic_preferences():
    P = torch.tensor([[[0.5, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.5]]], dtype=f64)   # a total order
    scores = fit_bradley_terry(P, torch.full((1, 3), 1 / 3, dtype=f64), ridge=1e-10)
    assert torch.isfinite(scores).all()
    assert scores[0, 0] > scores[0, 1] > scores[0, 2]


def test_one_exact_step_by_hand():
    game = PreferenceGame.create([[0.5, 0.7], [0.3, 0.5]], [0.5, 0.5], tau=0.5)
    # two actions: the BT fit is exact, s₀ − s₁ = logit 0.7 = log(7/3)
    # initial: π₁ ∝ μ exp(s/τ): odds (7/3)² = 49/9, π₁(0) = 49/58
    initial = IterativeDPO().step(game, game.log_mu, 0).exp()
    # 1e-9 here and below: the Bradley-Terry fit is iterative (Newton with ridge 1e-10), so its scores carry its
    # stopping accuracy, not rounding
    torch.testing.assert_close(initial, torch.tensor([[49 / 58, 9 / 58]], dtype=f64), rtol=0, atol=1e-9)
    # previous, from π₀ = (0.8, 0.2): odds 4·49/9 = 196/9, π₁(0) = 196/205
    log_pi = torch.log(torch.tensor([[0.8, 0.2]], dtype=f64))
    previous = IterativeDPO(Config(reference="previous")).step(game, log_pi, 0).exp()
    torch.testing.assert_close(previous, torch.tensor([[196 / 205, 9 / 205]], dtype=f64), rtol=0, atol=1e-9)


def test_bradley_terry_game_reaches_the_gibbs_policy_not_the_equilibrium():
    game = load_game("bt-transitive")          # σ(r − r'), r = (2, 1.5, 1, 0.5, 0), τ = 0.1
    gibbs = torch.softmax(game.log_mu + torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0], dtype=f64) / game.tau, -1)
    run = run_exact(game, IterativeDPO())
    assert (run.last_policies - gibbs).abs().sum().item() <= 1e-9           # observed 4e-11
    star = solve_equilibrium(game).policy
    assert (run.last_policies - star).abs().sum().item() >= 0.8             # ≈ 0.87: RLHF ≠ NLHF


def test_linear_reward_reaches_its_own_fixed_point():
    game = load_game("linear-reward")
    pi = run_exact(game, IterativeDPO()).last_policies
    scores = scipy_bt_scores(game.P[0].numpy(), pi[0].numpy())
    certificate = torch.softmax(game.log_mu + torch.tensor(scores) / game.tau, -1)
    assert (pi - certificate).abs().sum().item() <= 1e-6                    # π = Gibbs(μ, ŝ(π)/τ)
    star = solve_equilibrium(game).policy                                   # = Gibbs(μ, r/(2τ))
    assert (pi - star).abs().sum().item() >= 0.5                            # observed 0.93


@pytest.mark.parametrize("name", ["weighted-rps", "egpo-random", "bt-mixture"])
def test_intransitive_games_stay_away_from_the_equilibrium(name):
    game = load_game(name)
    run = run_exact(game, IterativeDPO())
    assert game.gap(run.last_policies).min().item() >= 0.05      # observed ≥ 0.27, 0.46, 0.29


def test_symmetric_cycle_lands_on_the_uniform_equilibrium_which_is_unstable():
    game = load_game("condorcet-3")           # P = ½ + c·C with C the 3-cycle, c ≈ 1/6; uniform μ
    solver = IterativeDPO()
    scores = solver.scores(game, game.mu)
    assert (scores.max() - scores.min()).item() <= 1e-12                    # the BT scores tie
    log_pi = solver.step(game, game.log_mu, 0)
    assert_close(log_pi.exp(), game.uniform(), scale=1.0, length=3)          # one round lands on the NE
    # Linearised round: ε ↦ (4c/(3τ))·Cε (s − s̄ = 4c·Cε from the BT stationarity, π' − u = (s − s̄)/(3τ)),
    # a rotation with gain 4c/(√3 τ) = 3.85 at τ = 0.1: the NE is a fixed point but repels.
    c = game.P[0, 0, 1].item() - 0.5
    C = torch.tensor([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]], dtype=f64)
    epsilon = torch.tensor([1e-7, -3e-7, 2e-7], dtype=f64)
    for tau in (0.1, 1.0):
        moved = solver.step(game.with_tau(tau), torch.log(game.uniform() + epsilon), 0).exp()[0] - 1 / 3
        predicted = 4 * c / (3 * tau) * (C @ epsilon)
        # the linearisation's own error, O(|ε|·gain) relative, not rounding
        torch.testing.assert_close(moved, predicted, rtol=1e-4, atol=0)
    assert 4 * c / (math.sqrt(3) * 0.1) == pytest.approx(3.849, abs=1e-3)      # the 4 digits quoted above


def test_previous_reference_drifts_to_the_argmax():
    game = load_game("bt-transitive")
    rewards = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0], dtype=f64)
    solver = IterativeDPO(Config(reference="previous"))
    log_pi = game.log_mu
    for t in range(10):
        log_pi = solver.step(game, log_pi, t)
    # log π_t = log μ + t·r/τ + const: every round adds the same exact BT scores
    expected = torch.log_softmax(game.log_mu + 10 * rewards / game.tau, -1)
    torch.testing.assert_close(log_pi, expected, rtol=1e-9, atol=1e-9)       # 10 iterative BT fits (see above)
    assert log_pi.exp()[0, 0].item() >= 1 - 1e-20


def test_collect_drops_ties_and_scores_against_the_other_samples():
    game = load_game("weighted-rps")          # P[0,1] = 0.4, P[0,2] = 0.8, P[1,2] = 0
    responses = torch.tensor([[0, 1, 2, 2], [1, 1, 1, 1]])
    two = PreferenceGame.create(torch.cat([game.P, game.P]), torch.cat([game.mu, game.mu]), 0.1)
    round_ = SelfPlayRound(Scripted(two.log_mu, responses), TabularPolicy(two.log_mu), MatrixOracle(two),
                           torch.arange(2), 4, True, torch.Generator(), tau=0.1)
    batch = IterativeDPO().collect(round_)
    # context 0, means over the 3 others: rock (0.4+0.8+0.8)/3, paper (0.6+0+0)/3, scissors (0.2+1+½)/3
    assert batch["responses"][0].tolist() == [0, 1] and batch["keep"][0].item() == 1.0
    assert batch["keep"][1].item() == 0.0     # all four samples identical: a tie, dropped
    assert batch["tau"] == 0.1


@pytest.mark.parametrize("name", ["weighted-rps", "bt-mixture", "egpo-random"])
def test_sampled_training_does_not_reach_the_equilibrium_on_intransitive_games(name):
    """Best vs worst of K = 8, cDPO (ε = 0.1, β = τ), reference μ. The budget is the one in which INPO reaches
    gap ≤ 0.02 (tests/test_inpo.py): Adam lr 0.02, 1000 rounds. The DPO margin target log 9/τ = 22 keeps pushing
    toward near-pure policies. Measured final gaps over seeds 0–4: weighted-rps 0.06–0.47, bt-mixture 0.11–0.22
    (INPO: ≤ 0.0005), egpo-random ≥ 0.067 in every context (≥ 1.15 in the worst)."""
    game = load_game(name)
    run = run_sampled(game, IterativeDPO(), SampledConfig(iterations=1000, samples=8, lr=0.02, optimizer="adam"))
    assert game.gap(run.last_policies).min().item() >= 0.05


def test_bad_options_are_one_line_errors():
    game = load_game("bt-transitive")
    with pytest.raises(NashprefError, match="reference must be"):
        IterativeDPO(Config(reference="sft")).step(game, game.log_mu, 0)
    with pytest.raises(NashprefError, match="tau > 0"):
        IterativeDPO().step(game.with_tau(0.0), game.log_mu, 0)
