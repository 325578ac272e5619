"""Part (c): batched throughput, one exact solver step on C = 1024 contexts × N = 64 actions against one bare
``torch.bmm``."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from nashpref.benchmarks.tabular.common import fmt_s, median, random_game, run_with_timeout, side_by_side
from nashpref.benchmarks.tabular.report import md_table
from nashpref.core.game import PreferenceGame
from nashpref.solvers import REGISTRY


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
