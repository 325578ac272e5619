"""The LM-side pieces on tabular policies, measured against exact values (what tests/test_theory_lm_payoff.py,
test_theory_maxmin_lm.py and test_theory_rejection.py assert, over more seeds):

    python bench/theory/lm-side/measure.py --out bench/theory/lm-side    # writes results.json and prints tables

1. `--payoff log-odds` through the self-play loop (online IPO, SGD lr 0.05, 64 samples, 400 rounds, exact labels)
   under a Bradley-Terry oracle: KL(π_T‖Gibbs) against the probability-payoff equilibrium's KL to Gibbs.
2. `maxmin:` (Hedge, η = 1) and `maxmin:argmin:` on two opposed BT groups (online IPO, lr 0.02, 600 rounds): the
   worse group's win-rate against μ of the late-average policy, against the exact max-min point V* and the equal
   mixture's equilibrium.
3. The rejection-sampling enhancer: TV distance of its tilted weights to the exact enhancer as the draws K grow.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import DTYPE, PreferenceGame, kl_divergence
from nashpref.core.gamefile import bradley_terry
from nashpref.core.tabular import MatrixOracle, TabularPolicy
from nashpref.preferences.maxmin import MaxMinOracle
from nashpref.preferences.payoff import game_oracle
from nashpref.sampled import single_thread
from nashpref.selfplay import Hooks, self_play
from nashpref.solvers import get_solver
from nashpref.theory.bandit import random_bandit, random_skew
from nashpref.theory.enhancer import enhancer
from nashpref.theory.logodds import bradley_terry_gibbs
from nashpref.theory.mle import fit_bt, fit_skew, sample_pairs
from nashpref.theory.rejection import rejection_enhancer


def bt_games(rng, rewards, contexts, actions, tau, mu=None):
    mu = rng.dirichlet(np.ones(actions), size=contexts) if mu is None else mu
    return [PreferenceGame.create(np.stack([bradley_terry(r[c][None], np.ones(1), 1.0) for c in range(contexts)]),
                                  mu, tau) for r in rewards]


class Iterates(Hooks):
    def __init__(self, policy):
        self.policy, self.policies = policy, []

    def round_end(self, report) -> None:
        self.policies.append(self.policy.probabilities())


def run(oracle, game, payoff, lr, iterations, seed) -> Iterates:
    """Online IPO through the self-play loop with ``game_oracle``'s oracle and τ; every iterate kept."""
    cls = get_solver("online-ipo")
    torch.manual_seed(seed)
    policy = TabularPolicy(game.log_mu)
    reference = TabularPolicy(game.log_mu).frozen()
    played, tau = game_oracle(oracle, payoff, game.tau, reference, seed, dtype=DTYPE)
    hooks = Iterates(policy)
    with single_thread():
        self_play(cls(cls.Config()), policy, reference, played, torch.optim.SGD(policy.parameters(), lr=lr),
                  num_contexts=game.num_contexts, iterations=iterations, samples=64,
                  generator=torch.Generator().manual_seed(seed), tau=tau, hooks=hooks)
    hooks.played = played
    return hooks


def log_odds(seeds):
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        r = rng.standard_normal((3, 5))
        game = bt_games(rng, [r], 3, 5, 0.5)[0]
        gibbs = bradley_terry_gibbs(game.mu, torch.as_tensor(r, dtype=DTYPE), 1.0, 0.5)
        pi = run(MatrixOracle(game), game, "log-odds", 0.05, 400, seed).policies[-1]
        rows.append({"seed": seed, "kl_start": kl_divergence(game.mu, gibbs).mean().item(),
                     "kl_log_odds_run": kl_divergence(pi, gibbs).mean().item(),
                     "kl_probability_equilibrium": kl_divergence(solve_equilibrium(game).policy, gibbs).mean().item()})
    return rows


def win_rates(games, pi):
    return torch.stack([torch.einsum("ci,cij,cj->c", pi, g.P, g.mu).mean() for g in games])


def mixture_eq(games, w):
    return solve_equilibrium(PreferenceGame.create(w * games[0].P + (1 - w) * games[1].P, games[0].mu,
                                                   games[0].tau)).policy


def maxmin(seeds):
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        mu = rng.dirichlet(np.ones(5), size=2)
        r1 = 2 * rng.standard_normal((2, 5))
        games = bt_games(rng, [r1, -r1 + 2 * rng.standard_normal((2, 5))], 2, 5, 0.05, mu)

        def gap(w):
            v = win_rates(games, mixture_eq(games, w))
            return (v[0] - v[1]).item()

        lo, hi = 0.0, 1.0
        if not gap(lo) < 0 < gap(hi):
            continue                        # no interior max-min point: nothing to compare with
        for _ in range(50):
            lo, hi = ((lo + hi) / 2, hi) if gap((lo + hi) / 2) < 0 else (lo, (lo + hi) / 2)
        w_star = (lo + hi) / 2
        row = {"seed": seed, "w_star": w_star, "v_star": win_rates(games, mixture_eq(games, w_star)).min().item(),
               "v_equal_mixture": win_rates(games, mixture_eq(games, 0.5)).min().item()}
        for name, eta in (("hedge", 1.0), ("argmin", None)):
            hooks = run(MaxMinOracle([MatrixOracle(g) for g in games], eta), games[0], "probability", 0.02, 600,
                        seed)
            row[f"v_{name}"] = win_rates(games, torch.stack(hooks.policies[300:]).mean(0)).min().item()
            row[f"w_{name}"] = torch.stack([w for _, w in hooks.played.history[300:]]).mean(0)[0].item()
        rows.append(row)
    return rows


def rejection(seeds, sizes):
    rows = []
    for model in ("bt", "skew"):
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            bandit = random_bandit(3, 6, 3, 0.5, g)
            theta = 2 * torch.randn(3, generator=g, dtype=DTYPE)
            main = bandit.gibbs(bandit.rewards(theta))
            P = bandit.bt_preference(theta) if model == "bt" else bandit.skew_preference(random_skew(3, 2.0, g))
            fit = fit_bt if model == "bt" else fit_skew
            sigma = fit(bandit, sample_pairs(P, bandit.mu, bandit.mu, 30, g), 1.0).sigma
            exact = enhancer(bandit, main, sigma, 0.2, model)
            for K in sizes:
                draws = torch.multinomial(main, K, replacement=True, generator=g)
                phi = bandit.phi[torch.arange(3).unsqueeze(-1), draws]
                result = rejection_enhancer(phi, sigma, 0.2, g, model)
                q = torch.zeros(3, 6, dtype=DTYPE).scatter_add_(1, draws, result.weights)
                rows.append({"model": model, "seed": seed, "K": K,
                             "tv_max": (0.5 * (q - exact).abs().sum(-1)).max().item(),
                             "acceptance": result.accepted.double().mean().item()})
    return rows


def table(rows, keys) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k])
                                       for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    results = {"log_odds": log_odds(seeds), "maxmin": maxmin(seeds),
               "rejection": rejection(seeds, (500, 4000, 32000))}
    results["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results["log_odds"], ["seed", "kl_start", "kl_log_odds_run", "kl_probability_equilibrium"]))
    print()
    print(table(results["maxmin"], ["seed", "w_star", "v_star", "v_equal_mixture", "v_hedge", "w_hedge", "v_argmin",
                                    "w_argmin"]))
    print()
    print(table(results["rejection"], ["model", "seed", "K", "tv_max", "acceptance"]))
    print(f"\n{results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
