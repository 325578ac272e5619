"""The rejection-sampling enhancer on tabular policies, where the exact enhancer is known: the tilted weights on K
draws of π1 converge to the exact enhancer as K grows (within the self-normalised estimate's delta-method error),
the accepted draws are distributed as those weights (multinomial error), and the acceptances count as expected."""

from __future__ import annotations

import pytest
import torch

from nashpref.core.game import DTYPE, kl_divergence
from nashpref.theory.bandit import random_bandit, random_skew
from nashpref.theory.enhancer import affine_map, enhancer, uncertainty
from nashpref.theory.mle import fit_bt, fit_skew, sample_pairs
from nashpref.theory.rejection import empirical_enhancer, rejection_enhancer


def instance(model: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    bandit = random_bandit(3, 6, 3, 0.5, g)
    theta = 2 * torch.randn(3, generator=g, dtype=DTYPE)
    main = bandit.gibbs(bandit.rewards(theta))
    if model == "bt":
        P = bandit.bt_preference(theta)
        sigma = fit_bt(bandit, sample_pairs(P, bandit.mu, bandit.mu, 30, g), 1.0).sigma
    else:
        P = bandit.skew_preference(random_skew(3, 2.0, g))
        sigma = fit_skew(bandit, sample_pairs(P, bandit.mu, bandit.mu, 30, g), 1.0).sigma
    return bandit, main, sigma, g


def per_action(draws: torch.Tensor, weights: torch.Tensor, actions: int) -> torch.Tensor:
    """(C, N): the weights of the draws summed per action."""
    return torch.zeros(draws.shape[0], actions, dtype=DTYPE).scatter_add_(1, draws, weights)


@pytest.mark.parametrize("model", ["bt", "skew"])
def test_rejection_sampling_approaches_the_exact_enhancer(model):
    bandit, main, sigma, g = instance(model, seed=0)
    budget = 0.2
    exact = enhancer(bandit, main, sigma, budget, model)
    C, N = main.shape
    G, w0 = affine_map(bandit, main, model)
    sigma_inv = torch.linalg.inv(sigma)
    assert (uncertainty(sigma_inv, torch.einsum("cn,cnd->cd", exact, G) + w0)
            > uncertainty(sigma_inv, torch.einsum("cn,cnd->cd", main, G) + w0)).all()   # the tilt matters here
    errors = []
    for K in (4000, 32000):     # (at K = 500 a draw of an action with π1 = 5e-5 carries weight 0.07: too few)
        draws = torch.multinomial(main, K, replacement=True, generator=g)             # (C, K) actions of π1
        phi = bandit.phi[torch.arange(C).unsqueeze(-1), draws]                          # (C, K, d)
        result = rejection_enhancer(phi, sigma, budget, g, model)
        q = per_action(draws, result.weights, N)
        # the empirical KL budget holds on the draws
        uniform = torch.full((C, K), 1.0 / K, dtype=DTYPE)
        assert (kl_divergence(result.weights, uniform) <= budget * (1 + 1e-9)).all()
        # delta method for the self-normalised tilt: sd(q_a) ≤ √(π2(a)·r_a/K), r_a = π2(a)/π1(a); 4 sd per action
        bound = 0.5 * 4 * torch.sqrt(exact * (exact / main) / K).sum(-1)
        tv = 0.5 * (q - exact).abs().sum(-1)
        assert (tv <= bound).all(), (K, tv, bound)
        errors.append(tv.max().item())
        # accepted draws ~ q exactly: histogram within 4 multinomial sd per action; counts as expected
        m = result.accepted.sum(-1, keepdim=True).to(DTYPE)
        hist = per_action(draws, result.accepted.to(DTYPE), N) / m
        assert (0.5 * (hist - q).abs().sum(-1) <= 0.5 * 4 * torch.sqrt(q / m).sum(-1)).all()
        a = result.accept
        assert ((m.squeeze(-1) - a.sum(-1)).abs() <= 4 * torch.sqrt((a * (1 - a)).sum(-1))).all()
    assert errors[1] < errors[0]


def test_a_zero_budget_accepts_every_draw():
    bandit, main, sigma, g = instance("bt", seed=1)
    draws = torch.multinomial(main, 50, replacement=True, generator=g)
    phi = bandit.phi[torch.arange(3).unsqueeze(-1), draws]
    q = empirical_enhancer(phi, sigma, 0.0)
    assert torch.equal(q, torch.full_like(q, 1 / 50))
    assert rejection_enhancer(phi, sigma, 0.0, g).accepted.all()
