"""COMAL: one proximal step by hand (exact, INPO and EGPO inner loops), last-iterate convergence to the τ = 0
equilibrium of the linear program (weighted-rps, and a random game whose equilibrium has partial support) at a
linear rate, the monotone KL to it, the loss's population minimiser, sampled training, resuming with the anchor,
and `solve --tau 0`."""

import json
import math

import pytest
import torch
from torch.testing import assert_close

from nashpref.cli import main
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.exact import run_exact
from nashpref.core.game import PreferenceGame, kl_divergence
from nashpref.errors import NashprefError
from nashpref.core.gamefile import load_game
from nashpref.core.tabular import TabularPolicy
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.solvers.comal import COMAL, Config
from nashpref.solvers.inpo import default_eta, inpo_loss
from conftest import build_random_game, lbfgs_minimiser

f64 = torch.float64
EPS = torch.finfo(f64).eps


def partial_support_game() -> PreferenceGame:
    """A random N = 8 game at τ = 0 whose LP equilibrium uses 5 actions (smallest weight 0.063); the 3 others
    lose to it by at least 0.057."""
    return build_random_game(8, 2, 0.0)


def two_actions() -> PreferenceGame:
    # P(0 ≻ 1) = 0.7. With two actions (Pπ)(0) − (Pπ)(1) = 0.7 − ½ = 0.2 for every π (A = P − ½ is skew).
    return PreferenceGame.create([[0.5, 0.7], [0.3, 0.5]], [0.5, 0.5], tau=0.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_one_proximal_step_by_hand():
    game = two_actions()
    # π₁ ∝ π₀ exp(Pπ₁/τ): log-odds 0 + 0.2/τ = 0.4 at τ = ½
    step = COMAL(Config(tau=0.5)).step(game, game.log_mu, 0).exp()
    assert_close(step, torch.tensor([[sigmoid(0.4), sigmoid(-0.4)]], dtype=f64), rtol=0, atol=1e-15)


def test_iterative_inner_steps_by_hand():
    game = two_actions()
    # INPO at τ = ½: η = τ/(τ² + ¼) = 1, ητ = ½; log-odds ½·L_t + ½·L_ν + 0.2, the anchor ν = π₀ (L_ν = 0)
    solver = COMAL(Config(tau=0.5, inner="inpo", inner_steps=2))
    log_pi = solver.init(game)
    first = solver.step(game, log_pi, 0)
    second = solver.step(game, first, 1)                       # still inside outer step 0: ν = π₀
    assert_close(first.exp()[0, 0], torch.tensor(sigmoid(0.2), dtype=f64))
    assert_close(second.exp()[0, 0], torch.tensor(sigmoid(0.5 * 0.2 + 0.2), dtype=f64))
    third = solver.step(game, second, 2)                       # outer step 1: ν = π₂, log-odds 0.3
    assert_close(third.exp()[0, 0], torch.tensor(sigmoid(0.3 + 0.2), dtype=f64))
    # EGPO at τ = ½: η = 1/(τ+1) = 2/3, ητ = 1/3; both half steps add η·0.2 to log-odds 0
    egpo = COMAL(Config(tau=0.5, inner="egpo"))
    assert_close(egpo.step(game, egpo.init(game), 0).exp()[0, 0], torch.tensor(sigmoid(0.2 * 2 / 3), dtype=f64))


@pytest.mark.parametrize("name", ["weighted-rps", "partial-support"])
def test_last_iterate_reaches_the_unregularised_equilibrium_linearly(name):
    """Default τ = 0.005, exact inner solves. Observed KL(π*‖π_k) per outer step: weighted-rps 1.9e-4, 2.9e-7,
    4.3e-10, … (ratio ≈ 1.5e-3); partial-support 2.5e-3, 3.9e-5, 6.5e-7, … (ratio ≈ 0.017), Gap₀ 3e-12 after 12
    steps and mass 4e-62 off the support."""
    game = partial_support_game() if name == "partial-support" else load_game(name, tau=0.0)
    star = solve_equilibrium(game).policy                        # the LP's equilibrium (unique here)
    assert game.gap(star).item() <= 1e-15
    solver = COMAL()
    log_pi, kls = solver.init(game), []
    for t in range(12):
        log_pi = solver.step(game, log_pi, t)
        kls.append(kl_divergence(star, log_pi.exp()).item())
    pi = log_pi.exp()
    assert game.gap(pi).item() <= 1e-10
    assert (pi - star).abs().sum().item() <= 1e-10
    off_support = star < 1e-12
    assert off_support.sum().item() == (3 if name == "partial-support" else 0)
    assert pi[off_support].sum().item() <= 1e-30
    # linear rate: each outer step multiplies the KL by at most 0.05 until it reaches rounding level
    ratios = [b / a for a, b in zip(kls, kls[1:]) if a > 1e-12]
    assert len(ratios) >= 3 and max(ratios) <= 0.05


def test_kl_to_the_equilibrium_never_increases_while_the_gap_does():
    """The paper's monotone-KL property of the proximal point, on the 10 egpo-random contexts (unique equilibria
    with 3–7 actions in their support): KL(π*‖π_k) never increases beyond rounding (observed max increase 4e-16;
    allowed: 16 N eps), while the worst-context Gap₀ goes up by 0.008 at some step."""
    game = load_game("egpo-random", tau=0.0)
    star = solve_equilibrium(game).policy
    solver = COMAL()
    log_pi, kls, gaps = solver.init(game), [], []
    for t in range(100):
        log_pi = solver.step(game, log_pi, t)
        kls.append(kl_divergence(star, log_pi.exp()))
        gaps.append(game.gap(log_pi.exp()).max())
    kls, gaps = torch.stack(kls), torch.stack(gaps)
    assert (kls[1:] - kls[:-1]).max().item() <= 16 * game.num_actions * EPS
    assert (gaps[1:] - gaps[:-1]).max().item() >= 1e-3


def test_default_budget_reaches_gap_1e_6_on_egpo_random():
    """The slowest shipped game: one context's equilibrium holds weights 0.0027 and 4.5e-5, and the outer rate is
    ≈ 0.97 per step there. Observed: Gap₀ ≤ 1e-2 from outer step 29, ≤ 1e-6 from 167, 5.5e-7 after 200."""
    game = load_game("egpo-random", tau=0.0)
    run = run_exact(game, COMAL(), log_points=2)
    assert run.iterations == 200
    assert game.gap(run.last_policies).max().item() <= 1e-6


@pytest.mark.parametrize("inner, name, tau", [("inpo", "weighted-rps", 0.1), ("egpo", "weighted-rps", 0.1),
                                             ("egpo", "partial-support", 0.03), ("onpo", "weighted-rps", 0.1),
                                             ("onpo", "partial-support", 0.03)])
def test_iterative_inner_solvers_reach_the_unregularised_equilibrium(inner, name, tau):
    """40 outer steps of the default inner_steps each (INPO at τ = 0.1: 180; EGPO and ONPO: 76 at τ = 0.1, 238 at
    0.03). Observed Gap₀ of the last iterate: 1.3e-9, 1.3e-9, 2.3e-10, 1.3e-9 and 5.2e-10. (On the partial-support game τ = 0.1 is too
    strong: even exact inner solves leave Gap₀ = 2e-4 after 100 outer steps, against 3e-14 after 60 at τ = 0.03.)"""
    game = partial_support_game() if name == "partial-support" else load_game(name, tau=0.0)
    solver = COMAL(Config(tau=tau, inner=inner))
    run = run_exact(game, solver, 40 * solver.inner_steps(tau), log_points=2)
    assert game.gap(run.last_policies).item() <= 1e-8


def test_population_minimiser_is_the_inpo_step_towards_the_anchor():
    """With exact expectations over pairs from π_t and soft labels, COMAL's per-pair loss (INPO's, with the anchor
    ν in place of μ) is minimised exactly by COMAL's inner INPO step π_t^(1−ητ) ν^(ητ) exp(η Pπ_t)/Z. ν and π_t
    are two different random policies; 1e-7 (L1) is LBFGS's accuracy (measured 1e-9)."""
    game = load_game("egpo-random", tau=0.0)
    generator = torch.Generator().manual_seed(3)
    log_anchor = torch.log_softmax(torch.randn(game.mu.shape, generator=generator, dtype=f64), -1)
    log_prev = torch.log_softmax(torch.randn(game.mu.shape, generator=generator, dtype=f64), -1)
    tau = 0.1
    eta = default_eta(tau)
    prev = log_prev.exp()

    def pair(x):
        return x.unsqueeze(-1) - x.unsqueeze(-2)

    def loss(log_policy):
        per_pair = inpo_loss(pair(log_policy), pair(log_anchor), pair(log_prev), game.P, eta, tau)
        return (prev.unsqueeze(-1) * prev.unsqueeze(-2) * per_pair).sum()

    solver = COMAL(Config(tau=tau, inner="inpo", inner_steps=2))
    solver.step(game, log_anchor, 0)                              # sets ν
    step = solver.step(game, log_prev, 1).exp()
    assert (lbfgs_minimiser(log_prev, loss) - step).abs().sum(-1).max().item() <= 1e-7


def test_solver_loss_of_a_batch_by_hand():
    policy = TabularPolicy(torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=f64)))
    uniform = torch.full((1, 2), math.log(1 / 3), dtype=f64)
    batch = {"contexts": torch.tensor([0]), "responses": torch.tensor([[0, 1]]),
             "label": torch.tensor([[1.0]], dtype=f64), "log_prob_previous": uniform, "log_prob_anchor": uniform}
    loss, _ = COMAL(Config(tau=0.5)).loss(batch, policy)
    # τ = ½: η = 1; Δν = Δt = 0, so h = log(0.5/0.3); label 1: (h − η/2)²
    assert loss.item() == pytest.approx((math.log(5 / 3) - 0.5) ** 2, rel=1e-12)


