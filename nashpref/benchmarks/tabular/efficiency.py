"""Sampled efficiency: every solver's default sampled run (what `nashpref solve --mode sampled` does without
options: its tuned ``sampled_defaults`` and ``sampled_options``) on random intransitive games with N ≤ 10, as
queries per context against the duality gap at the τ the solver targets; medians over games and seeds.

Entry point: scripts/bench_sampled_efficiency.py. Writes OUT/results.json, OUT/README.md, OUT/queries_to_gap.png.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from nashpref.benchmarks.tabular.common import random_game, stamp
from nashpref.benchmarks.tabular.race import sampled_settings
from nashpref.benchmarks.tabular.report import fmt_gap, md_table
from nashpref.core.exact import log_schedule
from nashpref.io import staged_output, write_json
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.solvers import REGISTRY, UNREGULARISED

TARGET, BUDGET = 0.03, 100_000          # the gap to reach and the queries per context allowed for it
SIZES = (5, 7, 10)
TAU = 0.1
GRID = 60                               # log-spaced query counts of the median curves
CURVE_POINTS = 120                      # log-spaced iterations kept per run


def target_key(solver: str) -> str:
    return "gap_unregularized" if solver in UNREGULARISED else "gap"


def one_run(solver: str, n: int, game_seed: int, seed: int, iterations: int | None) -> dict:
    """One default sampled run; queries per context and the targeted gap at every iteration (thinned)."""
    game = random_game(n, TAU, seed=game_seed)
    settings = sampled_settings(solver, recommended=True)
    config = SampledConfig(**settings["values"], iterations=iterations or settings["tuned_iterations"] or 500,
                           seed=seed)
    start = time.perf_counter()
    run = run_sampled(game, REGISTRY[solver](settings["options"]), config)
    seconds = time.perf_counter() - start
    key, rows = target_key(solver), run.metrics
    queries = [r["queries"] / game.num_contexts for r in rows]
    gaps = [r[key] for r in rows]
    first = next((q for q, g in zip(queries, gaps) if g <= TARGET), None)
    stay = len(gaps)
    while stay > 0 and gaps[stay - 1] <= TARGET:
        stay -= 1
    keep = [t - 1 for t in log_schedule(len(rows), CURVE_POINTS)]
    return {"solver": solver, "n": n, "game_seed": game_seed, "seed": seed, "iterations": run.iterations,
            "gap_key": key, "final_gap": gaps[-1], "queries": queries[-1], "seconds": seconds,
            "first_reach": first, "reach_and_stay": queries[stay] if stay < len(gaps) else None,
            "curve": [[queries[i], float(f"{gaps[i]:.4g}")] for i in keep]}


def gap_at(curve: list[list[float]], q: float) -> float | None:
    """The gap of the last logged iterate that had spent at most ``q`` queries (None before the first)."""
    seen = [g for spent, g in curve if spent <= q]
    return seen[-1] if seen else None


def median_curve(runs: list[dict]) -> tuple[list[float], list[float]]:
    """The median gap over runs on a log grid of queries, up to the longest run's last query count (a finished run
    keeps its last iterate, so its gap holds from there on)."""
    low = max(r["curve"][0][0] for r in runs)
    high = max(r["curve"][-1][0] for r in runs)
    xs = [low * (high / low) ** (i / (GRID - 1)) for i in range(GRID)] if high > low else [low]
    ys = [statistics.median(gap_at(r["curve"], x) for r in runs) for x in xs]
    return xs, ys


def plot(path: Path, runs: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(9, 6))
    colours = plt.get_cmap("tab20").colors
    for index, name in enumerate(REGISTRY):
        mine = [r for r in runs if r["solver"] == name]
        if mine:
            xs, ys = median_curve(mine)
            style = "--" if name in UNREGULARISED else "-"
            axes.plot(xs, ys, style, color=colours[2 * index % 20 + (index >= 10)],
                      label=f"{name} ({'Gap₀' if name in UNREGULARISED else 'Gap_τ'})")
    axes.axhline(TARGET, color="black", lw=0.8, ls=":")
    axes.axvline(BUDGET, color="black", lw=0.8, ls=":")
    axes.set(xscale="log", yscale="log", xlabel="preference queries per context",
             ylabel="duality gap at the solver's target τ (median over games × seeds)",
             title=f"default `solve --mode sampled` runs, random games N ∈ {SIZES}, τ = {TAU}")
    axes.legend(fontsize=8, ncol=2, title="dashed: τ = 0 solvers (Gap₀)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(runs: list[dict]) -> list[dict]:
    rows = []
    for name in REGISTRY:
        mine = [r for r in runs if r["solver"] == name]
        if not mine:
            continue
        reach = [r["reach_and_stay"] for r in mine]
        done = [q for q in reach if q is not None]
        rows.append({"solver": name, "gap": "Gap₀" if name in UNREGULARISED else "Gap_τ", "runs": len(mine),
                     "reached": len(done), "median_queries": statistics.median(done) if done else None,
                     "max_queries": max(done) if len(done) == len(mine) else None,
                     "median_final_gap": statistics.median(r["final_gap"] for r in mine),
                     "worst_final_gap": max(r["final_gap"] for r in mine),
                     "queries_per_run": statistics.median(r["queries"] for r in mine),
                     "met": len(done) == len(mine) and max(done) <= BUDGET})
    return rows


def markdown(report: dict) -> str:
    def q(x):
        return "–" if x is None else f"{x:,.0f}"

    table = md_table(["solver", "gap", f"reached ≤ {TARGET:g} (runs)", "median queries to reach",
                      "worst queries to reach", "median final gap", "worst final gap", "queries per run",
                      f"≤ {BUDGET:,} everywhere"],
                     [[r["solver"], r["gap"], f"{r['reached']}/{r['runs']}", q(r["median_queries"]),
                       q(r["max_queries"]), fmt_gap(r["median_final_gap"]), fmt_gap(r["worst_final_gap"]),
                       q(r["queries_per_run"]), "yes" if r["met"] else "no"] for r in report["summary"]])
    return (f"# Sampled efficiency: queries to a duality gap of {TARGET:g}\n\n"
            f"Command: `{report['stamp']['command']}` ({report['stamp']['date']}, {report['seconds']:.0f} s on "
            f"one thread).\n\nEvery solver's *default* sampled run (`nashpref solve --mode sampled --solver X`: its "
            "tuned `sampled_defaults` and `sampled_options`) on EGPO random games (P[i,j] ~ U(0,1) below the "
            f"diagonal, μ = softmax(N(0,1)), one context) with N ∈ {list(report['sizes'])}, game seeds "
            f"{report['game_seeds']}, sampler seeds {report['seeds']}, exact labels, τ = {TAU}. The gap is "
            "Gap₀ (τ = 0) for the solvers of the unregularised game (SPPO, DNO, SPO, MPO, COMAL) and Gap_τ for "
            "the others, of the iterate each solver's guarantee is about. 'Queries to reach' = queries per "
            "context from which the gap stays ≤ the target to the end of the run. Iterative DPO is the "
            "baseline (no equilibrium guarantee). The plot shows, per solver, the median over its "
            f"{len(report['sizes']) * len(report['game_seeds']) * len(report['seeds'])} runs of the gap "
            "at each query count (a finished run holds its last iterate).\n\n" + table + "\n\n" + verdict(report) + "\n\n![queries to gap](queries_to_gap.png)\n")


def verdict(report: dict) -> str:
    missed = [r["solver"] for r in report["summary"] if not r["met"] and r["solver"] != "iterative-dpo"]
    if not missed:
        return f"Every Nash solver holds gap ≤ {TARGET:g} within {BUDGET:,} queries per context in every run."
    return f"Not met in every run: {', '.join(missed)} (see the runs in results.json)."


def run_bench(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    runs = []
    for name in args.solvers:
        for n in args.sizes:
            for game_seed in args.game_seeds:
                for seed in args.seeds:
                    runs.append(one_run(name, n, game_seed, seed, args.iterations))
                    r = runs[-1]
                    print(f"{name} N={n} game {game_seed} seed {seed}: final {r['final_gap']:.3g}, reach "
                          f"{r['reach_and_stay']}, {r['seconds']:.1f} s", flush=True)
    report = {"stamp": stamp(args), "sizes": list(args.sizes), "game_seeds": list(args.game_seeds),
              "seeds": list(args.seeds), "tau": TAU, "target": TARGET, "budget": BUDGET,
              "seconds": time.perf_counter() - start, "runs": runs}
    report["summary"] = summary(runs)
    with staged_output(Path(args.out)) as staging:
        write_json(staging / "results.json", report)
        plot(staging / "queries_to_gap.png", runs)
        (staging / "README.md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/sampled-efficiency")
    p.add_argument("--solvers", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--game-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=None, help="override every solver's tuned count (quick runs)")
    p.add_argument("--quick", action="store_true", help="recorded in the stamp only")
    return p
