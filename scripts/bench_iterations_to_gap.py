#!/usr/bin/env python
"""Iterations to a duality gap of 1e-2 and 1e-6 for ONPO and Nash-MP on every shipped game, exact dynamics with
default options — the rows bench/new-solvers-a.md (COMAL, MPO, SPO at τ = 0) does not have.

    python scripts/bench_iterations_to_gap.py --out bench/iterations-to-gap

ONPO runs at τ = 0 (its average iterate heads for the unregularised equilibrium) and at the game's τ; Nash-MP
needs τ > 0 and runs at the game's τ (last iterate). Every iterate is measured (worst context); "reached" is the
iteration from which the gap stays at or below the threshold (nashpref.benchmarks.tabular.race.reached_at).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from nashpref.benchmarks.tabular.race import reached_at  # noqa: E402
from nashpref.core.exact import run_exact  # noqa: E402
from nashpref.core.gamefile import list_games, load_game  # noqa: E402
from nashpref.solvers import REGISTRY  # noqa: E402

RUNS = (("onpo", "zero"), ("onpo", "game"), ("nash-mp", "game"))
THRESHOLDS = (1e-2, 1e-6)


def run(game_name: str, solver_name: str, which_tau: str) -> dict:
    game = load_game(game_name)
    if which_tau == "zero":
        game = game.with_tau(0.0)
    solver = REGISTRY[solver_name]()
    iterations = solver.default_iterations(game)
    result = run_exact(game, solver, iterations, log_points=iterations)
    key = "gap" if game.tau > 0 else "gap_unregularized"
    return {"game": game_name, "solver": solver_name, "tau": game.tau, "iterate": solver.iterate,
            "iterations": iterations, "seconds": result.seconds, "final_gap": result.metrics[-1][key],
            "reached": {f"{t:g}": reached_at(result.metrics, t, key) for t in THRESHOLDS}}


def markdown(rows: list[dict], command: str, minutes: float, load: list[float]) -> str:
    lines = ["# ONPO and Nash-MP: iterations to a duality gap", "", f"Command: `{command}` ({minutes:.1f} min; load "
             f"average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after, on a shared 2-core machine).", "",
             "Exact dynamics, default options and default iteration budgets. Gap: the exact duality gap at the τ "
             "of the row (worst context) of the iterate each solver's guarantee is about (ONPO: average, Nash-MP: "
             "last). 'Reached' = the iteration from which the gap stays ≤ the threshold ('—': not within the "
             "budget).", "",
             "| game | solver | τ | iterate | budget | ≤ 1e-2 at | ≤ 1e-6 at | final gap | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reach = ["—" if r["reached"][f"{t:g}"] is None else f"{r['reached'][f'{t:g}']:,}" for t in THRESHOLDS]
        lines.append(f"| {r['game']} | {r['solver']} | {r['tau']:g} | {r['iterate']} | {r['iterations']:,} | "
                     f"{reach[0]} | {reach[1]} | {r['final_gap']:.1e} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    command = f"python scripts/bench_iterations_to_gap.py --out {args.out}"
    load, start = list(os.getloadavg()), time.perf_counter()
    rows = []
    for solver, which_tau in RUNS:
        for info in list_games():
            rows.append(run(info.name, solver, which_tau))
            print(rows[-1]["game"], solver, rows[-1]["tau"], rows[-1]["reached"], flush=True)
    minutes = (time.perf_counter() - start) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"command": command, "load_before": load, "rows": rows},
                                                      indent=1) + "\n")
    (args.out / "README.md").write_text(markdown(rows, command, minutes, load))


if __name__ == "__main__":
    main()