def test_sampled_training_reaches_the_unregularised_equilibrium():
    """COMAL's default sampled run (``sampled_defaults`` / ``sampled_options``: covered rounds, optimistic inner
    steps (ONPO's) at τ = 0.02 towards an anchor refreshed every 100 rounds, 8192 opponents, SGD lr ½, 2000
    rounds). Measured last-iterate Gap₀ (seed 0): 0.0021, 0.0015, 0.0007 and 0.0045 after 500, 1000, 1500 and
    2000 rounds (6k queries). The INPO inner steps at τ = 0.1 before: 0.015, 0.0017, 0.0065 and 0.0011; the
    earlier on-policy defaults (K = 64, Adam lr 0.01, period 200): 0.015, 0.009, 0.024 and 0.011 after 750–3000."""
    game = load_game("weighted-rps")          # the file's τ plays no part: COMAL targets the τ = 0 game
    config = SampledConfig(**COMAL.sampled_defaults, seed=0)
    run = run_sampled(game, COMAL(Config(**COMAL.sampled_options)), config)
    assert game.gap(run.last_policies, tau=0.0).item() <= SAMPLED_BOUND
    assert game.gap(game.mu, tau=0.0).item() >= 0.13         # μ (uniform) itself: 0.133


def test_covered_loss_of_a_batch_by_hand():
    """Two responses, no distinct weights (the language-model form): weights ½ and ū their mean, so the loss is
    ½((u₀ − ū)² + (u₁ − ū)²) = (u₀ − u₁)²/4 with u = log π_θ − ητ log ν − (1 − ητ) log π_t − η r̂."""
    policy = TabularPolicy(torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=f64)))
    uniform = torch.full((1, 2), math.log(1 / 3), dtype=f64)
    batch = {"contexts": torch.tensor([0]), "responses": torch.tensor([[0, 1]]),
             "win_rate": torch.tensor([[0.7, 0.4]], dtype=f64), "log_prob_previous": uniform,
             "log_prob_anchor": uniform}
    loss, _ = COMAL(Config(tau=0.5, opponents=2)).loss(batch, policy)
    # τ = ½: η = 1, ητ = ½; ν = π_t, so u₀ − u₁ = log(0.5/0.3) − (0.7 − 0.4)
    assert loss.item() == pytest.approx((math.log(5 / 3) - 0.3) ** 2 / 4, rel=1e-12)


