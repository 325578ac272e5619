"""`--payoff log-odds` on the self-play loop: the wrapper's values by hand, sampled training of a tabular policy under a
Bradley-Terry oracle reaching the Gibbs policy μ·exp(r/τ)/Z (not the probability-payoff equilibrium), and
`nashpref train --payoff log-odds` on the tiny model, its first loss recomputed from the reward model itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import DTYPE, PreferenceGame, kl_divergence
from nashpref.core.gamefile import bradley_terry
from nashpref.core.tabular import MatrixOracle, TabularPolicy
from nashpref.errors import BadInput
from nashpref.preferences.payoff import LogOddsPayoff, game_oracle, log_odds_scale
from nashpref.sampled import single_thread
from nashpref.selfplay import self_play
from nashpref.solvers import get_solver
from nashpref.theory.logodds import bradley_terry_gibbs, log_odds_gap
from nashpref.tolerance import tolerance
from conftest_lm import tiny_dir  # noqa: F401  (fixture)

PROMPTS = ["describe the red cat", "tell me about a robot", "what is the river like?",
           "write one line about the warm star", "say something about a dark forest", "describe the golden ship",
           "tell me about a bird", "what is the city like?"]


def test_scale_and_transform_by_hand():
    # float32: ε = 2^−23, L = log((1 − ε)/ε) = 23·ln 2 + log(1 − 2^−23)
    L = 23 * math.log(2) + math.log1p(-2.0 ** -23)
    assert log_odds_scale() == pytest.approx(1 / (2 * L), rel=tolerance(DTYPE, length=4))
    wrapper = LogOddsPayoff(None)
    p = torch.tensor([0.5, 1 / (1 + math.exp(-1.0)), 0.2, 0.0, 1.0], dtype=torch.float32)
    # ½, ½ + c·1, ½ + c·log(0.25), and the clipped ends ½ ∓ c·L = 0 and 1
    c = 1 / (2 * L)
    expected = torch.tensor([0.5, 0.5 + c, 0.5 + c * math.log(0.25), 0.0, 1.0])
    got = wrapper.transform(p)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=0, atol=tolerance("float32", scale=1.0))
    # skew: P'(b ≻ a) = 1 − P'(a ≻ b) when P is
    q = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(wrapper.transform(q) + wrapper.transform(1 - q), torch.ones(1000), rtol=0,
                          atol=tolerance("float32"))


def test_game_oracle_hands_the_solver_c_tau():
    oracle = object()
    assert game_oracle(oracle, "probability", 0.3) == (oracle, 0.3)
    played, tau = game_oracle(oracle, "log-odds", 0.3)
    assert isinstance(played, LogOddsPayoff) and tau == 0.3 * log_odds_scale()
    with pytest.raises(BadInput):
        game_oracle(oracle, "odds", 0.3)


def bt_game(seed: int, tau: float) -> tuple[PreferenceGame, torch.Tensor]:
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((3, 5))
    mu = rng.dirichlet(np.ones(5), size=3)
    P = np.stack([bradley_terry(r[c][None], np.ones(1), 1.0) for c in range(3)])
    return PreferenceGame.create(P, mu, tau), torch.as_tensor(r, dtype=DTYPE)


def sampled_run(game: PreferenceGame, payoff: str, seed: int) -> torch.Tensor:
    """Online IPO (SGD, exact labels) through the self-play loop with ``game_oracle``'s oracle and τ."""
    cls = get_solver("online-ipo")
    solver = cls(cls.Config())
    torch.manual_seed(seed)
    policy = TabularPolicy(game.log_mu)
    reference = TabularPolicy(game.log_mu).frozen()
    oracle, tau = game_oracle(MatrixOracle(game), payoff, game.tau, dtype=DTYPE)
    with single_thread():
        self_play(solver, policy, reference, oracle, torch.optim.SGD(policy.parameters(), lr=0.05),
                  num_contexts=game.num_contexts, iterations=400, samples=64,
                  generator=torch.Generator().manual_seed(seed), tau=tau)
    return policy.probabilities()


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_log_odds_training_reaches_the_gibbs_policy(seed):
    tau = 0.5
    game, r = bt_game(seed, tau)
    gibbs = bradley_terry_gibbs(game.mu, r, 1.0, tau)         # the exact log-odds equilibrium
    prob_eq = solve_equilibrium(game).policy                   # the probability-payoff equilibrium
    start = kl_divergence(game.mu, gibbs).mean().item()
    other = kl_divergence(prob_eq, gibbs).mean().item()
    pi = sampled_run(game, "log-odds", seed)
    reached = kl_divergence(pi, gibbs).mean().item()
    # gap = 2τ KL(π‖π*) under BT; measured mean KL 0.0085 and 0.0050 (seeds 0, 1: the sampling-noise floor of
    # lr 0.05, 64 samples) from 1.06 and 0.29 at μ, against 0.59 and 0.15 for the probability equilibrium
    assert reached <= 0.05 * start and reached <= 0.1 * other
    assert log_odds_gap(game, pi).mean().item() == pytest.approx(2 * tau * reached, rel=1e-9)
    # the same loop on the probability payoff ends at its own equilibrium, far from Gibbs
    pi_prob = sampled_run(game, "probability", seed)
    assert kl_divergence(pi_prob, gibbs).mean().item() >= 0.5 * other


