"""The report of the known-answer LLM race: a per-method table, the gap-vs-iteration plot with the class
simplex, and the league heat-map."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from nashpref.benchmarks.stats import format_ci, mean_ci
from nashpref.core.game import PreferenceGame
from nashpref.io import atomic_write

TARGET_FACTOR = 5.0
PALETTE = [f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray", "olive",
                                "cyan")] + ["black", "gold", "navy", "lime"]       # 14 methods, no colour twice


def summary(results: dict) -> dict:
    """Per method: final gap, best gap, KL, win-rate vs μ (per seed), the reduction of μ's gap, s / iteration."""
    reference = results["reference_class_gap"]
    game = stored_class_game(results["class_game"], results["tau"])
    table = {}
    for method in results["methods"]:
        runs = [results["runs"][method][str(s)] for s in results["seeds"]]
        final = [rows[-1]["class_gap"] for rows in runs]
        mixture = [mixture_gap(game, rows) for rows in runs]
        target = target_gaps(results, method, game)
        table[method] = {
            "target": target, "target_reduction": target["reference"] / max(mean_ci(target["gaps"])[0], 1e-12),
            "final_gap": final, "best_gap": [min(r["class_gap"] for r in rows) for rows in runs],
            "mixture_gap": mixture, "mixture_reduction": reference / max(mean_ci(mixture)[0], 1e-12),
            "kl": [rows[-1]["kl"] for rows in runs],
            "exploitability": [exploitability(results["class_game"]["matrix"], rows[-1]["class_shares"])
                               for rows in runs],
            "win_rate_vs_reference": [rows[-1]["win_rate_vs_reference"] for rows in runs],
            "reduction": reference / max(mean_ci(final)[0], 1e-12),
            "shares": [sum(rows[-1]["class_shares"][k] for rows in runs) / len(runs) for k in range(3)],
            "seconds_per_iteration": sum(rows[-1]["seconds"] / rows[-1]["iteration"] for rows in runs) / len(runs)}
    return table


def target_gaps(results: dict, method: str, game: PreferenceGame) -> dict:
    """Per seed, the gap ``method`` is built to drive to zero: its game's (the τ-regularised class game, or the
    τ = 0 one for the solvers of the unregularised game) at the iterate its theory speaks of (the last, or the
    iterates' mixture for average-iterate solvers); with μ's gap in that game and, per seed, that gap after every
    iteration (``curves``: the t-th iterate's, or the mixture of iterates 1 … t). Iterative DPO is scored as a
    last-iterate τ solver, the game it is meant to play."""
    from nashpref.solvers import REGISTRY, UNREGULARISED

    unregularised, average = method in UNREGULARISED, REGISTRY[method].iterate == "average"
    matrix = results["class_game"]["matrix"]

    def gap(shares) -> float:
        return (exploitability(matrix, shares) if unregularised
                else game.gap(torch.tensor(shares, dtype=torch.float64)[None]).item())

    curves = []
    for seed in results["seeds"]:
        shares = torch.tensor([r["class_shares"] for r in results["runs"][method][str(seed)]], dtype=torch.float64)
        if average:         # the mixture of iterates 1 … t answers with their mean shares
            shares = shares.cumsum(0) / torch.arange(1, len(shares) + 1, dtype=torch.float64)[:, None]
        curves.append([gap(row.tolist()) for row in shares])
    reference = (exploitability(matrix, results["class_game"]["reference"]) if unregularised
                 else results["reference_class_gap"])
    return {"game": "τ = 0" if unregularised else "τ", "iterate": "mixture" if average else "last",
            "gaps": [curve[-1] for curve in curves], "curves": curves, "reference": reference}


def stored_class_game(class_game: dict, tau: float) -> PreferenceGame:
    """The class game as results.json stores it (its matrix and μ's measured shares), without re-solving it."""
    return PreferenceGame.create(torch.tensor(class_game["matrix"], dtype=torch.float64),
                                 torch.tensor(class_game["reference"], dtype=torch.float64), tau)


def mixture_gap(game: PreferenceGame, rows: list[dict]) -> float:
    """The class-game gap of the policy that answers with a uniformly drawn iterate π_1 … π_T: the average iterate
    whose convergence SPPO, DNO and SPO guarantee (and ONPO's at τ = 0). Its class shares are the mean of the
    iterates' shares, since the oracle reads only the class."""
    shares = torch.tensor([row["class_shares"] for row in rows], dtype=torch.float64).mean(0)
    return game.gap(shares[None]).item()


