"""``nashpref bench tabular``: every solver races iterative DPO on the shipped tabular games.

*Exact mode* runs each solver's exact dynamics (default options) for the same number of iterations. *Sampled
mode* trains a tabular policy with each solver's per-sample loss under the same budget of preference queries
per context: a solver runs budget // (what one of its rounds queries) iterations, counted by running one round.
Every iterate is measured against the exact game. Writes OUT/README.md (tables, winners, the command),
OUT/results.json (every curve and setting) and OUT/exact.png, OUT/sampled.png, all at once at the end.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from tqdm import tqdm

from nashpref.benchmarks.tabular.report import (LARGE_GAME, THRESHOLDS, markdown, plot_mode)
from nashpref.checks import integer
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.exact import ExactRun, iterate_metrics, log_schedule, run_exact
from nashpref.core.game import PreferenceGame
from nashpref.core.gamefile import list_games, load_game
from nashpref.errors import BadInput
from nashpref.io import check_output_dir, jsonable, staged_output
from nashpref.sampled import (SampledConfig, recommended_options, recommended_values, run_sampled, single_thread,
                              validate_config)
from nashpref.solvers import REGISTRY, Solver

MODES = ("exact", "sampled")
FULL = {"exact_iterations": 2000, "large_game_iterations": 500, "query_budget": 100_000, "seeds": (0, 1)}
QUICK = {"exact_iterations": 200, "large_game_iterations": 100, "query_budget": 20_000, "seeds": (0,)}
POLICY_ENTRIES = 1000       # final policies are stored for games with at most this many (context, action) pairs
TIMING_CALLS = 25           # exact evaluations timed to estimate their share of a run's time
MEASURING_SHARE = 0.05      # above this share of an exact run's time, its seconds come from an unmeasured rerun


def shipped_games() -> tuple[str, ...]:
    return tuple(info.name for info in list_games())


def registered_solvers() -> tuple[str, ...]:
    return tuple(REGISTRY)


@dataclass
class TabularBenchConfig:
    """Race every solver against iterative DPO on the shipped tabular games, in exact and sampled mode; write
    OUT/README.md (tables, winner per game, the command), OUT/results.json (every curve) and one plot per mode."""

    out: Path = Path("bench/tabular-race")
    """Output folder; its files are replaced only once the whole run has succeeded."""
    games: tuple[str, ...] = field(default_factory=shipped_games)
    """Games: NAMEs of shipped games (see `nashpref games`) or paths to .toml files. Default: every shipped game."""
    solvers: tuple[str, ...] = field(default_factory=registered_solvers)
    """Solvers to race. Default: every registered solver, iterative-dpo included."""
    modes: tuple[Literal["exact", "sampled"], ...] = MODES
    """exact: each solver's exact dynamics with exact win-rates; sampled: training a tabular policy with its
    per-sample loss on sampled responses and preference queries."""
    exact_iterations: Annotated[int | None, tyro.conf.arg(metavar="N")] = None
    """[exact] Iterations of every solver (default 2000; 200 with --quick)."""
    large_game_iterations: Annotated[int | None, tyro.conf.arg(metavar="N")] = None
    """[exact] Iterations on games with more than 1000 (context, action) pairs, such as batch-256, where an iterative
    DPO round (a Bradley-Terry fit) costs ~30 ms (default 500; 100 with --quick; at most --exact-iterations)."""
    query_budget: Annotated[int | None, tyro.conf.arg(metavar="Q")] = None
    """[sampled] Preference queries per context, the same for every solver, which runs budget // (its queries
    per context and iteration) iterations (default 100000; 20000 with --quick)."""
    seeds: Annotated[tuple[int, ...] | None, tyro.conf.arg(metavar="S")] = None
    """[sampled] Seeds, one run each; the tables show medians over seeds (default 0 1; 0 with --quick)."""
    recommended: bool = True
    """[sampled] Each solver's tuned tabular settings (its sampled_defaults and sampled_options, as `solve
    --recommended`), its tuned iteration count cut at the budget; else the generic sampled defaults."""
    fill_budget: bool = False
    """[sampled] Spend the whole budget, beyond each solver's tuned iteration count (hours: bench/README.md §1)."""
    tau: Annotated[float | None, tyro.conf.arg(metavar="X")] = None
    """KL strength τ ≥ 0 for every game, overriding the game files (at 0, solvers that need τ > 0 are skipped)."""
    quick: bool = False
    """A tiny run (a smoke test): the budgets left unset take their --quick values."""
    curve_points: int = 80
    """Points per curve kept in results.json (log-spaced; every iteration of shorter runs)."""
    progress: bool = True
    """Show a progress bar over the runs on stderr (on a terminal only)."""


@dataclass
class Plan:
    """A validated config: loaded games, resolved budgets and what is skipped."""

    games: dict[str, PreferenceGame]
    solvers: list[str]
    modes: list[str]
    iterations: int
    large_iterations: int
    budget: int
    seeds: tuple[int, ...]
    fill_budget: bool = False
    skipped: list[dict] = field(default_factory=list)
    sampled: dict[str, dict] = field(default_factory=dict)     # solver → its sampled settings


# ---- validation ------------------------------------------------------------------------------------------------
def make_plan(config: TabularBenchConfig) -> Plan:
    """Check every option, load the games and resolve the budgets; BadInput (one line) on bad input."""
    check_output_dir(Path(config.out))
    check_writable(Path(config.out))
    defaults = QUICK if config.quick else FULL
    iterations = positive_int("exact_iterations", config.exact_iterations, defaults["exact_iterations"])
    large = positive_int("large_game_iterations", config.large_game_iterations, defaults["large_game_iterations"])
    budget = positive_int("query_budget", config.query_budget, defaults["query_budget"])
    positive_int("curve_points", config.curve_points, 1)
    seeds = defaults["seeds"] if config.seeds is None else distinct(config.seeds, "seeds")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise BadInput(f"bench tabular: seeds must be integers >= 0, got {seeds!r}")
    modes = distinct(config.modes, "modes")
    solvers = distinct(config.solvers, "solvers")
    for kind, chosen, known in (("mode", modes, MODES), ("solver", solvers, tuple(REGISTRY))):
        unknown = [x for x in chosen if x not in known]
        if unknown:
            raise BadInput(f"bench tabular: unknown {kind} {unknown[0]!r} (choose from: {', '.join(known)})")
    games = {spec: load_game(spec, config.tau) for spec in distinct(config.games, "games")}
    plan = Plan(games=games, solvers=list(solvers), modes=list(modes), iterations=iterations,
                large_iterations=min(large, iterations), budget=budget, seeds=tuple(seeds),
                fill_budget=bool(config.fill_budget))
    for label, game in games.items():
        for name in solvers:
            if REGISTRY[name].needs_tau and game.tau == 0:
                plan.skipped.append({"game": label, "solver": name, "reason": f"{name} needs τ > 0"})
    if "sampled" in modes:
        plan.sampled = {name: sampled_settings(name, config.recommended) for name in solvers}
    return plan


def check_writable(out: Path) -> None:
    """BadInput unless the output folder (or the nearest folder that exists above it) can be written."""
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"bench tabular: --out {out}: {existing} is not writable")


def positive_int(name: str, value, default: int) -> int:
    return integer(default if value is None else value, f"bench tabular: {name}")


def distinct(values, name: str) -> tuple:
    """``values`` without repeats (first occurrence kept); BadInput when empty or not a list."""
    if isinstance(values, str) or not isinstance(values, (tuple, list)) or not values:
        raise BadInput(f"bench tabular: {name} must be a non-empty list, got {values!r}")
    return tuple(dict.fromkeys(values))


def sampled_settings(name: str, recommended: bool) -> dict:
    """A solver's sampled-mode options and SampledConfig fields (all but iterations and seed), and which of
    them come from its tuned recommendations."""
    cls = REGISTRY[name]
    options = recommended_options(cls, cls.Config()) if recommended else cls.Config()
    generic = SampledConfig()
    values = {key: getattr(generic, key) for key in ("samples", "lr", "optimizer", "epochs")}
    tuned_iterations = None
    if recommended:
        values = recommended_values(cls(options), values)
        tuned_iterations = cls(options).sampled_defaults.get("iterations")
    changed = [k for k, v in values.items() if v != getattr(generic, k)]
    changed += [f.name for f in fields(options) if getattr(options, f.name) != getattr(cls.Config(), f.name)]
    return {"options": options, "values": values, "tuned": changed, "tuned_iterations": tuned_iterations}


# ---- one run -----------------------------------------------------------------------------------------------------
def reached_at(rows: list[dict], threshold: float, key: str = "gap") -> int | None:
    """The iteration from which ``key`` stays ≤ ``threshold`` to the last row (None if the last is above);
    ``rows`` hold consecutive iterations."""
    start = len(rows)
    while start > 0 and rows[start - 1][key] <= threshold:
        start -= 1
    return rows[start]["iteration"] if start < len(rows) else None


def race_row(game: PreferenceGame, solver: Solver, run: ExactRun, seconds: float, curve_points: int,
             equilibrium: torch.Tensor | None = None, per_iteration: float | None = None,
             thresholds: tuple[float, ...] = THRESHOLDS) -> dict:
    """A run's numbers: final gaps, when each threshold is reached for good, a thinned curve, the seconds.
    ``per_iteration`` (sampled mode) is the queries per context and iteration; the queries spent up to an
    iteration are read from its row (they need not grow evenly: ONPO's first round queries less)."""
    rows = run.metrics
    spent = lambda iteration: rows[iteration - 1]["queries"] / game.num_contexts    # noqa: E731

    def reach(key: str) -> dict:
        out = {}
        for threshold in thresholds:
            at = reached_at(rows, threshold, key)
            out[f"{threshold:g}"] = None if at is None else \
                {"iteration": at} | ({} if per_iteration is None else {"queries": spent(at)})
        return out

    keep = set(log_schedule(len(rows), curve_points))
    kept = [r for r in rows if r["iteration"] in keep]
    keys = ["iteration", "gap", "gap_unregularized"] + (["gap_last"] if "gap_last" in rows[-1] else [])
    curve = {key: [r[key] for r in kept] for key in keys}
    if per_iteration is not None:
        curve["queries"] = [spent(r["iteration"]) for r in kept]
    row = {"iterate": solver.iterate, "iterations": run.iterations, "seconds": seconds,
           "final_gap": rows[-1]["gap"], "final_gap_unregularized": rows[-1]["gap_unregularized"],
           "lowest_gap": min(r["gap"] for r in rows), "reach": reach("gap"),
           "reach_unregularized": reach("gap_unregularized"), "curve": curve}
    if "gap_last" in rows[-1]:
        row["final_gap_last"] = rows[-1]["gap_last"]
    if equilibrium is not None and game.tau > 0:    # π*_τ is unique: the scored iterate's L1 distance to it
        row["distance_to_equilibrium"] = (run.policies - equilibrium).abs().sum(-1).max().item()
    if game.num_contexts * game.num_actions <= POLICY_ENTRIES:
        row["policy"] = run.policies
    return row


def exact_row(game: PreferenceGame, solver: Solver, iterations: int, curve_points: int,
              equilibrium: torch.Tensor) -> dict:
    """Exact dynamics measured at every iteration. Where measuring is a sizeable share of the time, the seconds come
    from an unmeasured rerun; else the measuring, timed apart, is subtracted (iterative DPO: 100× an evaluation)."""
    run = run_exact(game, solver, iterations, log_points=iterations)
    evaluation = iterations * evaluation_seconds(game, run)
    if evaluation > MEASURING_SHARE * run.seconds:
        seconds, timing = run_exact(game, solver, iterations, log_points=2).seconds, "unmeasured rerun"
    else:
        seconds, timing = run.seconds - evaluation, "minus measuring"
    return race_row(game, solver, run, seconds, curve_points, equilibrium) | {"timing": timing}


def sampled_row(game: PreferenceGame, solver: Solver, config: SampledConfig, curve_points: int,
                equilibrium: torch.Tensor | None = None, thresholds: tuple[float, ...] = THRESHOLDS) -> dict:
    """Sampled training; its seconds are the loop's minus the exact evaluation of every iterate (timed
    separately), which the loop includes."""
    run = run_sampled(game, solver, config)
    evaluation = run.iterations * evaluation_seconds(game, run)
    total_queries = run.metrics[-1]["queries"]
    per_iteration = total_queries / run.iterations / game.num_contexts
    row = race_row(game, solver, run, max(run.seconds - evaluation, 0.0), curve_points, equilibrium,
                   per_iteration, thresholds)
    return row | {"loop_seconds": run.seconds, "evaluation_seconds": evaluation, "queries": total_queries,
                  "queries_per_context": total_queries / game.num_contexts}


def evaluation_seconds(game: PreferenceGame, run: ExactRun) -> float:
    """Median seconds of one exact evaluation of an iterate (what IterateLog adds to every sampled iteration)."""
    times = []
    for _ in range(TIMING_CALLS):
        start = time.perf_counter()
        iterate_metrics(game, run.policies, run.last_policies, 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def queries_per_round(game: PreferenceGame, solver: Solver, values: dict) -> tuple[int, int]:
    """Queries (all contexts) of the first round and of every later one, counted by running two (ONPO's grow)."""
    queries = [row["queries"] for row in run_sampled(game, solver, SampledConfig(iterations=2, **values)).metrics]
    return queries[0], queries[1] - queries[0]


def game_reference(game: PreferenceGame) -> dict:
    """The game's size, the gap at μ, π*_τ and, for τ > 0, the τ-gap of π*₀ (the LP's), where SPPO and DNO head."""
    equilibrium = solve_equilibrium(game)
    info = {"name": game.name, "contexts": game.num_contexts, "actions": game.num_actions, "tau": game.tau,
            "gap_at_mu": game.gap(game.mu).max().item(), "equilibrium_gap": equilibrium.gap.max().item(),
            "equilibrium": equilibrium.policy}
    if game.tau > 0:
        info["unregularised_equilibrium_gap"] = game.gap(solve_equilibrium(game.with_tau(0.0)).policy).max().item()
    return info


# ---- the race ----------------------------------------------------------------------------------------------------
def run_bench_tabular(config: TabularBenchConfig) -> int:
    """Run every (game, solver, mode[, seed]) of ``config`` and write its folder; 0 on success. Bad input
    raises BadInput before anything is written."""
    start, load_before = time.perf_counter(), os.getloadavg()
    with single_thread():
        plan = make_plan(config)
        references = {label: game_reference(game) for label, game in plan.games.items()}
        tasks = race_tasks(plan)
        runs, mode_seconds = [], {mode: 0.0 for mode in plan.modes}
        with tqdm(total=len(tasks), desc="bench tabular", unit="run", file=sys.stderr, leave=False,
                  disable=None if config.progress else True, dynamic_ncols=True) as bar:
            for task in tasks:
                bar.set_postfix_str(f"{task['mode']} {task['game']} {task['solver']}", refresh=False)
                began = time.perf_counter()
                runs.append(task | run_task(plan, task, config.curve_points,
                                            references[task["game"]]["equilibrium"]))
                mode_seconds[task["mode"]] += time.perf_counter() - began
                bar.update()
    report = {"command": command_line(config), "argv": sys.argv,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine_info(), "load_before": list(load_before), "config": asdict(config),
              "exact_iterations": plan.iterations, "large_game_iterations": plan.large_iterations,
              "query_budget": plan.budget, "seeds": list(plan.seeds),
              "thresholds": list(THRESHOLDS), "games": references, "skipped": plan.skipped,
              "sampled_settings": {name: {"options": asdict(s["options"]), **s["values"], "tuned": s["tuned"],
                                          "recommended_iterations": s["tuned_iterations"]}
                                   for name, s in plan.sampled.items()},
              "mode_seconds": mode_seconds, "runs": runs}
    report = jsonable(report)       # plain JSON values from here on: the markdown is made from what is stored
    with staged_output(Path(config.out)) as staging:
        for mode in plan.modes:
            plot_mode(staging / f"{mode}.png", report, mode)
        report |= {"load_after": list(os.getloadavg()), "seconds": time.perf_counter() - start}
        (staging / "results.json").write_text(compact_json(report) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(markdown(report), encoding="utf-8")
    return 0


def race_tasks(plan: Plan) -> list[dict]:
    """Every (mode, game, solver[, seed]) to run, with its iteration count. Sampled iteration counts come from
    one counted round per game and solver (≤ the tuned count); a budget below one round is a BadInput."""
    skipped = {(s["game"], s["solver"]) for s in plan.skipped}
    tasks = []
    for mode in plan.modes:
        for label, game in plan.games.items():
            for name in plan.solvers:
                if (label, name) in skipped:
                    continue
                if mode == "exact":
                    large = game.num_contexts * game.num_actions > LARGE_GAME
                    tasks.append({"mode": mode, "game": label, "solver": name, "seed": None,
                                  "iterations": plan.large_iterations if large else plan.iterations})
                    continue
                settings = plan.sampled[name]
                first, later = queries_per_round(game, REGISTRY[name](settings["options"]), settings["values"])
                budget = plan.budget * game.num_contexts
                iterations = 0 if budget < first else 1 + (budget - first) // later
                if settings["tuned_iterations"] and not plan.fill_budget:
                    iterations = min(iterations, settings["tuned_iterations"])
                if iterations < 1:
                    raise BadInput(f"bench tabular: query_budget {plan.budget} is below one round of {name} on "
                                   f"{label} ({first / game.num_contexts:g} queries per context)")
                tasks += [{"mode": mode, "game": label, "solver": name, "seed": seed, "iterations": iterations}
                          for seed in plan.seeds]
    return tasks


def run_task(plan: Plan, task: dict, curve_points: int, equilibrium: torch.Tensor) -> dict:
    game = plan.games[task["game"]]
    if task["mode"] == "exact":
        solver = REGISTRY[task["solver"]]()
        return exact_row(game, solver, task["iterations"], curve_points, equilibrium) | \
            {"options": solver.config}
    settings = plan.sampled[task["solver"]]
    config = SampledConfig(iterations=task["iterations"], seed=task["seed"], **settings["values"])
    validate_config(config)
    solver = REGISTRY[task["solver"]](settings["options"])
    return sampled_row(game, solver, config, curve_points, equilibrium) | {"options": solver.config,
                                                                         "sampled": config}


# ---- provenance --------------------------------------------------------------------------------------------------
def command_line(config: TabularBenchConfig) -> str:
    """The `nashpref bench tabular` command that reproduces ``config`` (options left at their defaults omitted)."""
    default = TabularBenchConfig()
    words = ["nashpref", "bench", "tabular"]
    for f in fields(config):
        value = getattr(config, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, (tuple, list)):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "torch_threads": torch.get_num_threads()}


def compact_json(value, depth: int = 0) -> str:
    """JSON with one key per line, but lists of plain values (curves, load averages) on a single line."""
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {compact_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
        return "[\n" + ",\n".join(inner + compact_json(v, depth + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, default=float, ensure_ascii=False)


