#!/usr/bin/env python
"""Tabular benchmarks: writes bench/tabular.md, bench/tabular.json and bench/*.png.

(a) exact equilibrium: ``solve_equilibrium`` against cvxpy + CLARABEL on the convex formulation (τ > 0), and the
    τ = 0 linear program against nashpy (linear program, Lemke-Howson, support and vertex enumeration) and a cvxpy
    LP; seconds and the exact duality gap each method reaches;
(b) the EGPO exact-tabular table (algorithms.md §6.4): the final gap of every registered solver on the 10 random
    N=10 games of ``games/egpo-random.toml``, at the iteration budgets of §6.4;
(c) batched throughput: one exact solver step on C=1024 contexts × N=64 actions against one bare ``torch.bmm``;
(d) sampled training: gap against the number of preference queries, every solver and iterative DPO, on three
    games.

Timings are medians over repeats taken side by side (round robin, in one process): the machine is shared and
noisy, so only numbers measured together are compared. Each part records the command, date and load it ran under;
running a subset of parts (``--parts``) keeps the other parts' results from the existing JSON.

    python scripts/bench_tabular.py            # everything (6–8 min on a busy 2-core machine)
    python scripts/bench_tabular.py --quick    # a small run into bench/quick/
"""

from __future__ import annotations

import os

# BLAS / OpenMP pools are sized when numpy and torch load: single-threaded unless the caller sets these. Tabular
# problems are small, and on a busy machine idle pool threads cost milliseconds per op to wake up.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("KINETO_LOG_LEVEL", "5")    # keep torch.profiler's start/stop chatter off stderr

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import queue  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nashpref.core.equilibrium import solve_equilibrium  # noqa: E402
from nashpref.core.exact import run_exact  # noqa: E402
from nashpref.core.game import PreferenceGame  # noqa: E402
from nashpref.core.gamefile import build_game, load_game  # noqa: E402
from nashpref.solvers import REGISTRY  # noqa: E402
from nashpref.solvers.hedge import hedge_step  # noqa: E402
from nashpref.benchmarks.tabular import compact_json, machine_info, sampled_row  # noqa: E402
from nashpref.benchmarks.tabular_report import fmt_gap, md_table, race_plot  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARTS = ("a", "b", "c", "d")
SCHEMA = 2          # bumped when a part's stored result changes shape; older stored parts are dropped

# algorithms.md §6.4: (τ, iterations, SGD lr) of the EGPO exact-tabular configs, and the numpy replication table
# (final gap, mean / max over 10 random games) with its column names.
EGPO_CONFIGS = [(0.1, 1000, 0.1), (0.01, 5000, 0.02), (0.001, 100_000, 2e-4)]
REPLICATION = {
    "Online IPO 1 (= OMD = our inpo)": {0.1: "~0", 0.01: "0.137 / 0.534", 0.001: "0.168 / 0.573"},
    "Online IPO 2 (= our online-ipo)": {0.1: "1.1e-5 / 4.1e-5", 0.01: "0.258 / 0.607", 0.001: "0.483 / 0.872"},
    "Nash-MD (IPO form)": {0.1: "3.1e-5 / 7.3e-5", 0.01: "0.150 / 0.560", 0.001: "0.168 / 0.570"},
    "Nash-MD-PG": {0.1: "3.5e-2 / 0.12", 0.01: "0.368 / 0.619", 0.001: "0.413 / 0.582"},
    "EGPO": {0.1: "~0", 0.01: "~0", 0.001: "1.9e-8 / 7.2e-8"},
}
SAMPLED_GAMES = ("weighted-rps", "egpo-random", "bt-mixture")
SAMPLED_THRESHOLDS = (0.1, 0.02)


