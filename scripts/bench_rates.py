"""Convergence rates of the exact dynamics on a shipped game: the fitted log-log slope of the average iterate's
τ = 0 gap against T (ONPO's O(1/T) against SPPO's and DNO's Hedge), and the measured per-iteration contraction
of the last iterate's gap at τ > 0 (Nash-MP against EGPO, with ONPO's last iterate alongside).

    python scripts/bench_rates.py --game egpo-random --out bench/solver-rates

Writes OUT/README.md (tables and the command), OUT/results.json and OUT/rates.png.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nashpref.core.exact import run_exact  # noqa: E402
from nashpref.core.gamefile import load_game  # noqa: E402
from nashpref.solvers import get_solver  # noqa: E402

AVERAGE_SOLVERS = ("sppo", "dno", "onpo")
LAST_SOLVERS = ("egpo", "nash-mp", "onpo", "inpo")


def slope(rows: list[dict], key: str, start: int) -> float:
    """Least-squares slope of log gap against log T over the logged iterates with T ≥ start."""
    points = [(math.log(r["iteration"]), math.log(r[key])) for r in rows if r["iteration"] >= start and r[key] > 0]
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def contraction(rows: list[dict], key: str, floor: float = 1e-11) -> tuple[float | None, int | None]:
    """Per-iteration factor of the gap between its first logged value below 1e-2 and its last above ``floor``,
    and the first iteration with gap ≤ 1e-10."""
    above = [r for r in rows if floor < r[key] <= 1e-2]
    reached = next((r["iteration"] for r in rows if r[key] <= 1e-10), None)
    if len(above) < 2:
        return None, reached      # never got below 1e-2 within the budget
    a, b = above[0], above[-1]
    return math.exp((math.log(b[key]) - math.log(a[key])) / (b["iteration"] - a["iteration"])), reached


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--game", default="egpo-random")
    parser.add_argument("--taus", default="0.1,0.01", help="τ > 0 values for the last-iterate comparison")
    parser.add_argument("--iterations", type=int, default=20000, help="T of the τ = 0 average-iterate race")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results: dict = {"game": args.game, "average": {}, "last": {}}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    game0 = load_game(args.game, 0.0)
    for name in AVERAGE_SOLVERS:
        solver = get_solver(name)()
        run = run_exact(game0, solver, args.iterations)
        rows = run.metrics
        fitted = slope(rows, "gap", 100)
        results["average"][name] = {"slope": fitted, "tail_slope": slope(rows, "gap", args.iterations // 4),
                                    "gap_at_T": rows[-1]["gap"], "T": args.iterations,
                                    "gap_at_1000": next(r["gap"] for r in rows if r["iteration"] >= 1000)}
        axes[0].loglog([r["iteration"] for r in rows], [r["gap"] for r in rows], label=f"{name} (slope {fitted:.2f})")
    axes[0].set(title=f"{args.game}, τ = 0: average iterate", xlabel="iteration T", ylabel="duality gap (worst context)")
    axes[0].legend()
    for axis, tau in zip(axes[1:], [float(t) for t in args.taus.split(",")]):
        game = load_game(args.game, tau)
        results["last"][str(tau)] = {}
        for name in LAST_SOLVERS:
            solver = get_solver(name)()
            iterations = min(solver.default_iterations(game), int(60 / tau))
            rows = run_exact(game, solver, iterations, log_points=iterations).metrics
            key = "gap_last" if solver.iterate == "average" else "gap"
            factor, reached = contraction(rows, key)
            evaluations = 2 if solver.extragradient else 1
            results["last"][str(tau)][name] = {"gap_contraction_per_iteration": factor,
                                               "iterations_to_gap_1e-10": reached,
                                               "win_rate_evaluations_per_iteration": evaluations}
            axis.semilogy([r["iteration"] for r in rows], [max(r[key], 1e-16) for r in rows],
                          label=f"{name}{' (last)' if key == 'gap_last' else ''}" +
                          (f": ×{factor:.3f}/it" if factor else ""))
        axis.set(title=f"{args.game}, τ = {tau:g}: last iterate", xlabel="iteration", ylabel="duality gap",
                 xlim=(0, 1.2 * max(v["iterations_to_gap_1e-10"] or 0 for v in results["last"][str(tau)].values())))
        axis.legend()
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "rates.png", dpi=110)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    command = "python scripts/bench_rates.py " + shlex.join(argv)
    lines = [f"# Convergence rates of the exact dynamics ({args.game})", "", "```", command, "```", "",
             "## τ = 0: average iterate, fitted log-log slope of the gap over T ≥ 100", "",
             "| solver | slope, T ≥ 100 | slope, T ≥ T/4 | gap at T = 1000 | gap at T = " + str(args.iterations) + " |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {v['slope']:.3f} | {v['tail_slope']:.3f} | {v['gap_at_1000']:.2e} | {v['gap_at_T']:.2e} |"
              for n, v in results["average"].items()]
    lines += ["", "SPPO and DNO use their default constant Hedge step, tuned so that their O(1/√T) bound meets",
              "their target at their default horizon; a constant-step Hedge average levels off at a gap of order η",
              "(see the tail slope). ONPO's optimistic step keeps O(1/T) at a constant step.", "",
              "## τ > 0: last iterate, gap contraction per iteration (gap from 1e-2 down to 1e-11)", "",
              "| τ | solver | contraction / iteration | iterations to gap ≤ 1e-10 | win-rate evaluations / iteration |",
              "|---|---|---|---|---|"]
    lines += [f"| {tau} | {n} | {v['gap_contraction_per_iteration'] or float('nan'):.4f} | "
              f"{v['iterations_to_gap_1e-10'] or '—'} | "
              f"{v['win_rate_evaluations_per_iteration']} |"
              for tau, table in results["last"].items() for n, v in table.items()]
    lines += ["", "Nash-MP with step η is EGPO's extragradient step with η/(1+ητ); EGPO's default is Nash-MP's η = 1,",
              "Nash-MP's default η = 2. ![rates](rates.png)", ""]
    (args.out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
