"""Shared test helpers: random preference games built straight from numpy (independent of nashpref.core.gamefile)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from nashpref.core.game import PreferenceGame
from nashpref.core.tabular import TabularPolicy

# Test tensors are tiny: one thread avoids thread-pool overhead, which is severe when cores are oversubscribed
# (measured: solve_equilibrium on 3×10 took 3.5 s with 2 threads under load, 0.06 s with 1). An explicit
# OMP_NUM_THREADS is honoured: CI reruns the `numerics` tests with 2 threads (another summation order).
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


def random_preference_matrix(n: int, rng: np.random.Generator) -> np.ndarray:
    """EGPO's random game: P[i,j] ~ U(0,1) for i > j, P[j,i] = 1 − P[i,j], P[i,i] = ½."""
    lower = np.tril(rng.random((n, n)), k=-1)
    return lower + np.triu(1.0 - lower.T, k=1) + 0.5 * np.eye(n)


def random_reference(n: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """μ = softmax(scale · N(0,1) logits), as in EGPO's tabular experiments."""
    logits = scale * rng.standard_normal(n)
    mu = np.exp(logits - logits.max())
    return mu / mu.sum()


def build_random_game(n: int, seed: int, tau: float, contexts: int = 1) -> PreferenceGame:
    """``contexts`` independent EGPO random games with N = ``n`` actions and μ = softmax(N(0,1))."""
    rng = np.random.default_rng(seed)
    matrices, references = [], []
    for _ in range(contexts):
        matrices.append(random_preference_matrix(n, rng))
        references.append(random_reference(n, rng))
    return PreferenceGame.create(np.stack(matrices), np.stack(references), tau, name=f"random-{n}-{seed}")


@pytest.fixture(scope="session")
def random_game():
    """The builder ``random_game(n, seed, tau, contexts=1) -> PreferenceGame`` (session scope: hypothesis-safe)."""
    return build_random_game


class Scripted(TabularPolicy):
    """A frozen π_t whose samples are fixed in advance, so collect() can be checked by hand."""

    def __init__(self, logits, responses):
        super().__init__(logits)
        self.responses = responses

    def sample(self, contexts, n, generator=None):
        assert n == self.responses.shape[1]
        return self.responses


def lbfgs_minimiser(start_log_pi: torch.Tensor, loss_of_log_pi, max_iter: int = 1000, tolerance_grad: float = 1e-15,
                    tolerance_change: float = 1e-18) -> torch.Tensor:
    """argmin over softmax logits of ``loss_of_log_pi(log π)`` (a scalar), by strong-Wolfe LBFGS from
    ``start_log_pi`` (five restarts of its budget); returns π. Population-minimiser tests compare it with the
    tabular update their loss should reproduce."""
    theta = start_log_pi.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([theta], lr=1, max_iter=max_iter, tolerance_grad=tolerance_grad,
                                  tolerance_change=tolerance_change, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_of_log_pi(torch.log_softmax(theta, -1))
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    return torch.softmax(theta.detach(), -1)


# Weighted rock-paper-scissors (games/weighted-rps.toml), the hand-step tests' game.
WRPS = [[0.5, 0.4, 0.8], [0.6, 0.5, 0.0], [0.2, 1.0, 0.5]]


def make_solver(name: str, **options):
    """The registered solver ``name`` with Config options."""
    from nashpref.solvers import get_solver

    cls = get_solver(name)
    return cls(cls.Config(**options))


def hedge_trajectory(solver, game: PreferenceGame, steps: int):
    """The exact dynamics from μ: KL(π*‖π_t) and the gap of π_t per step, and the average iterate's policy."""
    from nashpref.core.equilibrium import solve_equilibrium
    from nashpref.core.game import kl_divergence

    star = solve_equilibrium(game).policy
    log_pi, total, kls, gaps = game.log_mu, torch.zeros_like(game.mu), [], []
    for t in range(steps):
        log_pi = solver.step(game, log_pi, t)
        total += log_pi.exp()
        kls.append(kl_divergence(star, log_pi.exp()).item())
        gaps.append(game.gap(log_pi.exp()).item())
    return np.array(kls), np.array(gaps), total / steps


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, the previous count restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_tiny(tiny_dir, tmp_path, solver: str):
    """`nashpref train --solver SOLVER` on the tiny model: hf sampler, 2 iterations, K = 3, τ = 0.25, 4 training
    prompts and 1 held out; returns the output directory."""
    import json

    from nashpref.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["describe the red cat", "tell me about a robot", "what is the sea like?",
                                "say one thing about a star", "describe a green hill"]), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--policy", str(tiny_dir / "policy"), "--preference", f"reward:{tiny_dir / 'reward'}",
                 "--prompts", str(prompts), "--solver", solver, "--sampler", "hf", "--heldout", "1",
                 "--samples", "3", "--eval-samples", "2", "--max-new-tokens", "6", "--iterations", "2",
                 "--tau", "0.25", "--lr", "1e-3", "--out", str(out)]) == 0
    return out
