"""Several objectives and groups: the gated policy, max-min against the linear program (τ → 0 bounds) and its own
duality certificate, and EM for a mixture of BT groups (monotone, at least as likely as the labelled fit)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import t as student

from nashpref.core.game import DTYPE
from nashpref.theory.bandit import random_bandit
from nashpref.theory.maxmin import (GroupSpec, fit_mixture, gated_rewards, group_experiment, group_values,
                                    make_groups, maxmin_linear_program, maxmin_policy, mixture_log_likelihood,
                                    user_log_likelihoods)
from nashpref.theory.mle import bt_features, fit_logistic

EPS = torch.finfo(DTYPE).eps


def rewards_and_bandit(seed: int, tau: float, groups: int = 3):
    g = torch.Generator().manual_seed(seed)
    bandit = random_bandit(4, 6, 3, tau, g, reference_scale=1.0)
    return bandit, torch.randn(groups, 4, 6, generator=g, dtype=DTYPE)


def test_gated_policy_maximises_the_gated_objective():
    bandit, R = rewards_and_bandit(0, 0.2)
    gates = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=DTYPE), -1)
    r = gated_rewards(R, gates)
    assert torch.allclose(r, (gates.T.unsqueeze(-1) * R).sum(0), rtol=0, atol=8 * EPS * R.abs().max())
    pi = bandit.gibbs(r)
    # Σ_k g_k(x) [E_π r_k − τ KL] per context, averaged, is J(π) for the gated reward; Gibbs attains its optimum
    per_objective = (pi.unsqueeze(0) * R).sum(-1) - bandit.tau * bandit.kl(pi)
    assert abs((gates.T * per_objective).sum(0).mean() - bandit.optimal_value(r)) <= 64 * EPS * R.abs().max()
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 0]), 3).to(DTYPE)
    assert torch.equal(gated_rewards(R, one_hot), R[[0, 2, 1, 0], torch.arange(4)])


def test_maxmin_matches_the_linear_program_as_tau_vanishes():
    for tau in (0.1, 0.01, 0.001):
        bandit, R = rewards_and_bandit(2, tau)
        result = maxmin_policy(bandit, R)
        lp_value, lp_policy = maxmin_linear_program(R)
        assert 0 <= result.certificate <= 1e-8
        # V_τ ≤ V_0 (the KL only costs) and V_τ ≥ min_u J_u(π_LP) ≥ V_0 − τ·mean_x max KL ≥ V_0 − τ log(1/μ_min)
        slack = tau * torch.log(1 / bandit.mu.min(-1).values).mean().item()
        assert lp_value - slack - 1e-8 <= result.value <= lp_value + 1e-8
        assert group_values(bandit, R, lp_policy, 0.0).min().item() >= lp_value - 1e-9
    one = maxmin_policy(bandit, R[:1])    # one group: the Gibbs policy and its optimal value
    assert torch.allclose(one.policy, bandit.gibbs(R[0]), rtol=0, atol=1e-6)
    assert abs(one.value - bandit.optimal_value(R[0]).item()) <= 1e-9


def test_em_is_monotone_and_at_least_as_likely_as_the_labelled_fit():
    spec = GroupSpec(users=120)
    bandit, thetas, pairs, user, group = make_groups(spec, 0)
    mix = fit_mixture(bandit, pairs, user, 2, 1.0, torch.Generator().manual_seed(0))
    history = np.array(mix.log_likelihoods)
    # each M-step is solved to Newton's rounding floor: allow that much slack per step
    assert (np.diff(history) >= -1e-9 * np.abs(history[1:])).all()
    Z = bt_features(bandit, pairs)
    labelled = torch.stack([fit_logistic(Z, pairs.y, 1.0, weights=(group[user] == u).to(DTYPE)).w
                            for u in range(2)])
    shares = torch.bincount(group, minlength=2).to(DTYPE) / len(group)
    oracle = mixture_log_likelihood(Z, pairs.y, user, spec.users, labelled, shares, 1.0)
    assert history[-1] >= oracle - 1e-9 * abs(oracle)
    # EM's users' groups (up to relabelling) agree with the truth about as often as the Bayes rule of the true
    # model: within 3 binomial standard errors of its accuracy
    assigned = mix.responsibilities.argmax(-1)
    accuracy = max((assigned == group).double().mean().item(), (assigned != group).double().mean().item())
    bayes = (torch.log(torch.tensor(spec.shares, dtype=DTYPE)) +
             user_log_likelihoods(Z, pairs.y, user, spec.users, thetas)).argmax(-1)
    best = (bayes == group).double().mean().item()
    assert accuracy >= best - 3 * math.sqrt(best * (1 - best) / spec.users + 1 / spec.users ** 2), (accuracy, best)


def test_maxmin_protects_the_minority_group():
    rows = [group_experiment(GroupSpec(users=120), s) for s in range(6)]
    pooled = np.array([r["pooled"] for r in rows])
    em = np.array([r["maxmin_em"] for r in rows])
    true = np.array([r["maxmin_true"] for r in rows])
    assert (true >= em - 1e-9).all() and (true >= pooled - 1e-9).all()     # the true max-min bounds both
    d = em - pooled      # paired: the 95% Student-t interval of the mean gain lies above zero
    assert d.mean() - student.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)) > 0, d
