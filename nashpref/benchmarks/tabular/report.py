"""The report of ``nashpref bench tabular``: per-mode summaries, winners, the comparison with iterative DPO, the
markdown and the gap plots (also used by ``scripts/bench_tabular.py``)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nashpref.core.exact import log_schedule
from nashpref.solvers import REGISTRY

THRESHOLDS = (1e-2, 1e-6)
BASELINE = "iterative-dpo"
LARGE_GAME = 1000           # (context, action) pairs above which a game counts as large in exact mode
FLOOR = 1e-16               # gaps at or below this (rounding, or exactly 0) are drawn and compared here
PRECISION = 1e-12           # a final gap below this is called converged to machine precision
MARKERS = "osD^vPX*<>"
PLOT_POINTS = 150           # log-spaced points per line drawn (curves may be stored in full)

# ---- summaries ---------------------------------------------------------------------------------------------------
def summarise(report: dict, mode: str) -> dict[str, dict[str, dict]]:
    """game → solver → medians over seeds: final gaps, seconds, and per threshold the median iteration / queries
    of the seeds that reached it (with how many did)."""
    table: dict[str, dict[str, dict]] = {}
    for run in report["runs"]:
        if run["mode"] == mode:
            table.setdefault(run["game"], {}).setdefault(run["solver"], []).append(run)
    summary = {}
    for game, by_solver in table.items():
        summary[game] = {}
        for name, runs in by_solver.items():
            entry = {key: statistics.median(r[key] for r in runs)
                     for key in ("final_gap", "final_gap_unregularized", "seconds", "iterations")}
            entry |= {"iterate": runs[0]["iterate"], "seeds": len(runs),
                      "queries_per_context": runs[0].get("queries_per_context"),
                      "per_iteration": runs[0]["queries_per_context"] / runs[0]["iterations"]
                      if "queries_per_context" in runs[0] else None}
            for key in ("reach", "reach_unregularized"):
                entry[key] = {}
                for threshold in runs[0][key]:
                    hits = [r[key][threshold] for r in runs if r[key][threshold] is not None]
                    entry[key][threshold] = None if not hits else {
                        "reached": len(hits), **{x: statistics.median(h[x] for h in hits) for x in hits[0]}}
            summary[game][name] = entry
    return summary


def winner(entries: dict[str, dict], x: str) -> tuple[list[str], str]:
    """The solvers fastest (in ``x``: iteration or queries) to reach and hold the smallest threshold anyone
    reached in every seed; if none did, the lowest final gap."""
    for threshold in sorted(THRESHOLDS):
        key = f"{threshold:g}"
        done = {n: e["reach"][key][x] for n, e in entries.items()
                if e["reach"][key] is not None and e["reach"][key]["reached"] == e["seeds"]}
        if done:
            best = min(done.values())
            unit = ("iteration" if best == 1 else "iterations") if x == "iteration" else "queries per context"
            return sorted(n for n, v in done.items() if v == best), f"gap ≤ {key} after {best:,.0f} {unit}"
    best = min(max(e["final_gap"], PRECISION) for e in entries.values())
    names = [n for n, e in entries.items() if max(e["final_gap"], PRECISION) == best]
    return names, f"no threshold reached; lowest final gap {fmt_gap(best)}"


def versus_baseline(entries: dict[str, dict]) -> str:
    """Which solvers end with a lower gap than iterative DPO, and by what factor."""
    if BASELINE not in entries:
        return "iterative DPO not run"
    base = entries[BASELINE]["final_gap"]
    # gaps below PRECISION (0, -1e-16, 4e-16: rounding) all count as equal
    lower = {n: e["final_gap"] for n, e in entries.items()
             if n != BASELINE and max(e["final_gap"], PRECISION) < max(base, PRECISION)}
    better = sorted(lower.items(), key=lambda item: item[1])
    worse = [n for n in entries if n != BASELINE and n not in lower]
    text = f"iterative DPO ends at gap {fmt_gap(base)}; "
    if better:
        text += "lower: " + ", ".join(f"{n} {fmt_gap(g)} ({factor(base, g)})" for n, g in better)
    else:
        text += "no solver ends lower"
    return text + (f"; not lower: {', '.join(worse)}" if worse else "")


def factor(base: float, gap: float) -> str:
    if gap <= PRECISION:
        return "≈ 0: machine precision"
    return f"{base / gap:.3g}× lower"


# ---- markdown ----------------------------------------------------------------------------------------------------
def fmt_gap(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.1e}" if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.3g}"


def fmt_seconds(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def reach_cell(hit: dict | None, seeds: int, sampled: bool) -> str:
    if hit is None:
        return "not reached"
    text = f"{hit['queries']:,.0f} q ({hit['iteration']:,.0f} it.)" if sampled else f"{hit['iteration']:,.0f}"
    return text + (f" ({hit['reached']}/{seeds} seeds)" if hit["reached"] < seeds else "")


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = ["# Solver race on the shipped tabular games: Nash solvers vs iterative DPO", "",
             "```", report["command"], "```", "",
             f"Written by the command above on {report['date']} — {machine['cpu']}, {machine['cores']} cores, "
             f"Python {machine['python']}, torch {machine['torch']}, numpy {machine['numpy']}, "
             f"{machine['torch_threads']} torch thread; load average {report['load_before'][0]:.1f} before / "
             f"{report['load_after'][0]:.1f} after; {report['seconds']:.0f} s in all ("
             + ", ".join(f"{m} {s:.0f} s" for m, s in report["mode_seconds"].items()) + "). "
             "Full curves and settings: [results.json](results.json).", "",
             "*Gap* is the exact duality gap at the game's τ (worst context) of the iterate each solver's guarantee "
             "is about: the last iterate, or the average for SPPO and DNO, which solve the unregularised game and "
             "so head for π*₀, whose τ-gap is listed per game; their Gap₀ (unregularised gap) is also given. A "
             "threshold is *reached* at the first iteration from which the gap stays at or below it to the end of "
             "the run. Seconds are the solver's own, without imports or the measuring of iterates (exact mode: a "
             "second, unmeasured run of the same deterministic dynamics where measuring is ≥ 5% of the time, "
             "else the run's time minus the measuring, timed apart; sampled mode: the loop's time minus the exact "
             "evaluation of every iterate, timed apart).", "",
             "## Games", ""]
    lines.append(md_table(["game", "contexts × actions", "τ", "gap at μ", "τ-gap of π*₀ (SPPO/DNO's target)"],
                          [[g, f"{r['contexts']} × {r['actions']}", f"{r['tau']:g}", fmt_gap(r["gap_at_mu"]),
                            fmt_gap(r.get("unregularised_equilibrium_gap"))] for g, r in report["games"].items()]))
    at_start = [g for g, r in report["games"].items() if r["gap_at_mu"] <= PRECISION]
    if at_start:
        lines.append(f"\n{', '.join(at_start)} start at their equilibrium (π*_τ = μ): there the race shows which "
                     "solvers stay at it.")
    for skip in report["skipped"]:
        lines.append(f"\nSkipped {skip['solver']} on {skip['game']}: {skip['reason']}.")
    for mode in ("exact", "sampled"):
        if any(r["mode"] == mode for r in report["runs"]):
            lines += ["", mode_section(report, mode)]
    return "\n".join(lines) + "\n"


def mode_section(report: dict, mode: str) -> str:
    sampled = mode == "sampled"
    summary = summarise(report, mode)
    if sampled:
        capped = not report["config"].get("fill_budget", True) and report["config"]["recommended"]
        head = [f"## Sampled mode: {'at most ' if capped else ''}{report['query_budget']:,} preference queries per "
                "context for every solver",
                "", f"Seeds {', '.join(map(str, report['seeds']))} (medians over seeds), exact preference "
                "probabilities as labels, every context in every round. Each solver's iterations are the budget "
                "divided by what one of its rounds queries per context (counted by running one round)"
                + ("" if not capped else
                   ", at most its tuned iteration count (its default `solve --mode sampled` run; rounds that "
                   "ask each distinct pair once cost ≤ N(N−1)/2 queries, so the budget alone would buy 33,333 "
                   "of them on a 3-action game): the queries each run spent are in the table") + ". Settings "
                "(tuned: the fields taken from the solver's recommended tabular settings):", "",
                settings_table(report, summary)]
    else:
        large = [g for g, r in report["games"].items() if r["contexts"] * r["actions"] > LARGE_GAME]
        fewer = (f" On {', '.join(large)} (more than {LARGE_GAME} context-action pairs) every solver runs "
                 f"{report['large_game_iterations']:,} iterations instead, to keep the run short: there one "
                 "iterative-DPO round alone takes ~30 ms.") if large else ""
        head = [f"## Exact mode: {report['exact_iterations']:,} iterations of every solver's exact dynamics", "",
                "Each solver with its default options, exact win-rates (no queries). Iterative DPO fits a "
                "Bradley-Terry model to the preference under π_t ⊗ π_t each round and takes Gibbs(μ, scores/τ)."
                + fewer]
    x = "queries" if sampled else "iteration"
    verdicts, comparisons = [], []
    for game, entries in summary.items():
        names, why = winner(entries, x)
        verdicts.append(f"- **{game}**: {', '.join(names)} ({why})")
        comparisons.append(f"- **{game}**: {versus_baseline(entries)}")
    head += ["", f"![{mode} mode: gap per game]({mode}.png)", "",
             "**Winner per game** (fastest to reach and hold the smallest threshold that some solver holds in "
             "every seed; else the lowest final gap):", "", *verdicts, "",
             "**Against iterative DPO** (final gaps):", "", *comparisons, ""]
    rows = []
    for game, entries in summary.items():
        for name, e in entries.items():
            spent = [f"{e['queries_per_context']:,.0f}"] if sampled else []
            rows.append([game, name, e["iterate"], f"{e['iterations']:,.0f}", *spent, fmt_gap(e["final_gap"]),
                         fmt_gap(e["final_gap_unregularized"]),
                         *(reach_cell(e["reach"][f"{t:g}"], e["seeds"], sampled) for t in THRESHOLDS),
                         fmt_seconds(e["seconds"])])
    unit = "queries" if sampled else "iterations"
    headers = ["game", "solver", "iterate", "iterations", *(["queries / context"] if sampled else []),
               "final gap", "Gap₀", *(f"{unit} to gap ≤ {t:g}" for t in THRESHOLDS), "solver seconds"]
    unregularised = [[g, n, fmt_gap(e["final_gap_unregularized"]),
                      *(reach_cell(e["reach_unregularized"][f"{t:g}"], e["seeds"], sampled) for t in THRESHOLDS)]
                     for g, entries in summary.items() for n, e in entries.items() if not REGISTRY[n].needs_tau]
    note = ""
    if unregularised:
        note = ("\n\nSPPO and DNO solve the unregularised game; their own measure, the unregularised gap Gap₀:\n\n"
                + md_table(["game", "solver", "final Gap₀", *(f"{unit} to Gap₀ ≤ {t:g}" for t in THRESHOLDS)],
                           unregularised))
    return "\n".join(head) + "\n" + md_table(headers, rows) + note


def settings_table(report: dict, summary: dict) -> str:
    rows = []
    for name, s in report["sampled_settings"].items():
        options = ", ".join(f"{k}={v}" for k, v in s["options"].items()) or "–"
        per = sorted({entries[name]["per_iteration"] for entries in summary.values() if name in entries})
        rows.append([name, s["samples"], s["optimizer"], f"{s['lr']:g}", s["epochs"], options,
                     ", ".join(f"{p:,.0f}" for p in per), ", ".join(s["tuned"]) or "–"])
    return md_table(["solver", "K", "optimizer", "lr", "epochs", "solver options", "queries / context / iteration",
                     "tuned"], rows)


# ---- plots -------------------------------------------------------------------------------------------------------
def plot_mode(path: Path, report: dict, mode: str) -> None:
    """One log-log panel per game: the gap against iterations (exact) or queries per context (sampled), one
    line per solver (median over seeds), iterative DPO in thick black."""
    x = "queries" if mode == "sampled" else "iteration"
    panels = []
    for game, info in report["games"].items():
        runs = [r for r in report["runs"] if r["mode"] == mode and r["game"] == game]
        lines = {}
        for name in dict.fromkeys(r["solver"] for r in runs):
            curves = [r["curve"] for r in runs if r["solver"] == name]
            shown = [k - 1 for k in log_schedule(len(curves[0]["gap"]), PLOT_POINTS)]
            lines[name] = ([curves[0][x][k] for k in shown],
                           [statistics.median(c["gap"][k] for c in curves) for k in shown])
        title = f"{game} (τ = {info['tau']:g}, {info['contexts']}×{info['actions']})"
        panels.append({"title": title, "lines": lines, "floor": info.get("unregularised_equilibrium_gap")})
    xlabel = "preference queries per context" if x == "queries" else "iteration"
    race_plot(path, panels, xlabel=xlabel, title=f"{mode} mode: duality gap (worst context) of every solver")


def race_plot(path: Path, panels: list[dict], *, xlabel: str, title: str, thresholds=THRESHOLDS,
              columns: int = 4) -> None:
    """A grid of log-log panels ({"title", "lines": {solver: (xs, gaps)}, optional "floor"}), one colour and
    marker per solver across panels; the baseline thick and black on top; thresholds dotted grey."""
    names = list(dict.fromkeys(n for p in panels for n in p["lines"]))
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.3 * columns, 3.5 * rows + 0.7), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, panel in zip(axes, panels):
        drawn = []
        for name, (xs, gaps) in panel["lines"].items():
            k = names.index(name)
            style = (dict(color="black", lw=2.6, zorder=5) if name == BASELINE else
                     dict(color=f"C{k % 10}", lw=1.3, marker=MARKERS[k % len(MARKERS)], markersize=3.5,
                          markevery=(0.04 * k, 0.2) if len(xs) > 10 else None,     # short runs: every point
                          ls="--" if (xs, gaps) in drawn else "-"))      # a curve on top of an equal one: dashed
            axis.plot(xs, [max(g, FLOOR) for g in gaps], label=name, **style)
            drawn.append((xs, gaps))
        for threshold in thresholds:
            axis.axhline(threshold, color="grey", ls=":", lw=0.8)
        if panel.get("floor") is not None and panel["floor"] > FLOOR:
            axis.axhline(panel["floor"], color="tab:brown", ls="--", lw=0.8, label="τ-gap of π*₀")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(panel["title"], fontsize=9)
        axis.set_xlabel(xlabel, fontsize=8)
        axis.set_ylabel("duality gap", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(True, which="major", alpha=0.3)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    legend = {}
    for axis in axes[:len(panels)]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(len(legend), 9),
                  fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