def exploitability(matrix: list[list[float]], shares: list[float]) -> float:
    """max_k P(k ≻ s) − ½: the unregularised (τ = 0) game's gap of the class shares s (its equilibrium is
    uniform here), the target of the solvers that ignore τ (SPPO, DNO, COMAL, SPO, MPO)."""
    return max(sum(m * x for m, x in zip(row, shares)) for row in matrix) - 0.5


def race_markdown(results: dict) -> str:
    meta, game, budget = results["meta"], results["class_game"], results["budget"]
    table = summary(results)
    decay = budget.get("lr_decay", 1.0)
    last_lr = budget["lr"] * decay ** (budget["iterations"] - 1)
    shares = lambda p: " / ".join(f"{x:.2f}" for x in p)        # noqa: E731
    lines = ["# Known-answer LLM race: every solver against iterative DPO under a sharp style cycle", "",
             f"`{meta['command']}` — {meta['date']}, {meta['seconds'] / 60:.1f} min (load average "
             f"{meta['load_before']:.1f} before), sampler {meta['sampler']}"
             + (f"; {len(meta['reused_runs'])} runs reused" if meta["reused_runs"] else "") + ".", "",
             f"Machine: {', '.join(f'{k} {v}' for k, v in meta['machine'].items() if v is not None)}.", "",
             f"Oracle `{results['oracle']}`: P(warm ≻ cold) = P(cold ≻ plain) = P(plain ≻ warm) = "
             f"{game['matrix'][0][1]:.2f}, ½ within a style; it reads a response only through its style, so the "
             f"LM game at τ = {results['tau']:g} reduces exactly to this 3 × 3 class game. μ: the tiny Llama SFT'd "
             f"for {results['setup']['sft_steps']} steps on a corpus with styles "
             f"{results['setup']['style_shares_in_sft']}.", "",
             "| policy | classes warm / cold / plain | class-game gap |", "|---|---|---|",
             f"| μ (measured) | {shares(game['reference'])} | {game['reference_gap']:.3f} |",
             f"| π* (class-game equilibrium) | {shares(game['equilibrium'])} | 0 |",
             f"| Bradley–Terry/Gibbs fixed point | {shares(game['bt_gibbs'])} | {game['bt_gibbs_gap']:.3f} |", "",
             f"Budget per run: {budget['iterations']} iterations, {budget['samples']} responses per training "
             f"prompt, AdamW lr {budget['lr']:g} at iteration 1, × {decay:.4g} after each (iteration "
             f"{budget['iterations']}: {last_lr:.2g}), "
             f"≤ {budget['max_new_tokens']} new tokens, AdamW β1 0.9, every solver at its default options "
             f"except where *setting* says; seeds {results['seeds']}. After every iteration: {budget['heldout']} "
             f"held-out prompts (drawn per seed, never trained on) × {budget['eval_samples']} responses. "
             "Intervals: 95% Student-t over seeds.", "",
             f"| method | setting | its target: game, iterate | target gap | × less than μ's (target ≥ "
             f"{TARGET_FACTOR:g}) | final class gap (τ) | × | best gap on the way | iterates' mixture: gap (×) | "
             "exploitability (τ = 0) | KL(π‖μ) | win-rate vs μ | classes warm / cold / plain | s / iteration |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    settings = results.get("settings", {})
    for method, row in table.items():
        target = row["target"]
        met = "**" if row["target_reduction"] >= TARGET_FACTOR and method != "iterative-dpo" else ""
        lines.append(f"| {method} | {describe_setting(settings.get(method, {}))} | {target['game']}, "
                     f"{target['iterate']} | {format_ci(target['gaps'])} | {met}{row['target_reduction']:.1f}×{met} | "
                     f"{format_ci(row['final_gap'])} | {row['reduction']:.1f}× | "
                     f"{format_ci(row['best_gap'])} | {format_ci(row['mixture_gap'])} "
                     f"({row['mixture_reduction']:.1f}×) | {format_ci(row['exploitability'])} | {format_ci(row['kl'], 2)} | "
                     f"{format_ci(row['win_rate_vs_reference'])} | {shares(row['shares'])} | "
                     f"{row['seconds_per_iteration']:.2f} |")
    lines += ["", "![gap per iteration](gap.png)", "", "![each solver on its target](target.png)", "",
              "## League (class-level win-rates of the final policies)",
              "", "Row beats column with this probability (mean over all pairs of seeds); exact given the class "
              "shares, since the oracle reads only the class.", "",
              "| | " + " | ".join(results["league"]["players"]) + " |",
              "|---|" + "---|" * len(results["league"]["players"])]
    for name, row in zip(results["league"]["players"], results["league"]["win_rate"]):
        lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in row) + " |")
    lines += ["", "![league](league.png)", "", "## Columns", "",
              "- *setting*: where the solver's run differs from the budget above (lr, its decay, AdamW β1, the "
              "solver's own options); chosen on seeds 3 and 4 (SPO also 5 and 6), which are not reported here.",
              "- *its target*: the gap the solver is built to drive to zero: the τ-regularised class game's, or the "
              "τ = 0 game's (max_k P(k ≻ π) − ½) for SPPO, DNO, COMAL, SPO and MPO, which ignore τ; at the "
              "last iterate, or at the iterates' mixture for the solvers whose theory is about the average "
              "iterate (SPPO, DNO, SPO, ONPO). × compares it with μ's gap in the same game; iterative DPO, the "
              "baseline, is scored as a last-iterate τ solver.",
              "- *class-game gap*: the exact τ-regularised duality gap, in the class game, of the class shares of "
              "the policy's held-out responses; 0 only at π*.",
              "- *iterates' mixture*: the policy that answers with a uniformly drawn iterate π_1 … π_T (its "
              "class shares are the mean of the iterates'), the average iterate whose convergence the theory gives "
              "SPPO, DNO and SPO; × is μ's gap over its mean gap.",
              "- *exploitability (τ = 0)*: max over classes k of P(k ≻ π) − ½, the unregularised game's gap "
              "(equilibrium: ⅓ each); SPPO, DNO, COMAL, SPO and MPO solve that game and ignore τ.",
              "- *KL(π‖μ)*: the exact per-token KL summed along held-out responses of π.",
              "- *win-rate vs μ*: mean oracle P(π's response ≻ μ's response) over all pairs per held-out prompt.",
              "- *s / iteration*: training seconds (sampling, judging, the optimizer step; no evaluation) per "
              "iteration, machine shared with other work."]
    return "\n".join(lines) + "\n"


