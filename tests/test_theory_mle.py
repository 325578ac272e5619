"""Preference MLE: the model identities, the Newton optimum against scipy, and recovery of the truth as n grows
(the 1/√n rate as a fitted slope, and the Cramér-Rao constant tr(F⁻¹)/n)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from nashpref.core.game import DTYPE
from nashpref.theory.bandit import LinearBandit, random_bandit, random_skew
from nashpref.theory.mle import (Pairs, bt_features, fisher_information, fit_bt, fit_logistic, fit_skew,
                                 sample_pairs, skew_features, skew_from_vector, skew_to_vector)

EPS = torch.finfo(DTYPE).eps


def all_pairs(bandit: LinearBandit) -> Pairs:
    C, N = bandit.num_contexts, bandit.num_actions
    x, a, b = (t.flatten() for t in torch.meshgrid(torch.arange(C), torch.arange(N), torch.arange(N), indexing="ij"))
    return Pairs(x, a, b, torch.zeros(len(x), dtype=DTYPE))


def test_bradley_terry_is_the_bilinear_model_with_a_constant_feature():
    g = torch.Generator().manual_seed(0)
    bandit = random_bandit(3, 5, 4, 0.1, g)
    theta = torch.randn(4, generator=g, dtype=DTYPE)
    augmented = LinearBandit.create(torch.cat([bandit.phi, torch.ones(3, 5, 1, dtype=DTYPE)], -1), bandit.mu, 0.1)
    A = torch.zeros(5, 5, dtype=DTYPE)
    A[:4, 4], A[4, :4] = theta, -theta
    scale = (bandit.phi.abs().sum(-1).max() * theta.abs().max()).item()
    assert torch.allclose(augmented.skew_preference(A), bandit.bt_preference(theta), rtol=0, atol=8 * EPS * scale)
    P = augmented.skew_preference(random_skew(5, 2.0, g))
    assert (P + P.transpose(-1, -2) - 1).abs().max() <= 4 * EPS


def test_pair_features_give_the_model_logits():
    g = torch.Generator().manual_seed(1)
    bandit = random_bandit(2, 4, 5, 0.1, g)
    pairs = all_pairs(bandit)
    theta, A = torch.randn(5, generator=g, dtype=DTYPE), random_skew(5, 1.5, g)
    assert torch.equal(skew_from_vector(skew_to_vector(A), 5), A)
    bt = bt_features(bandit, pairs) @ theta
    r = bandit.rewards(theta)
    assert torch.allclose(bt, r[pairs.x, pairs.a] - r[pairs.x, pairs.b], rtol=0, atol=16 * EPS)
    skew = skew_features(bandit, pairs) @ skew_to_vector(A)
    assert torch.allclose(skew, bandit.bilinear_logits(A)[pairs.x, pairs.a, pairs.b], rtol=0, atol=64 * EPS)


def test_newton_optimum_matches_scipy_and_the_design_covariance():
    g = torch.Generator().manual_seed(2)
    Z = torch.randn(300, 4, generator=g, dtype=DTYPE)
    y = (torch.rand(300, generator=g, dtype=DTYPE) < torch.sigmoid(Z @ torch.tensor([1.0, -2.0, 0.5, 0.0],
                                                                                      dtype=DTYPE))).to(DTYPE)
    lam = 0.7
    fit = fit_logistic(Z, y, lam)
    Zn, yn = Z.numpy(), y.numpy()

    def f(w):
        s = Zn @ w
        return np.logaddexp(0, s).sum() - yn @ s + 0.5 * lam * w @ w, Zn.T @ (1 / (1 + np.exp(-s)) - yn) + lam * w

    ref = minimize(f, np.zeros(4), jac=True, method="BFGS", options={"gtol": 1e-10})
    # |ŵ − w| ≤ ‖H⁻¹‖ (‖∇f(ŵ)‖ + ‖∇f(w_ref)‖): the objective is λ-strongly convex at least
    bound = (fit.grad_norm + np.abs(ref.jac).max()) * 4 / lam
    assert np.abs(fit.w.numpy() - ref.x).max() <= bound
    assert torch.allclose(fit.sigma, lam * torch.eye(4, dtype=DTYPE) + sum(torch.outer(z, z) for z in Z),
                          rtol=0, atol=300 * 16 * EPS * Z.square().max().item())


@pytest.mark.parametrize("model", ["bt", "skew"])
def test_recovery_rate_and_cramer_rao(model):
    """n·E‖ŵ − w‖² → tr(F⁻¹) (F: Fisher information per comparison of the μ×μ design), so log MSE falls with
    slope −1 in log n (RMSE: −½). Both are checked within 4 standard errors of the seed average."""
    g = torch.Generator().manual_seed(3)
    bandit = random_bandit(4, 6, 4, 0.1, g)
    if model == "bt":
        truth = 2 * torch.randn(4, generator=g, dtype=DTYPE)
        P, fit, features = bandit.bt_preference(truth), fit_bt, bt_features
    else:
        A = random_skew(4, 2.0, g)
        truth, P, fit, features = skew_to_vector(A), bandit.skew_preference(A), fit_skew, skew_features
    everything = all_pairs(bandit)
    Z = features(bandit, everything)
    weights = (bandit.mu[everything.x, everything.a] * bandit.mu[everything.x, everything.b]) / bandit.num_contexts
    crb = torch.linalg.inv(fisher_information(Z, torch.sigmoid(Z @ truth), weights)).trace().item()
    sizes, seeds = [250, 1000, 4000], 24
    log_mse, se = [], []
    for n in sizes:
        errors = np.array([(fit(bandit, sample_pairs(P, bandit.mu, bandit.mu, n, torch.Generator().manual_seed(s)),
                                1e-3).w - truth).square().sum().item() for s in range(seeds)])
        log_mse.append(math.log(errors.mean()))
        se.append(errors.std(ddof=1) / math.sqrt(seeds) / errors.mean())   # delta method: se of log(mean)
    x = np.log(sizes)
    slope = np.polyfit(x, log_mse, 1, w=1 / np.array(se))[0]
    xc = x - x.mean()
    slope_se = math.sqrt(sum((xc[i] * se[i]) ** 2 for i in range(len(x)))) / (xc ** 2).sum()
    assert abs(slope + 1) <= 4 * slope_se, (slope, slope_se)
    ratio = math.exp(log_mse[-1]) * sizes[-1] / crb
    assert abs(ratio - 1) <= 4 * se[-1], (ratio, se[-1])
