"""MPO: one MMD step by hand and against the argmax that defines it, last-iterate convergence to the τ = 0
equilibrium (weighted-rps, a random game with partial support) at a linear rate, what happens without magnet
refreshes, the loss's population minimiser, sampled training, and resuming COMAL / MPO runs with their anchor."""

import math

import pytest
import torch
from torch.testing import assert_close

from nashpref.lm.checkpoints import latest_state
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.exact import run_exact
from nashpref.core.game import PreferenceGame, kl_divergence
from nashpref.errors import NashprefError
from nashpref.core.gamefile import load_game
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.solvers.comal import COMAL, Config as ComalConfig
from nashpref.solvers.inpo import default_eta
from nashpref.solvers.mpo import MPO, Config
from nashpref.solvers.spo import kl_policy_gradient_loss
from conftest import build_random_game, lbfgs_minimiser

f64 = torch.float64


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_mmd_steps_by_hand():
    game = PreferenceGame.create([[0.5, 0.7], [0.3, 0.5]], [0.5, 0.5], tau=0.0)    # (Pπ)(0) − (Pπ)(1) = 0.2
    # α = ½, η = 2: log-odds (L_t + ηα L_ν + η·0.2)/(1 + ηα) with ν = π₀ = μ (L = 0): 0.4/2 = 0.2
    solver = MPO(Config(alpha=0.5, eta=2.0, period=2))
    first = solver.step(game, solver.init(game), 0)
    assert_close(first.exp()[0, 0], torch.tensor(sigmoid(0.2), dtype=f64))
    second = solver.step(game, first, 1)                          # same magnet: (0.2 + 0 + 0.4)/2
    assert_close(second.exp()[0, 0], torch.tensor(sigmoid(0.3), dtype=f64))
    refreshed = MPO(Config(alpha=0.5, eta=2.0, period=1))
    log_pi = refreshed.step(game, refreshed.init(game), 0)
    assert_close(refreshed.step(game, log_pi, 1).exp()[0, 0], torch.tensor(sigmoid(0.4), dtype=f64))  # ν = π₁
    # default η: its mirror step η/(1 + ηα) is INPO's α/(α² + ¼)
    alpha, eta, _ = MPO().options()
    assert eta / (1 + eta * alpha) == pytest.approx(default_eta(alpha), rel=1e-15)


def test_step_is_the_argmax_that_defines_mmd():
    """algorithms.md §8.3 (tagged DER): the closed form maximises η[⟨P(·≻π_t), π⟩ − α KL(π‖ν)] − KL(π‖π_t). Checked
    by maximising that objective directly (LBFGS over logits) from random π_t and ν on egpo-random."""
    game = load_game("egpo-random", tau=0.0)
    generator = torch.Generator().manual_seed(4)
    log_magnet = torch.log_softmax(torch.randn(game.mu.shape, generator=generator, dtype=f64), -1)
    log_prev = torch.log_softmax(torch.randn(game.mu.shape, generator=generator, dtype=f64), -1)
    alpha, eta = 0.3, 0.8
    scores = game.win_rates(log_prev.exp())

    def negative_objective(log_pi):
        pi = log_pi.exp()
        return -(eta * ((pi * scores).sum() - alpha * (pi * (log_pi - log_magnet)).sum())
                 - (pi * (log_pi - log_prev)).sum())

    solver = MPO(Config(alpha=alpha, eta=eta, period=10))
    solver.step(game, log_magnet, 0)                              # ν ← the random magnet
    step = solver.step(game, log_prev, 1).exp()
    assert (lbfgs_minimiser(log_prev, negative_objective) - step).abs().sum(-1).max().item() <= 1e-7


@pytest.mark.parametrize("name, bound", [("weighted-rps", 1e-10), ("partial-support", 1e-6)])
def test_last_iterate_reaches_the_unregularised_equilibrium_linearly(name, bound):
    """Default α = 0.1, period 50, 20 000 steps. Observed Gap₀ ≤ 1e-6 from step 1721 (weighted-rps) and 19 562
    (partial-support: the random N = 8 game of tests/test_comal.py, 5 actions in the support); fitted rate of the
    gap per step 0.9925 and 0.9994 (log-linear fit over 1e-9 < Gap₀ < 1e-2)."""
    game = build_random_game(8, 2, 0.0) if name == "partial-support" else load_game(name, tau=0.0)
    star = solve_equilibrium(game).policy
    run = run_exact(game, MPO(), log_points=200)
    assert run.iterations == 20_000
    assert game.gap(run.last_policies).item() <= bound
    # linear rate: log Gap₀ falls along a straight line between 1e-2 and 1e-9 (before rounding takes over)
    window = [(row["iteration"], math.log(row["gap_unregularized"])) for row in run.metrics
              if 1e-9 < row["gap_unregularized"] < 1e-2]
    x = torch.tensor([w[0] for w in window], dtype=f64)
    y = torch.tensor([w[1] for w in window], dtype=f64)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert y.max() - y.min() >= math.log(1e3) and math.exp(slope.item()) <= 0.9997
    assert kl_divergence(star, run.last_policies).item() <= 100 * bound


