"""Pessimism: the bonus and the ensemble reduce to the MLE where they should, bound it from below, and on narrow
offline data the pessimistic policies' true values beat the greedy MLE policy's over 30 seeds."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import t as student

from nashpref.core.game import DTYPE
from nashpref.theory.mle import fit_bt
from nashpref.theory.pessimism import (OfflineSpec, bootstrap_fits, ensemble_rewards, lcb_rewards, make_offline,
                                       mle_rewards, run_offline_seeds)

EPS = torch.finfo(DTYPE).eps


def test_bonus_and_ensemble_reduce_to_the_mle():
    bandit, theta, behaviour, pairs = make_offline(OfflineSpec(), 0)
    fit = fit_bt(bandit, pairs, 1.0)
    mle = mle_rewards(bandit, fit, behaviour)
    assert torch.equal(lcb_rewards(bandit, fit, behaviour, 0.0), mle)
    lcb = lcb_rewards(bandit, fit, behaviour, 1.0)
    assert (lcb <= mle).all()
    # rewards are measured from the anchor: E_ν[θ̂ᵀ(φ − φ_ν)] = 0
    scale = (bandit.phi.abs().sum(-1).max() * fit.w.abs().max()).item()
    assert (behaviour * mle).sum(-1).abs().max() <= 16 * EPS * scale
    fits = bootstrap_fits(bandit, pairs, 1.0, 6, torch.Generator().manual_seed(0))
    stacked = torch.stack([mle_rewards(bandit, f, behaviour) for f in fits])
    assert torch.equal(ensemble_rewards(bandit, fits, behaviour, "min"), stacked.min(0).values)
    assert torch.allclose(ensemble_rewards(bandit, fits, behaviour, "mean-std", k_std=0.0), stacked.mean(0),
                          rtol=0, atol=16 * EPS * stacked.abs().max())
    assert torch.equal(ensemble_rewards(bandit, fits[:1], behaviour, "min"), stacked[0])


def lower(d) -> float:
    """Lower end of the 95% Student-t interval of the mean of d."""
    d = np.asarray(d)
    return d.mean() - student.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))


def test_pessimism_beats_the_greedy_mle_on_narrow_offline_data():
    rows = run_offline_seeds(OfflineSpec(), range(30))
    mle = np.array([r["mle"] for r in rows])
    for name in ("lcb", "ensemble"):
        value = np.array([r[name] for r in rows])
        assert lower(value - mle) > 0, (name, (value - mle).mean())
    optimal = np.array([r["optimal"] for r in rows])
    assert (optimal >= np.maximum(mle, value) - 1e-12).all()   # J(π*) bounds every policy's value