SAMPLED_BOUND = 0.03


def test_cli_solves_the_tau_0_game_and_races_at_tau_0(tmp_path, capsys):
    assert main(["solve", "--game", "weighted-rps", "--tau", "0", "--solver", "comal", "--iters", "10",
                 "--out", str(tmp_path / "one")]) == 0
    result = json.loads((tmp_path / "one" / "result.json").read_text())
    assert result["tau"] == 0 and result["iterate"] == "last"
    assert max(result["gap_unregularized"]) <= 1e-10
    assert main(["solve", "--game", "rps", "--tau", "0", "--solver", "all", "--iters", "5",
                 "--out", str(tmp_path / "race")]) == 0
    summary = json.loads((tmp_path / "race" / "summary.json").read_text())
    raced = {row["solver"] for row in summary["solvers"]}
    assert {"comal", "mpo", "spo"} <= raced and not {"comal", "mpo", "spo"} & set(summary["skipped"])
    assert (tmp_path / "race" / "comal" / "convergence.png").stat().st_size > 0


def test_bad_options_are_one_line_errors():
    game = load_game("weighted-rps", tau=0.0)
    with pytest.raises(NashprefError, match="tau must be"):
        COMAL(Config(tau=0.0))
    with pytest.raises(NashprefError, match="inner must be"):
        COMAL(Config(inner="newton"))
    with pytest.raises(NashprefError, match="inner_steps must be"):
        COMAL(Config(inner="inpo", inner_steps=0))
    with pytest.raises(NashprefError, match="period must be"):
        COMAL(Config(period=1.5))
    with pytest.raises(NashprefError, match="opponents"):
        COMAL(Config(opponents=-1))
    assert COMAL().default_iterations(game) == 200
