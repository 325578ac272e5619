"""The enhancer: the KL tilt hits its budget; the alternating ascent reaches the global maximum (checked against a
fine grid of dual directions, each giving a feasible point)."""

from __future__ import annotations

import math

import pytest
import torch

from nashpref.core.game import DTYPE, kl_divergence
from nashpref.theory.bandit import random_bandit
from nashpref.theory.enhancer import affine_map, enhancer, kl_tilt, tilt_value, uncertainty
from nashpref.theory.mle import sample_pairs, fit_bt, fit_skew

EPS = torch.finfo(DTYPE).eps


def test_kl_tilt_meets_the_budget_or_saturates():
    g = torch.Generator().manual_seed(0)
    base = torch.softmax(torch.randn(6, 7, generator=g, dtype=DTYPE), -1)
    scores = torch.randn(6, 7, generator=g, dtype=DTYPE)
    budget = 0.3
    pi = kl_tilt(torch.log(base), scores, budget)
    kl = kl_divergence(pi, base)
    top = scores.argmax(-1)
    limit_kl = -torch.log(base[torch.arange(6), top])
    inside = limit_kl > budget
    # bisection on log β to width 1e-11: KL is below the budget and within 1e-9 of it
    assert (kl[inside] <= budget * (1 + 64 * EPS)).all() and (kl[inside] >= budget * (1 - 1e-9)).all()
    # the tilt raises the expected score (β ≥ 0) and keeps the order of base-relative odds
    assert ((pi * scores).sum(-1) >= (base * scores).sum(-1)).all()
    # a budget past the limit's KL: all mass on the argmax
    pi = kl_tilt(torch.log(base), scores, 50.0)
    assert torch.equal(pi.argmax(-1), top) and torch.allclose(pi.max(-1).values, torch.ones(6, dtype=DTYPE))


@pytest.mark.parametrize("model", ["bt", "skew"])
def test_enhancer_beats_every_direction_on_a_fine_grid(model):
    """Global max = max over dual directions v (vᵀΣv = 1) of the tilt's value; the grid gives feasible points,
    so the enhancer's value must not be below any of them (up to the bisection's resolution)."""
    g = torch.Generator().manual_seed(1)
    dim = 2 if model == "bt" else 3          # D = 2 or 3: a circle or a sphere of directions
    bandit = random_bandit(3, 6, dim, 0.1, g, reference_scale=1.0)
    main = bandit.gibbs(bandit.rewards(torch.randn(dim, generator=g, dtype=DTYPE)))
    P = bandit.bt_preference(torch.randn(dim, generator=g, dtype=DTYPE))
    pairs = sample_pairs(P, bandit.mu, bandit.mu, 40, g)
    sigma = (fit_bt if model == "bt" else fit_skew)(bandit, pairs, 1.0).sigma
    budget = 0.5
    pi = enhancer(bandit, main, sigma, budget, model)
    assert (kl_divergence(pi, main) <= budget * (1 + 64 * EPS)).all()
    G, w0 = affine_map(bandit, main, model)
    value = uncertainty(torch.linalg.inv(sigma), torch.einsum("cn,cnd->cd", pi, G) + w0)
    D = sigma.shape[0]
    if D == 2:
        angles = torch.linspace(0, 2 * math.pi, 2001, dtype=DTYPE)[:-1]
        directions = torch.stack([angles.cos(), angles.sin()], -1)
    else:
        directions = torch.randn(3000, D, generator=g, dtype=DTYPE)
    directions = directions / torch.sqrt(torch.einsum("ki,ij,kj->k", directions, sigma, directions)).unsqueeze(-1)
    grid = tilt_value(bandit, main, sigma, budget, directions, model).max(0).values
    # both sides come from tilts solved by the same bisection: its KL resolution 1e-9 bounds their disagreement
    assert (value >= grid * (1 - 1e-8)).all(), (value, grid)
    assert (value > uncertainty(torch.linalg.inv(sigma), torch.einsum("cn,cnd->cd", main, G) + w0)).all()