def test_without_refreshes_the_last_iterate_stops_at_the_regularised_equilibrium():
    """period → ∞ is MMD towards the fixed magnet μ: the last iterate converges to the α-regularised equilibrium
    (gap at τ = α ≤ 1e-12), whose unregularised gap stays 0.083 on weighted-rps at α = 0.1."""
    game = load_game("weighted-rps", tau=0.0)
    run = run_exact(game, MPO(Config(period=10 ** 9)), 3000, log_points=2)
    regularised = solve_equilibrium(game.with_tau(0.1)).policy
    assert game.gap(run.last_policies, tau=0.1).item() <= 1e-12
    assert game.gap(run.last_policies).item() == pytest.approx(game.gap(regularised).item(), abs=1e-9)
    assert game.gap(run.last_policies).item() >= 0.08


def test_population_minimiser_is_the_mmd_step():
    """With exact advantages A = Pπ_t − ½ and the expectation over y ~ π_t, MPO's per-sample loss is minimised
    exactly by the MMD step with the magnet ν (LBFGS; 1e-7 L1)."""
    game = load_game("egpo-random", tau=0.0)
    generator = torch.Generator().manual_seed(5)
    log_magnet = torch.log_softmax(torch.randn(game.mu.shape, generator=generator, dtype=f64), -1)
    log_prev = torch.log_softmax(torch.randn(game.mu.shape, generator=generator, dtype=f64), -1)
    prev = log_prev.exp()
    advantage = game.win_rates(prev) - 0.5
    solver = MPO(Config(alpha=0.2, period=10))
    alpha, eta, _ = solver.options()

    def loss(log_policy):
        return (prev * kl_policy_gradient_loss(log_policy, log_prev, advantage, eta, log_magnet, alpha)).sum()

    solver.step(game, log_magnet, 0)
    step = solver.step(game, log_prev, 1).exp()
    assert (lbfgs_minimiser(log_prev, loss) - step).abs().sum(-1).max().item() <= 1e-7


def test_sampled_training_reaches_the_unregularised_equilibrium():
    """MPO.sampled_defaults / sampled_options on weighted-rps (optimistic MMD, α = 0.02, η = 1, magnet refreshed
    every 100 rounds; covered rounds: 1024 μ-samples and 8192 opponents, each distinct pair asked once, SGD lr
    1/1.02, 2000 rounds: the same steps as COMAL's defaults). Measured last-iterate Gap₀ (seed 0): 0.0021, 0.0015,
    0.0007, 0.0045 after 500, 1000, 1500 and 2000 rounds (6k queries); the MMD defaults before (α = 0.1, 1024
    opponents, lr 0.385) were at 0.022, 0.0025, 0.0007, 0.001. The on-policy
    loss (K = 8, Adam lr 0.01, period 200) wandered at Adam's noise floor: 0.073, 0.022, 0.081, 0.003 after 750,
    1500, 2250 and 3000 rounds."""
    game = load_game("weighted-rps")
    run = run_sampled(game, MPO(Config(**MPO.sampled_options)), SampledConfig(**MPO.sampled_defaults, seed=0))
    assert game.gap(run.last_policies, tau=0.0).item() <= SAMPLED_BOUND


SAMPLED_BOUND = 0.03


class Crash(Exception):
    pass


@pytest.mark.parametrize("make", [lambda: MPO(Config(period=4)), lambda: COMAL(ComalConfig(tau=0.1, period=4))],
                         ids=["mpo", "comal"])
def test_a_resumed_run_keeps_its_anchor_and_ends_bit_identical(tmp_path, make):
    """Crash after iteration 6 (the anchor was taken at round 4 and is not π_6): the resumed run must rebuild it
    from the checkpoint. Bernoulli labels, minibatches and a context subset make every RNG and state matter."""
    game = build_random_game(4, 1, 0.1, contexts=5)
    config = SampledConfig(iterations=12, samples=3, labels="bernoulli", lr=0.03, optimizer="adam", epochs=2,
                           minibatches=2, contexts_per_round=3, seed=5)
    whole = run_sampled(game, make(), config)

    def crash_at_7(t, row):
        if t == 7:
            raise Crash

    with pytest.raises(Crash):
        run_sampled(game, make(), config, crash_at_7, checkpoint_dir=tmp_path)
    saved = latest_state(tmp_path)
    assert saved["iteration"] == 6 and saved["solver"]["rounds"] == 6
    resumed = run_sampled(game, make(), config, checkpoint_dir=tmp_path, resume=True)
    assert torch.equal(resumed.last_policies, whole.last_policies)
    assert [r["loss"] for r in resumed.metrics] == [r["loss"] for r in whole.metrics]
    # without the saved anchor (refreshed at the resume instead) the run differs: the state is really needed
    solver = make()
    solver.load_state_dict = lambda state: None
    with pytest.raises(Crash):
        run_sampled(game, make(), config, crash_at_7, checkpoint_dir=tmp_path / "again")
    forgetful = run_sampled(game, solver, config, checkpoint_dir=tmp_path / "again", resume=True)
    assert not torch.equal(forgetful.last_policies, whole.last_policies)


def test_bad_options_are_one_line_errors():
    game = load_game("weighted-rps", tau=0.0)
    with pytest.raises(NashprefError, match="alpha"):
        MPO(Config(alpha=-1.0))
    with pytest.raises(NashprefError, match="period must be"):
        MPO(Config(period=0))
    assert MPO().default_iterations(game) == 20_000