# ---- small utilities -----------------------------------------------------------------------------------------
def side_by_side(contenders: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Run every contender once per round, ``repeats`` rounds, rotating who goes first; (seconds, last results)."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Any] = {}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            results[name] = contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times, results


def median(values: list[float]) -> float:
    return statistics.median(values)


def random_game(n: int, tau: float, seed: int = 0, contexts: int = 1) -> PreferenceGame:
    """The EGPO random game (games/egpo-random.toml's generator): P[i,j] ~ U(0,1) below the diagonal, μ =
    softmax(N(0,1) logits); ``contexts`` games with consecutive seeds."""
    data = {"name": f"random-n{n}", "tau": tau,
            "context": [{"repeat": contexts, "preference": {"kind": "random", "n": n, "seed": seed},
                         "reference": {"random-logits": {"seed": 1000 + seed, "scale": 1.0}}}]}
    return build_game(data, f"random game N={n}")


def run_with_timeout(target: Callable, args: tuple, timeout: float) -> tuple[Any, float | None]:
    """``target(*args)`` in a forked process; (result, seconds), or (None, None) when it gives no result within
    ``timeout`` seconds (it is then terminated). An exception in the child is raised here."""
    context = multiprocessing.get_context("fork")
    channel = context.Queue()
    process = context.Process(target=_timed_call, args=(channel, target, args))
    process.start()
    try:
        result, seconds, error = channel.get(timeout=timeout)   # read before join: a big result fills the pipe
    except queue.Empty:
        process.terminate()
        process.join()
        return None, None
    process.join()
    if error is not None:
        raise RuntimeError(f"{getattr(target, '__name__', target)}{args[:1]} failed in the child: {error}")
    return result, seconds


def _timed_call(channel, target, args) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        try:
            channel.put((target(*args), time.perf_counter() - start, None))
        except Exception as err:  # reported by the parent, which cannot see the child's traceback otherwise
            channel.put((None, None, repr(err)))


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def machine() -> dict:
    info = machine_info() | {"scipy": scipy.__version__}
    for module in ("cvxpy", "clarabel", "nashpy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:  # an optional benchmark dependency that is missing is reported, not fatal
            info[module] = "not installed"
    return info


def stamp(args) -> dict:
    return {"command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_before": list(os.getloadavg()), "quick": args.quick, "torch_threads": torch.get_num_threads(),
            "schema": SCHEMA}


# ---- (a) exact equilibrium --------------------------------------------------------------------------------------
def cvxpy_regularised(game: PreferenceGame) -> dict:
    """min over the simplex of τ log Σ μ exp(Pπ/τ) + τ KL(π‖μ) (= (gap + 1)/2) with CLARABEL."""
    import cvxpy as cp
    P, mu, tau = game.P[0].numpy(), game.mu[0].numpy(), game.tau
    pi = cp.Variable(game.num_actions, nonneg=True)
    objective = tau * cp.log_sum_exp(np.log(mu) + P @ pi / tau) + tau * cp.sum(cp.rel_entr(pi, mu))
    problem = cp.Problem(cp.Minimize(objective), [cp.sum(pi) == 1])
    problem.solve(solver=cp.CLARABEL)
    return {"policy": simplex(pi.value), "solver_seconds": problem.solver_stats.solve_time,
            "status": problem.status, "iterations": problem.solver_stats.num_iters}


def cvxpy_linear_program(game: PreferenceGame) -> dict:
    import cvxpy as cp
    P = game.P[0].numpy()
    pi, v = cp.Variable(game.num_actions, nonneg=True), cp.Variable()
    problem = cp.Problem(cp.Minimize(v), [P @ pi <= v, cp.sum(pi) == 1])
    problem.solve(solver=cp.CLARABEL)
    return {"policy": simplex(pi.value), "solver_seconds": problem.solver_stats.solve_time,
            "status": problem.status, "iterations": problem.solver_stats.num_iters}


def simplex(x) -> np.ndarray:
    """An interior-point solution clipped onto the simplex (its entries may be −1e-12 or sum to 1 ± 1e-9)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, None)
    return x / x.sum()


def nashpy_equilibrium(method: str, A: np.ndarray) -> np.ndarray:
    """Row strategy of the zero-sum game (A, −A) by a nashpy method (enumerations: the first equilibrium of the
    full enumeration, which is unique for these generic games; the count is checked by the caller)."""
    import nashpy
    game = nashpy.Game(A, -A)
    if method == "linear_program":
        return np.asarray(game.linear_program()[0])
    if method == "lemke_howson":
        return np.asarray(game.lemke_howson(initial_dropped_label=0)[0])
    equilibria = list(getattr(game, method)())
    return np.asarray([eq[0] for eq in equilibria])


def exact_gap(game: PreferenceGame, policy, tau: float | None = None) -> float:
    return game.gap(torch.as_tensor(np.asarray(policy), dtype=torch.float64).reshape(1, -1), tau=tau).item()


def part_a(args) -> dict:
    sizes = [10, 100] if args.quick else [10, 100, 1000]
    taus = [0.1, 0.01, 0.001]
    cvxpy_regularised(random_game(10, 0.1))          # load cvxpy and CLARABEL before anything is timed
    solve_equilibrium(random_game(10, 0.1))
    regularised = []
    for n in sizes:
        for tau in taus:
            game = random_game(n, tau)
            repeats = args.repeats or (3 if n >= 1000 or args.quick else 5)
            solver_seconds = []

            def cvxpy_run(game=game, solver_seconds=solver_seconds):
                result = cvxpy_regularised(game)
                solver_seconds.append(result["solver_seconds"])
                return result

            times, results = side_by_side({"ours": lambda: solve_equilibrium(game), "cvxpy": cvxpy_run}, repeats)
            ours, cvx = results["ours"], results["cvxpy"]
            row = {"n": n, "tau": tau, "repeats": repeats,
                   "ours_seconds": median(times["ours"]), "ours_gap": ours.gap.item(),
                   "ours_steps": ours.iterations,
                   "cvxpy_seconds": median(times["cvxpy"]), "cvxpy_solver_seconds": median(solver_seconds),
                   "cvxpy_gap": exact_gap(game, cvx["policy"]), "cvxpy_status": cvx["status"],
                   "cvxpy_iterations": cvx["iterations"],
                   "l1_ours_vs_cvxpy": float(np.abs(ours.policy[0].numpy() - cvx["policy"]).sum())}
            row["speedup"] = row["cvxpy_seconds"] / row["ours_seconds"]
            regularised.append(row)
            print(f"(a) N={n} τ={tau}: ours {row['ours_seconds']:.4f}s gap {row['ours_gap']:.1e} | cvxpy "
                  f"{row['cvxpy_seconds']:.3f}s gap {row['cvxpy_gap']:.1e} | ×{row['speedup']:.1f}", flush=True)

    unregularised = []
    lemke_howson_ok = True
    for n in sizes:
        game = random_game(n, 0.0)
        A = game.P[0].numpy() - 0.5
        repeats = args.repeats or (1 if n >= 1000 else 3)      # N=1000: 10–40 s per solve
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times, results = side_by_side({"ours (HiGHS LP)": lambda: solve_equilibrium(game).policy[0].numpy(),
                                           "nashpy linear_program": lambda: nashpy_equilibrium("linear_program", A),
                                           "cvxpy LP (CLARABEL)": lambda: cvxpy_linear_program(game)["policy"]},
                                          repeats)
        for method, policy in results.items():
            unregularised.append(lp_row(game, n, method, median(times[method]), repeats, policy))
        if lemke_howson_ok:
            policy, seconds = run_with_timeout(nashpy_equilibrium, ("lemke_howson", A), args.nashpy_timeout)
            unregularised.append(lp_row(game, n, "nashpy lemke_howson", seconds, 1, policy, args.nashpy_timeout))
            lemke_howson_ok = policy is not None   # it cycles without end beyond N≈15: skip larger N
        else:
            unregularised.append({"n": n, "method": "nashpy lemke_howson", "seconds": None, "repeats": 0,
                                  "timeout": None, "skipped": "not attempted: no result at a smaller N"})
        print(f"(a) τ=0 N={n} done", flush=True)
    n = args.enumeration_n
    game = random_game(n, 0.0)
    for method in ("support_enumeration", "vertex_enumeration"):
        policies, seconds = run_with_timeout(nashpy_equilibrium, (method, game.P[0].numpy() - 0.5),
                                             args.enumeration_timeout)
        row = lp_row(game, n, f"nashpy {method}", seconds, 1, None if policies is None else policies[0],
                     args.enumeration_timeout)
        row["equilibria_found"] = None if policies is None else len(policies)
        unregularised.append(row)
        print(f"(a) τ=0 N={n} {method} done", flush=True)
    return {"regularised": regularised, "unregularised": unregularised}


def lp_row(game, n, method, seconds, repeats, policy, timeout=None) -> dict:
    row = {"n": n, "method": method, "seconds": seconds, "repeats": repeats, "timeout": timeout}
    if policy is not None:
        policy = simplex(policy)
        value = float((policy @ game.P[0].numpy()).min())        # min_y P(π ≻ y): what π guarantees
        row |= {"gap": exact_gap(game, policy, tau=0.0), "value_minus_half": value - 0.5}
    return row


def report_a(part: dict) -> str:
    rows = []
    for r in part["regularised"]:
        rows.append([r["n"], r["tau"], fmt_s(r["ours_seconds"]), fmt_gap(r["ours_gap"]),
                     fmt_s(r["cvxpy_seconds"]), fmt_s(r["cvxpy_solver_seconds"]), fmt_gap(r["cvxpy_gap"]),
                     f"{r['speedup']:.3g}×", f"{r['cvxpy_solver_seconds'] / r['ours_seconds']:.2g}×",
                     f"{r['l1_ours_vs_cvxpy']:.1e}", r["ours_steps"], r["repeats"]])
    text = [md_table(["N", "τ", "ours", "ours gap", "cvxpy (wall)", "CLARABEL solve", "cvxpy gap",
                      "speed-up (wall)", "speed-up (solve only)", "‖π_ours − π_cvxpy‖₁", "ours EG+Newton steps",
                      "repeats"], rows)]
    big = [r for r in part["regularised"] if r["n"] == max(x["n"] for x in part["regularised"])]
    met = [r for r in big if r["speedup"] >= 10 and r["ours_gap"] <= 1e-12]
    speedups = ", ".join(f"τ={r['tau']:g}: {r['speedup']:.1f}×" for r in big)
    text.append(f"\nTarget at N={big[0]['n']}: ≥10× faster than cvxpy (wall) with our gap ≤ 1e-12 — met for "
                f"{len(met)} of {len(big)} τ values; speed-ups {speedups}; "
                f"our largest gap {max(r['ours_gap'] for r in big):.1e}, cvxpy's "
                f"{max(r['cvxpy_gap'] for r in big):.1e}.")
    rows = []
    for r in part["unregularised"]:
        if r["seconds"] is None:
            status = r.get("skipped") or f"no result within {r['timeout']:g} s"
            rows.append([r["n"], r["method"], status, "–", "–", r["repeats"], ""])
            continue
        found = r.get("equilibria_found")
        rows.append([r["n"], r["method"], fmt_s(r["seconds"]), fmt_gap(r.get("gap")),
                     fmt_gap(r.get("value_minus_half")), r["repeats"], "" if found is None else found])
    text.append("\n**τ = 0** (value = min_y P(π ≻ y), exactly ½ at an equilibrium; Gap₀ = 2 max_y P(y ≻ π) − 1):\n")
    text.append(md_table(["N", "method", "seconds (median)", "Gap₀", "value − ½", "repeats", "equilibria found"],
                         rows))
    text.append("\nnashpy's `linear_program` calls scipy's `linprog` (HiGHS) like ours, so only CLARABEL (interior "
                "point), Lemke-Howson and the enumerations are independent solvers. Lemke-Howson (nashpy 0.0.43), "
                "tried separately on the seed-0 game, returned in milliseconds at N = 10, 12 and 15 but gave no result "
                "within 60 s at N = 20, 30, 50 and 100.")
    return "\n".join(text)


# ---- (b) the EGPO table ------------------------------------------------------------------------------------------
def egpo_variants(game: PreferenceGame, tau: float, budget: int, lr: float) -> list[tuple[str, str, dict, str]]:
    """(solver, setting, config overrides, the step used): every solver with its defaults, then the §6.4 step
    where it maps onto the solver's parameter."""
    eta = 4.0 * lr / (game.num_actions * tau)       # one SGD step on the online-IPO-1 loss = one OMD step (§6.2)
    hedge = hedge_step(game, budget)
    variants = [(name, "defaults", {}, "") for name in REGISTRY]
    variants += [("egpo", "§6.4: η = 4·lr/(N·τ)", {"eta": eta}, f"η={eta:.3g}"),
                 ("inpo", "§6.4: η = 4·lr/(N·τ)", {"eta": eta}, f"η={eta:.3g}"),
                 ("nash-md", "§6.4: constant η = 4·lr/(N·τ)", {"eta": eta}, f"η={eta:.3g}"),
                 ("online-ipo", "§6.4: lr", {"lr": lr}, f"lr={lr:g}"),
                 ("sppo", "Hedge step √(8L/T) for the budget T", {"eta": hedge}, f"η={hedge:.3g}"),
                 ("dno", "Hedge step √(8L/T) for the budget T", {"eta": 1.0 / hedge}, f"η=1/{hedge:.3g}")]
    return [v for v in variants if v[0] in REGISTRY]


def part_b(args) -> dict:
    configs = EGPO_CONFIGS[:2] if args.quick else EGPO_CONFIGS
    rows, curves = [], {}
    for tau, budget, lr in configs:
        game = load_game("egpo-random", tau=tau)
        for name, setting, overrides, step in egpo_variants(game, tau, budget, lr):
            cls = REGISTRY[name]
            solver = cls(dataclasses.replace(cls.Config(), **overrides))
            iterations = budget if name != "iterative-dpo" else min(budget, args.itdpo_rounds)
            run = run_exact(game, solver, iterations, log_points=100)
            gap = game.gap(run.policies)
            half = [m for m in run.metrics if m["iteration"] <= iterations // 2]
            rows.append({"tau": tau, "budget": budget, "lr": lr, "solver": name, "setting": setting, "step": step,
                         "iterate": solver.iterate, "iterations": iterations, "seconds": run.seconds,
                         "gap_mean": gap.mean().item(), "gap_max": gap.max().item(),
                         "gap0_max": game.gap(run.policies, tau=0.0).max().item(),
                         "gap_max_at_half": half[-1]["gap"] if half else None})
            curves[f"{tau}|{name}|{setting}"] = [(m["iteration"], m["gap"]) for m in run.metrics]
            print(f"(b) τ={tau} {name} [{setting}]: gap mean {gap.mean():.2e} max {gap.max():.2e} "
                  f"({run.seconds:.1f}s)", flush=True)
    plot_b(Path(args.out) / "egpo_table.png", configs, rows, curves)
    return {"rows": rows}


def plot_b(path: Path, configs, rows, curves) -> None:
    figure = Figure(figsize=(5 * len(configs), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    for k, (tau, budget, lr) in enumerate(configs):
        axis = figure.add_subplot(1, len(configs), k + 1)
        for r in (r for r in rows if r["tau"] == tau):
            points = curves[f"{tau}|{r['solver']}|{r['setting']}"]
            style = "-" if r["setting"] == "defaults" else "--"
            label = r["solver"] + ("" if r["setting"] == "defaults" else " (§6.4 step)")
            axis.loglog([p[0] for p in points], [max(p[1], 1e-16) for p in points], style, label=label, lw=1.2)
        axis.set_title(f"τ = {tau:g} (10 random N=10 games)")
        axis.set_xlabel("iteration")
        axis.set_ylabel("max duality gap over the 10 games")
        axis.grid(True, which="major", alpha=0.3)
        if k == 0:
            axis.legend(fontsize=7)
    figure.savefig(path, dpi=110)


def report_b(part: dict) -> str:
    taus = sorted({r["tau"] for r in part["rows"]}, reverse=True)
    keys = list(dict.fromkeys((r["solver"], r["setting"]) for r in part["rows"]))
    by_key = {(r["solver"], r["setting"], r["tau"]): r for r in part["rows"]}
    budgets = {r["tau"]: (r["budget"], r["lr"]) for r in part["rows"]}
    headers = ["solver", "setting", "iterate"] + [f"τ={t:g} ({budgets[t][0]} it., §6.4 lr {budgets[t][1]:g})"
                                                  for t in taus]
    rows = []
    for solver, setting in keys:
        cells = []
        for t in taus:
            r = by_key.get((solver, setting, t))
            if r is None:
                cells.append("–")
                continue
            cell = f"{fmt_gap(r['gap_mean'])} / {fmt_gap(r['gap_max'])}"
            if r["iterations"] != r["budget"]:
                cell += f" ({r['iterations']} rounds)"
            if r["step"]:
                cell += f" ({r['step']})"
            cells.append(cell)
        iterate = next(r["iterate"] for r in part["rows"] if r["solver"] == solver)
        rows.append([solver, setting, iterate] + cells)
    text = [md_table(headers, rows)]
    text.append("\nThe numpy replication of the EGPO code (algorithms.md §6.4; mean / max over its own 10 games):\n")
    text.append(md_table(["method"] + [f"τ={t:g}" for t in taus],
                         [[m] + [REPLICATION[m].get(t, "–") for t in taus] for m in REPLICATION]))
    reached = []
    for t in taus:
        names = sorted({f"{r['solver']} ({'default' if r['setting'] == 'defaults' else '§6.4 step'})"
                        for r in part["rows"] if r["tau"] == t and r["gap_max"] <= 1e-6})
        reached.append(f"τ={t:g}: {', '.join(names) if names else 'none'}")
    text.append("\nReached max gap ≤ 1e-6 within the budget — " + "; ".join(reached) + ".")
    averaged = [key for key in keys if not REGISTRY[key[0]].needs_tau]
    if averaged:
        text.append("\nSPPO and DNO solve the unregularised game (they ignore τ), so their τ-gap cannot reach 0. Their "
                    "average iterate's unregularised gap Gap₀ (max over the 10 games):\n")
        text.append(md_table(["solver", "setting"] + [f"τ={t:g} budget" for t in taus],
                             [[solver, setting] + [fmt_gap(by_key[(solver, setting, t)]["gap0_max"])
                                                   if (solver, setting, t) in by_key else "–" for t in taus]
                              for solver, setting in averaged]))
    return "\n".join(text)


# ---- (c) batched throughput -------------------------------------------------------------------------------------
def part_c(args) -> dict:
    contexts, n, tau = 1024, 64, 0.1
    game = random_game(n, tau, contexts=contexts)
    probe = PreferenceGame.create(game.P[:64], game.mu[:64], tau)
    repeats = args.repeats or (10 if args.quick else 100)
    fast, slow, extrapolated = {}, {}, {}
    for name, cls in REGISTRY.items():
        solver = cls()
        if too_slow(solver, game, args.slow_step):
            extrapolated[name] = (solver, solver.init(probe))
            continue
        log_pi = solver.init(game)
        for t in range(3):                              # move off μ so every step does its general work
            start = time.perf_counter()
            log_pi = solver.step(game, log_pi, t)
            seconds = time.perf_counter() - start
        (slow if seconds > 0.5 else fast)[name] = (solver, log_pi)
    rows = []
    bmm = None
    # fast steps: many rounds side by side with the bare bmm; slow ones (> 0.5 s): 3 rounds each
    for group, size_game, group_repeats in ((fast, game, repeats), (slow, game, 3), (extrapolated, probe, 3)):
        if not group:
            continue
        x = size_game.mu.unsqueeze(-1).contiguous()
        contenders = {"bmm": lambda g=size_game, x=x: torch.bmm(g.P, x)}
        if group is fast:       # a control: what two back-to-back bmm cost here (EGPO's floor)
            contenders[CONTROL] = lambda g=size_game, x=x: (torch.bmm(g.P, x), torch.bmm(g.P, x))
        for name, (solver, log_pi) in group.items():
            contenders[name] = (lambda s=solver, g=size_game, lp=log_pi: s.step(g, lp, 10))
        if group is fast:
            for fn in contenders.values():
                fn()
        times, _ = side_by_side(contenders, group_repeats)
        group_bmm = median(times["bmm"])
        bmm = group_bmm if group is fast else bmm
        if group is fast:
            rows.append({"solver": CONTROL, "contexts": contexts, "seconds": median(times[CONTROL]),
                         "bmm_seconds": group_bmm, "ratio": median(times[CONTROL]) / group_bmm,
                         "ratio_of_minima": min(times[CONTROL]) / min(times["bmm"]),
                         "repeats": group_repeats, "bmm_per_step": 2, "profile": []})
        for name, (solver, log_pi) in group.items():
            step = (lambda s=solver, g=size_game, lp=log_pi: s.step(g, lp, 10))
            rows.append({"solver": name, "contexts": size_game.num_contexts, "seconds": median(times[name]),
                         "bmm_seconds": group_bmm, "ratio": median(times[name]) / group_bmm,
                         "ratio_of_minima": min(times[name]) / min(times["bmm"]),
                         "repeats": group_repeats, "bmm_per_step": count_bmm(step),
                         "profile": top_ops(step, calls=5 if group is fast else 1)})
    for r in rows:
        print(f"(c) {r['solver']}: {r['seconds'] * 1e3:.2f} ms = {r['ratio']:.2f}× bmm "
              f"(C={r['contexts']})", flush=True)
    return {"contexts": contexts, "actions": n, "tau": tau, "repeats": repeats, "bmm_seconds": bmm, "rows": rows,
            "slow_step": args.slow_step}


CONTROL = "(control: two bare bmm)"


def too_slow(solver, game: PreferenceGame, limit: float) -> bool:
    """One step at full size does not finish within ``limit`` seconds (tried in a forked process, so a step
    that takes minutes costs only the limit)."""
    _, seconds = run_with_timeout(_one_step, (solver, game), limit)
    return seconds is None


def _one_step(solver, game: PreferenceGame) -> None:
    solver.step(game, solver.init(game), 0)


def count_bmm(fn: Callable[[], Any]) -> int:
    """How many torch.bmm calls (preference evaluations P·π) one call of ``fn`` makes."""
    original, calls = torch.bmm, [0]

    def counting(*a, **k):
        calls[0] += 1
        return original(*a, **k)

    torch.bmm = counting
    try:
        fn()
    finally:
        torch.bmm = original
    return calls[0]


def top_ops(fn: Callable[[], Any], k: int = 4, calls: int = 5) -> list[list]:
    """The ``k`` torch ops with the most self CPU time per call of ``fn`` (averaged over ``calls`` calls):
    [name, ms per call of fn, op calls per call of fn]."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:k]
    return [[e.key, e.self_cpu_time_total / 1e3 / calls, e.count // calls] for e in events]


def report_c(part: dict) -> str:
    rows = []
    for r in part["rows"]:
        where = "" if r["contexts"] == part["contexts"] else \
            f" (one C={part['contexts']} step ran past {part['slow_step']:g} s; measured at C={r['contexts']})"
        verdict = "–" if r["solver"] == CONTROL else "✓" if r["ratio"] <= 2 else f"✗ ({r['ratio'] / 2:.3g}× over)"
        ops = ", ".join(f"{name} {ms:.2f} ms ×{count}" for name, ms, count in r["profile"])
        per_eval = f"{r['ratio'] / r['bmm_per_step']:.2f}×" if r["bmm_per_step"] else "–"
        rows.append([r["solver"] + where, fmt_s(r["seconds"]), fmt_s(r["bmm_seconds"]), f"{r['ratio']:.2f}×",
                     verdict, f"{r['ratio_of_minima']:.2f}×", r["bmm_per_step"], per_eval, r["repeats"], ops])
    head = (f"C={part['contexts']} × N={part['actions']}, τ={part['tau']}, float64, exact dynamics (`solver.step`) "
            f"from the 4th iterate on. The bare bmm is {part['contexts']}×{part['actions']}×{part['actions']} @ "
            f"{part['contexts']}×{part['actions']}×1, timed in the same round robin as the steps of its row "
            "(medians, after a warm-up; 'min ÷ min' compares the fastest rounds, which interference from other "
            "processes inflates least); steps slower than 0.5 s get 3 rounds.\n\n")
    table = md_table(["solver", "per step", "bmm", "÷ bmm", "≤ 2×?", "min ÷ min", "bmm per step",
                      "÷ (bmm × bmm per step)", "repeats", "top ops by self CPU time per step (torch.profiler)"], rows)
    over = [f"{r['solver']} {r['ratio']:.3g}× " + (f"({r['bmm_per_step']} bmm per step, so its floor is "
                                                     f"{r['bmm_per_step']}×)" if r["bmm_per_step"] else
                                                     "(no bmm: its step is not one matrix–vector product; see the "
                                                     "profile)") for r in part["rows"] if r["ratio"] > 2
            and r["solver"] != CONTROL]
    verdict = ("\n\nOver the 2× target: " + "; ".join(over) + ".") if over else "\n\nEvery solver is within 2×."
    control = next((r for r in part["rows"] if r["solver"] == CONTROL), None)
    if control is not None:
        verdict += (f" In the same rounds, two bare back-to-back bmm took {control['ratio']:.3g}× one bmm: the op is "
                    "memory-bound (P is 32 MB) and shares bandwidth with whatever else runs on the machine.")
    return head + table + verdict


# ---- (d) sampled mode -------------------------------------------------------------------------------------------
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


# ---- driver ----------------------------------------------------------------------------------------------------
RUNNERS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}
REPORTERS = {"a": report_a, "b": report_b, "c": report_c, "d": report_d}
TITLES = {"a": "(a) Exact equilibrium: ours vs cvxpy (CLARABEL) and nashpy",
          "b": "(b) The EGPO exact-tabular table (algorithms.md §6.4)",
          "c": "(c) Batched throughput: one exact step vs one torch.bmm",
          "d": "(d) Sampled mode: gap vs preference queries"}


def write_report(out: Path, results: dict) -> None:
    lines = ["# Tabular benchmarks", "",
             "Written by `scripts/bench_tabular.py` (each part below names the command, date and machine load it "
             "ran under). Timings are medians over repeats taken side by side in one process; the machine is "
             "shared, so compare numbers only within a table.", ""]
    meta = results.get("machine", {})
    lines += ["Machine: " + ", ".join(f"{k} {v}" for k, v in meta.items()), ""]
    for part in PARTS:
        if part not in results:
            continue
        info = results[part]
        lines += [f"## {TITLES[part]}", "",
                  f"`{info['stamp']['command']}` — {info['stamp']['date']}, load average "
                  f"{info['stamp']['load_before'][0]:.1f} before / {info['stamp']['load_after'][0]:.1f} after, "
                  f"{info['stamp']['seconds']:.0f} s, {info['stamp']['torch_threads']} torch thread(s).", "",
                  REPORTERS[part](info["result"]), ""]
    (out / "tabular.md").write_text("\n".join(lines))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and budgets (a smoke run, ~1 min)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    parser.add_argument("--out", default=None, help="output folder (default: bench, or bench/quick with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (BLAS: OMP_NUM_THREADS)")
    parser.add_argument("--repeats", type=int, default=None, help="override every part's repeat count")
    parser.add_argument("--enumeration-n", type=int, default=8,
                        help="N for nashpy support/vertex enumeration (at N=10 they took 0.5–3 min each here)")
    parser.add_argument("--enumeration-timeout", type=float, default=400.0, help="seconds per enumeration")
    parser.add_argument("--nashpy-timeout", type=float, default=30.0, help="seconds for one Lemke-Howson run")
    parser.add_argument("--itdpo-rounds", type=int, default=200,
                        help="(b) rounds of iterative DPO's exact dynamics (a BT fit per round; its default)")
    parser.add_argument("--slow-step", type=float, default=20.0,
                        help="(c) a solver whose first step at C=1024 takes longer is measured at C=64")
    parser.add_argument("--sampled-iterations", type=int, default=1000, help="(d) iterations per run")
    parser.add_argument("--sampled-seeds", type=int, default=1, help="(d) seeds per solver and game")
    parser.add_argument("--samples", type=int, default=8, help="(d) K, samples per context per iteration")
    parser.add_argument("--labels", choices=("exact", "bernoulli"), default="exact", help="(d) preference labels")
    parser.add_argument("--sampled-lr", type=float, default=0.01, help="(d) Adam learning rate")
    args = parser.parse_args(argv)
    args.out = args.out or ("bench/quick" if args.quick else "bench")
    if args.quick:
        args.nashpy_timeout, args.slow_step = min(args.nashpy_timeout, 5.0), min(args.slow_step, 5.0)
        args.enumeration_n = min(args.enumeration_n, 6)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tabular.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results = {key: value for key, value in results.items()
               if key not in PARTS or value.get("stamp", {}).get("schema") == SCHEMA}
    results["machine"] = machine()
    for part in PARTS:
        if part not in args.parts:
            continue
        info = stamp(args)
        start = time.perf_counter()
        result = RUNNERS[part](args)
        info |= {"seconds": time.perf_counter() - start, "load_after": list(os.getloadavg())}
        results[part] = {"stamp": info, "result": result}
        path.write_text(compact_json(results) + "\n")
        write_report(out, results)
    print(f"wrote {out / 'tabular.md'} and {path}")


if __name__ == "__main__":
    main()
