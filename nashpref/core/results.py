"""The result dictionaries of `nashpref equilibrium` and `nashpref solve` (equilibrium.json, result.json and the
rows of summary.json), built from exact runs and checked against the exact game."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nashpref.core.equilibrium import Equilibrium
from nashpref.core.exact import ExactRun
from nashpref.core.game import PreferenceGame

if TYPE_CHECKING:
    from nashpref.solvers.base import Solver


def equilibrium_result(game: PreferenceGame, eq: Equilibrium, seconds: float) -> dict:
    """The contents of equilibrium.json."""
    return {
        "game": game.name,
        "tau": game.tau,
        "actions": list(game.actions) if game.actions else None,
        "policies": eq.policy,
        "gap": eq.gap,
        "gap_unregularized": game.gap(eq.policy, tau=0.0),
        "method": eq.method,
        "iterations": eq.iterations,
        "seconds": seconds,
    }


def solve_result(game: PreferenceGame, solver: Solver, run: ExactRun, *, mode: str, seed: int,
                 sampled: Any = None, equilibrium: Equilibrium | None = None) -> dict:
    """The contents of result.json: ``policies`` is the iterate the solver's guarantee is about (the average
    for average-iterate solvers, which then also get ``last_policies``); ``gap`` is exact, one per context."""
    result = {
        "game": game.name,
        "tau": game.tau,
        "solver": solver.name,
        "mode": mode,
        "iterations": run.iterations,
        "iterate": solver.iterate,
        "actions": list(game.actions) if game.actions else None,
        "policies": run.policies,
        "gap": game.gap(run.policies),
        "gap_unregularized": game.gap(run.policies, tau=0.0),
    }
    if solver.iterate == "average":
        result["last_policies"] = run.last_policies
        result["last_gap"] = game.gap(run.last_policies)
    if equilibrium is not None:
        result["equilibrium_gap"] = equilibrium.gap
        if game.tau > 0:    # π* is unique: how far the reported iterate is from it
            result["distance_to_equilibrium"] = (run.policies - equilibrium.policy).abs().sum(-1)
    result |= {"seconds": run.seconds, "seed": seed, "solver_config": solver.config}
    if sampled is not None:
        result["sampled"] = sampled
        if run.metrics and "queries" in run.metrics[-1]:
            result["queries"] = run.metrics[-1]["queries"]
    return result


def summary_row(result: dict) -> dict:
    """One solver's line of the final table and of summary.json (worst context for the gaps)."""
    row = {"solver": result["solver"], "iterate": result["iterate"], "iterations": result["iterations"],
           "gap": result["gap"].max().item(), "gap_unregularized": result["gap_unregularized"].max().item(),
           "seconds": result["seconds"]}
    if "queries" in result:
        row["queries"] = result["queries"]
    return row
