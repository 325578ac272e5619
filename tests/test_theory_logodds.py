"""The log-odds payoff: under Bradley-Terry its equilibrium is the Gibbs policy μ exp(s·r/τ)/Z (exactly, by the
closed-form gap), the scaled probability game has the same equilibrium, and on intransitive games it differs from
the probability-payoff equilibrium."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import DTYPE, PreferenceGame
from nashpref.core.gamefile import bradley_terry, games_dir, load_game
from nashpref.errors import GameError
from nashpref.theory.logodds import bradley_terry_gibbs, equivalent_game, log_odds, log_odds_gap, solve_log_odds

EPS = torch.finfo(DTYPE).eps


def bt_game(seed: int, scale: float, tau: float) -> tuple[PreferenceGame, torch.Tensor]:
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((4, 6))
    mu = rng.dirichlet(np.ones(6), size=4)
    P = np.stack([bradley_terry(r[c][None], np.ones(1), scale) for c in range(4)])
    return PreferenceGame.create(P, mu, tau), torch.as_tensor(r, dtype=DTYPE)


@pytest.mark.parametrize("scale,tau", [(1.0, 0.1), (2.5, 0.05), (0.5, 1.0)])
def test_bradley_terry_log_odds_equilibrium_is_the_gibbs_policy(scale, tau):
    game, r = bt_game(0, scale, tau)
    gibbs = bradley_terry_gibbs(game.mu, r, scale, tau)
    # the closed-form gap of the Gibbs policy is 0: the rounding of R = logit(σ(m)) is ~eps·|m|/(σ(1 − σ))
    R = log_odds(game.P)
    margin = R.abs().max().item()
    assert torch.allclose(R, scale * (r.unsqueeze(-1) - r.unsqueeze(-2)), rtol=0,
                          atol=8 * EPS * margin / (0.25 * math.exp(-margin)))
    assert log_odds_gap(game, gibbs).abs().max() <= 64 * EPS * margin * (1 + 1 / tau) / math.exp(-margin)
    # the solver on the equivalent probability game finds it; gap = 2τ KL(π‖π*) here, so Pinsker bounds |π − π*|
    pi, gap = solve_log_odds(game)
    assert gap.max() <= 1e-10
    assert (pi - gibbs).abs().sum(-1).max() <= math.sqrt(gap.max().clamp_min(0).item() / tau) + 1e-9
    # and it is not the probability-payoff equilibrium
    assert (solve_equilibrium(game).policy - gibbs).abs().sum(-1).max() > 1e-3


def test_the_scaled_probability_game_has_gaps_scaled_by_c():
    game = load_game("bt-mixture")
    equivalent, c = equivalent_game(game)
    pis = torch.softmax(torch.randn(5, *game.mu.shape, generator=torch.Generator().manual_seed(0), dtype=DTYPE), -1)
    for pi in pis:
        assert torch.allclose(equivalent.gap(pi) / c, log_odds_gap(game, pi), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["bt-mixture", "egpo-random"])
def test_log_odds_and_probability_equilibria_differ_on_intransitive_games(name):
    game = load_game(name)
    pi_log, gap_log = solve_log_odds(game)
    pi_prob = solve_equilibrium(game).policy
    assert gap_log.max() <= 1e-10 and game.gap(pi_prob).max() <= 1e-10
    # each is an equilibrium of its own game and not of the other: gaps far above either solver's 1e-10
    assert game.gap(pi_log).max() > 1e-4 and log_odds_gap(game, pi_prob).max() > 1e-4
    assert (pi_log - pi_prob).abs().sum(-1).max() > 1e-3


def test_a_symmetric_cycle_with_uniform_reference_has_the_same_equilibrium_under_both():
    game = load_game("condorcet-3")
    pi_log, gap_log = solve_log_odds(game)
    uniform = torch.full_like(pi_log, 1 / 3)
    assert gap_log.max() <= 1e-10 and (pi_log - uniform).abs().max() <= 1e-9
    assert game.gap(uniform).abs().max() <= 16 * EPS


def test_certain_preferences_have_no_log_odds():
    with pytest.raises(GameError, match="strictly inside"):
        log_odds(torch.tensor([[0.5, 1.0], [0.0, 0.5]], dtype=DTYPE))


def test_game_file_payoff_key(tmp_path):
    text = (games_dir() / "bt-mixture.toml").read_text()
    path = tmp_path / "bt-mixture-log-odds.toml"
    path.write_text('payoff = "log-odds"\n' + text)
    played = load_game(str(path), tau=0.05)
    game = load_game("bt-mixture", tau=0.05)
    expected, c = equivalent_game(game)
    assert torch.equal(played.P, expected.P) and played.tau == 0.05 * c
    # the file's game has the log-odds equilibrium, whichever solver runs on it
    pi = solve_equilibrium(played).policy
    assert log_odds_gap(game, pi).max() <= 1e-10 / c
    path.write_text('payoff = "odds"\n' + text)
    with pytest.raises(GameError, match="'payoff' must be one of probability, log-odds"):
        load_game(str(path))
    rps = games_dir() / "rps.toml"
    path.write_text('payoff = "log-odds"\n' + rps.read_text())
    with pytest.raises(GameError, match="strictly inside"):
        load_game(str(path))
