"""Online iterative RLHF: the exact scores' identities, and exploration beating both no-exploration baselines at
the final round over 20 paired seeds (the 95% interval of the paired difference lies below zero)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import t as student

from nashpref.core.game import DTYPE, kl_divergence
from nashpref.theory.mle import LogisticFit, skew_to_vector
from nashpref.theory.online import InstanceSpec, OnlineConfig, main_policy, make_instance, run_seeds, score

EPS = torch.finfo(DTYPE).eps


def exact_fit(w: torch.Tensor) -> LogisticFit:
    return LogisticFit(w=w, sigma=torch.eye(len(w), dtype=DTYPE), steps=0, grad_norm=0.0)


def test_suboptimality_is_tau_times_kl_to_the_gibbs_policy():
    bandit, theta = make_instance(InstanceSpec(), "bt", 0)
    r = bandit.rewards(theta)
    star = bandit.gibbs(r)
    assert abs(score(bandit, theta, "bt", main_policy(bandit, exact_fit(theta), "bt"))) <= 64 * EPS * r.abs().max()
    pi = torch.softmax(torch.randn(bandit.num_contexts, bandit.num_actions, dtype=DTYPE), -1)
    identity = bandit.tau * kl_divergence(pi, star).mean()
    assert abs(bandit.suboptimality(pi, r) - identity) <= 64 * EPS * r.abs().max()


def test_general_oracle_for_the_truth_is_the_equilibrium():
    bandit, A = make_instance(InstanceSpec(), "skew", 0)
    pi = main_policy(bandit, exact_fit(skew_to_vector(A)), "skew")
    assert score(bandit, A, "skew", pi) <= 1e-12
    assert score(bandit, A, "skew", bandit.mu) > 0.01


def paired_upper(a: list[float], b: list[float]) -> float:
    """Upper end of the 95% Student-t interval of mean(a − b)."""
    d = np.asarray(a) - np.asarray(b)
    return d.mean() + student.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))


@pytest.mark.parametrize("model,rounds", [("bt", 6), ("skew", 3)])
def test_exploration_lowers_the_final_score(model, rounds):
    scores = run_seeds(InstanceSpec(), OnlineConfig(model=model, rounds=rounds, pairs_per_round=32),
                       ("explore", "greedy", "passive"), range(20))
    final = {s: [run[-1] for run in runs] for s, runs in scores.items()}
    assert paired_upper(final["explore"], final["greedy"]) < 0, final
    assert paired_upper(final["explore"], final["passive"]) < 0, final
    # round 0 has no data: every strategy starts from μ with the same score
    assert len({runs[0][0] for runs in scores.values()}) == 1