# ---- `nashpref train --payoff log-odds` on the tiny model -------------------------------------------------------------
def test_train_with_the_log_odds_payoff(tiny_dir, tmp_path):
    """Online IPO's loss at θ = μ is mean((0 − (P' − ½)/(cτ))²) = mean((logit P/τ)²): recomputed here from the
    reward model's own P on the round's saved texts, which the round file must hold as P' = ½ + c·logit P."""
    from nashpref.io import read_jsonl
    from nashpref.lm.config import TrainConfig
    from nashpref.lm.trainer import run_train
    from nashpref.preferences.reward import RewardOracle

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    out, tau = tmp_path / "run", 0.1
    config = TrainConfig(policy=str(tiny_dir / "policy"), preference=f"reward:{tiny_dir / 'reward'}",
                         prompts=str(prompts), solver="online-ipo", out=out, sampler="hf", iterations=1,
                         heldout=2, samples=2, eval_samples=2, max_new_tokens=8, lr=1e-3, tau=tau,
                         payoff="log-odds")
    result = run_train(config, progress=False)
    assert [row["iteration"] for row in read_jsonl(out / "metrics.jsonl")] == [1]
    assert json.loads((out / "config.json").read_text())["payoff_scale"] == log_odds_scale()
    pairs = read_jsonl(out / "rounds" / "iteration-0001.jsonl")
    assert len(pairs) == 2 * len(PROMPTS[:-2])              # online IPO: K = 2 pairs per training prompt
    reward = RewardOracle.from_pretrained(str(tiny_dir / "reward"), device="cpu", dtype="float32")
    p = reward.prefer_texts([r["prompt"] for r in pairs], [r["a"] for r in pairs], [r["b"] for r in pairs])
    saved = torch.tensor([r["preference"] for r in pairs])
    # the same model on the same texts, scored in other batches: P agrees to float32 rounding of one forward
    # (≈ 660 reductions, see test_train.check_run), and P' moves by c·|d logit/dP| ≤ c/(P(1 − P)) times that
    slack = tolerance("float32", length=660) / (p * (1 - p)).min().item()
    assert torch.allclose(saved, LogOddsPayoff(None).transform(p), rtol=0, atol=slack)
    logit = torch.log(p.double()) - torch.log1p(-p.double())
    assert result.rows[0]["loss"] == pytest.approx(((logit / tau) ** 2).mean().item(), rel=1e-4, abs=1e-6)
