"""Part (d): sampled training, gap against the number of preference queries for every solver and iterative DPO
on three games."""

from __future__ import annotations

import statistics
from pathlib import Path

from nashpref.benchmarks.tabular.race import sampled_row
from nashpref.benchmarks.tabular.report import fmt_gap, md_table, race_plot
from nashpref.core.gamefile import load_game
from nashpref.solvers import REGISTRY


SAMPLED_GAMES = ("weighted-rps", "egpo-random", "bt-mixture")
SAMPLED_THRESHOLDS = (0.1, 0.02)


def part_d(args) -> dict:
    from nashpref.sampled import SampledConfig
    iterations = 200 if args.quick else args.sampled_iterations
    seeds = list(range(args.sampled_seeds))
    runs, start_gaps = [], {}
    for game_name in SAMPLED_GAMES:
        game = load_game(game_name, tau=0.1)
        start_gaps[game_name] = game.gap(game.mu).max().item()
        for name, cls in REGISTRY.items():
            for seed in seeds:
                config = SampledConfig(iterations=iterations, samples=args.samples, labels=args.labels,
                                       lr=args.sampled_lr, optimizer="adam", seed=seed)
                try:
                    row = sampled_row(game, cls(), config, curve_points=150, thresholds=SAMPLED_THRESHOLDS)
                except NotImplementedError as err:
                    runs.append({"game": game_name, "solver": name, "seed": seed, "error": str(err)})
                    continue
                contexts = game.num_contexts       # the row counts queries per context; part (d) per game
                curve = row["curve"]
                runs.append({"game": game_name, "solver": name, "seed": seed, "seconds": row["loop_seconds"],
                             "final_gap": row["final_gap"], "lowest_gap": row["lowest_gap"],
                             "total_queries": row["queries"],
                             "reach": {key: None if hit is None else round(hit["queries"] * contexts)
                                       for key, hit in row["reach"].items()},
                             # [iteration, queries, gap] on ~150 log-spaced iterations: enough for the plot
                             "curve": [[i, round(q * contexts), g] for i, q, g in
                                       zip(curve["iteration"], curve["queries"], curve["gap"])]})
                print(f"(d) {game_name} {name} seed {seed}: final gap {row['final_gap']:.3g} after "
                      f"{row['queries']} queries", flush=True)
    plot_d(Path(args.out) / "sampled_queries.png", runs)
    return {"iterations": iterations, "samples": args.samples, "labels": args.labels, "lr": args.sampled_lr,
            "optimizer": "adam", "seeds": seeds, "tau": 0.1, "runs": runs, "start_gaps": start_gaps}


def plot_d(path: Path, runs: list[dict]) -> None:
    panels = []
    for game_name in SAMPLED_GAMES:
        lines = {}
        for name in REGISTRY:
            mine = [r for r in runs if r["game"] == game_name and r["solver"] == name and "curve" in r]
            if mine:
                points = range(len(mine[0]["curve"]))
                lines[name] = ([mine[0]["curve"][i][1] for i in points],
                               [statistics.median(r["curve"][i][2] for r in mine) for i in points])
        panels.append({"title": f"{game_name}, τ = 0.1 (sampled)", "lines": lines})
    race_plot(path, panels, xlabel="preference queries (per game, all contexts)", thresholds=SAMPLED_THRESHOLDS,
              title="(d) sampled training: duality gap (max over contexts), every solver with its defaults")


def report_d(part: dict) -> str:
    rows = []
    for game_name in SAMPLED_GAMES:
        for name in REGISTRY:
            mine = [r for r in part["runs"] if r["game"] == game_name and r["solver"] == name]
            if not mine:
                continue
            if "error" in mine[0]:
                rows.append([game_name, name, "n/a", "n/a", "n/a", "n/a", mine[0]["error"]])
                continue
            cells = []
            for thr in SAMPLED_THRESHOLDS:
                values = [r["reach"][str(thr)] for r in mine]
                done = [v for v in values if v is not None]
                cell = "not reached" if not done else f"{statistics.median(done):,.0f}"
                if done and len(done) < len(values):
                    cell += f" ({len(done)}/{len(values)} seeds)"
                cells.append(cell)
            final = statistics.median(r["final_gap"] for r in mine)
            best = statistics.median(r["lowest_gap"] for r in mine)
            rows.append([f"{game_name} (gap at μ: {fmt_gap(part['start_gaps'][game_name])})", name] + cells
                        + [fmt_gap(final), fmt_gap(best), f"{mine[0]['total_queries']:,}"])
    reached = {name for name in REGISTRY
               if all(any(r["reach"][str(SAMPLED_THRESHOLDS[-1])] is not None for r in part["runs"]
                          if r["game"] == g and r["solver"] == name and "reach" in r) for g in SAMPLED_GAMES)}
    summary = (f"\n\nReached and held gap ≤ {SAMPLED_THRESHOLDS[-1]:g} on all three games: "
               f"{', '.join(n for n in REGISTRY if n in reached) or 'none'}; not on every game: "
               f"{', '.join(n for n in REGISTRY if n not in reached) or 'none'}.")
    head = (f"τ = 0.1, {part['iterations']} iterations, K = {part['samples']} samples per context, "
            f"{part['labels']} labels, Adam lr = {part['lr']}, 1 epoch × 1 minibatch per iteration, every solver "
            f"with its default config; seeds {part['seeds']} (medians over seeds). 'Queries to reach' = queries "
            "spent when the gap (max over contexts) drops below the threshold *and stays there* to the end.\n\n")
    return head + md_table(["game", "solver"] + [f"queries to gap ≤ {t:g}" for t in SAMPLED_THRESHOLDS]
                           + ["final gap", "lowest gap", "total queries"], rows) + summary
