"""Runs a solver's exact tabular dynamics and measures every logged iterate against the exact game."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.solvers.base import Solver


@dataclass
class ExactRun:
    policies: Tensor            # the iterate the solver's guarantee is about (average or last), (C, N)
    last_policies: Tensor       # (C, N)
    iterations: int
    seconds: float
    metrics: list[dict] = field(default_factory=list)


def iterate_metrics(game: PreferenceGame, policy: Tensor, last: Tensor, iteration: int) -> dict:
    """Worst-case-over-contexts numbers for one iterate (the mean is also given for the gap)."""
    gap = game.gap(policy)
    row = {"iteration": iteration, "gap": gap.max().item(), "gap_mean": gap.mean().item(),
           "gap_unregularized": game.gap(policy, tau=0.0).max().item(), "kl": game.kl(policy).max().item()}
    if last is not policy:
        row["gap_last"] = game.gap(last).max().item()
    return row


def log_schedule(iterations: int, points: int = 200) -> list[int]:
    """About ``points`` iteration numbers spread geometrically over [1, iterations] (always incl. both ends)."""
    if iterations <= points:
        return list(range(1, iterations + 1))
    ticks = {1, iterations}
    ticks.update(int(round(math.exp(x * math.log(iterations) / (points - 1)))) for x in range(points))
    return sorted(t for t in ticks if 1 <= t <= iterations)


def run_exact(game: PreferenceGame, solver: Solver, iterations: int | None = None, log_points: int = 200,
              on_step: Callable[[int], None] | None = None) -> ExactRun:
    """Run ``iterations`` exact steps (the solver's default if None); log ~``log_points`` iterates."""
    iterations = solver.default_iterations(game) if iterations is None else iterations
    averaged = solver.iterate == "average"
    log_pi = solver.init(game)
    total = torch.zeros_like(log_pi)
    ticks = set(log_schedule(iterations, log_points))
    metrics = []
    start = time.perf_counter()
    for t in range(iterations):
        log_pi = solver.step(game, log_pi, t)
        pi = log_pi.exp()
        if averaged:
            total += pi
        if t + 1 in ticks:
            policy = total / (t + 1) if averaged else pi
            metrics.append(iterate_metrics(game, policy, pi, t + 1) | {"seconds": time.perf_counter() - start})
        if on_step is not None:
            on_step(t + 1)
    last = log_pi.exp()
    policy = total / max(iterations, 1) if averaged and iterations else last
    return ExactRun(policies=policy, last_policies=last, iterations=iterations,
                    seconds=time.perf_counter() - start, metrics=metrics)