def describe_setting(setting: dict) -> str:
    """A run's setting for the table: 'lr 5e-04 × 0.9, β1 0, tau 0.1, period 8', or 'preset'."""
    parts = []
    if "lr" in setting or "lr_decay" in setting:
        parts.append(" ".join(([f"lr {setting['lr']:g}"] if "lr" in setting else [])
                              + ([f"× {setting['lr_decay']:g}"] if "lr_decay" in setting else [])))
    if "adam_beta1" in setting:
        parts.append(f"β1 {setting['adam_beta1']:g}")
    parts += [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in setting.items()
              if k not in ("lr", "lr_decay", "adam_beta1")]
    return ", ".join(parts) or "preset"


def _simplex(shares) -> tuple[float, float]:
    warm, cold, plain = shares
    return cold + plain / 2, plain * math.sqrt(3) / 2


def plot_gap(results: dict, path: Path) -> None:
    """Left: class-game gap per iteration (mean over seeds, log scale) with μ's and the BT/Gibbs policy's gaps;
    right: the class shares' paths in the simplex, π*, μ and the BT/Gibbs policy marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    game = results["class_game"]
    figure = Figure(figsize=(15, 6), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=(1.4, 1))
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(results["methods"])}
    for method in results["methods"]:
        runs = [results["runs"][method][str(s)] for s in results["seeds"]]
        steps = [0] + [r["iteration"] for r in runs[0]]
        means = [game["reference_gap"]] + [sum(rows[i]["class_gap"] for rows in runs) / len(runs)
                                           for i in range(len(runs[0]))]
        style = "--" if method == "iterative-dpo" else "-"
        left.plot(steps, [max(v, 1e-4) for v in means], style, color=colors[method], label=method,
                  lw=2.5 if method == "iterative-dpo" else 1.5)
        for rows in runs:
            path_xy = [_simplex(game["reference"])] + [_simplex(r["class_shares"]) for r in rows]
            right.plot(*zip(*path_xy), style, color=colors[method], lw=1, alpha=0.8)
            right.plot(*path_xy[-1], "o", color=colors[method], ms=5)
    left.axhline(game["reference_gap"], color="gray", ls=":", label=f"μ: {game['reference_gap']:.3f}")
    left.axhline(game["bt_gibbs_gap"], color="black", ls="-.", label=f"BT/Gibbs policy: {game['bt_gibbs_gap']:.3f}")
    left.axhline(game["reference_gap"] / TARGET_FACTOR, color="tab:green", ls=":",
                 label=f"μ's gap / {TARGET_FACTOR:g} (target)")
    left.set_yscale("log")
    left.set_xlabel("iteration")
    left.set_ylabel("exact class-game gap of the held-out class shares (π*: 0)")
    left.set_title(f"class-game gap per iteration (mean over {len(results['seeds'])} seed(s))")
    left.legend(fontsize=8, ncols=2)
    corners = [(0, 0), (1, 0), (0.5, math.sqrt(3) / 2), (0, 0)]
    right.plot(*zip(*corners), color="black", lw=0.8)
    for name, xy in zip(("warm", "cold", "plain"), corners[:3]):
        right.annotate(name, xy, textcoords="offset points", xytext=(-10, -12 if xy[1] == 0 else 5))
    for key, marker, label in (("equilibrium", "*", "π* (equilibrium)"), ("bt_gibbs", "X", "BT/Gibbs policy"),
                               ("reference", "s", "μ")):
        right.plot(*_simplex(game[key]), marker, color="black", ms=14 if marker == "*" else 10, label=label)
    right.set_aspect("equal")
    right.axis("off")
    right.set_title("class shares per iteration (dots: final; dashed: iterative DPO)")
    right.legend(loc="upper right", fontsize=8)
    _save(figure, FigureCanvasAgg, path)


def plot_target(results: dict, path: Path) -> None:
    """μ's gap over each solver's own target gap (its game, its iterate; ``target_gaps``) per iteration, the mean
    of the seeds' gaps, log scale, with the 5× target: every solver on one comparable axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    game = stored_class_game(results["class_game"], results["tau"])
    figure = Figure(figsize=(10, 6), layout="constrained")
    axes = figure.subplots()
    for i, method in enumerate(results["methods"]):
        target = target_gaps(results, method, game)
        means = [sum(c[t] for c in target["curves"]) / len(target["curves"]) for t in range(len(target["curves"][0]))]
        style = "--" if method == "iterative-dpo" else ":" if target["game"] == "τ = 0" else "-"
        axes.plot(range(0, len(means) + 1), [1.0] + [target["reference"] / max(v, 1e-4) for v in means], style,
                  color=PALETTE[i % len(PALETTE)], lw=2.5 if method == "iterative-dpo" else 1.5,
                  label=f"{method} ({target['game']}, {target['iterate']})")
    axes.axhline(TARGET_FACTOR, color="black", ls="-.", lw=1, label=f"target: {TARGET_FACTOR:g}×")
    axes.axhline(1.0, color="gray", ls=":", label="μ")
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("μ's gap / the run's gap, in the game and at the iterate the solver targets")
    axes.set_title(f"each solver on its own target (mean gap over {len(results['seeds'])} seed(s); "
                   "dotted: τ = 0 solvers)")
    axes.legend(fontsize=8, ncols=2)
    _save(figure, FigureCanvasAgg, path)


def plot_league(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, matrix = results["league"]["players"], results["league"]["win_rate"]
    figure = Figure(figsize=(1.0 * len(names) + 3, 0.8 * len(names) + 2), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="RdBu", vmin=0, vmax=1)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(value - 0.5) > 0.3 else "black")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("P(row ≻ column), final policies (class level)")
    figure.colorbar(image, ax=ax)
    _save(figure, FigureCanvasAgg, path)


def _save(figure, canvas, path: Path) -> None:
    buffer = io.BytesIO()
    canvas(figure).print_png(buffer)
    atomic_write(path, buffer.getvalue())
