"""The theory experiments behind ``nashpref theory …``: each takes its config, computes everything in memory and
returns (summary, files) — file name → bytes or a writer — for the command line to publish atomically."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from nashpref import checks
from nashpref.benchmarks.stats import mean_ci
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import DTYPE
from nashpref.core.gamefile import load_game
from nashpref.errors import GameError, UsageError
from nashpref.theory import plots
from nashpref.theory.bandit import random_bandit, random_skew
from nashpref.theory.maxmin import GroupSpec, group_experiment
from nashpref.theory.logodds import log_odds_gap, solve_log_odds
from nashpref.theory.mle import fit_bt, fit_skew, sample_pairs, skew_to_vector
from nashpref.theory.online import LABELS, STRATEGIES, InstanceSpec, OnlineConfig, run_seeds
from nashpref.theory.pessimism import OfflineSpec, run_offline_seeds

Files = dict[str, "bytes | str | Callable[[Path], None]"]
Tick = Callable[[], None] | None


def require_int(name: str, value, minimum: int) -> None:
    checks.integer(value, f"--{name.replace('_', '-')}", minimum, error=UsageError)


def require_positive(name: str, value, allow_zero: bool = False) -> None:
    checks.number(value, f"--{name.replace('_', '-')}", 0.0, low_open=not allow_zero, error=UsageError)


def require_spec(prefix: str, spec) -> None:
    """Integer fields >= 1, float fields finite and > 0 (τ, scales) — the instance specs' rules."""
    for f in fields(spec):
        value = getattr(spec, f.name)
        if f.type in (int, "int"):
            require_int(f"{prefix}{f.name}", value, 1)
        else:
            require_positive(f"{prefix}{f.name}", value, allow_zero=f.name != "tau")


def interval(values) -> dict:
    mean, half = mean_ci(list(values))
    return {"mean": mean, "ci95": half}


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(mean: float, half: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


# ---- explore ------------------------------------------------------------------------------------------------------
@dataclass
class ExploreSettings:
    model: Literal["bt", "skew"] = "bt"
    """Preference model: bt (score: suboptimality of the KL-regularised objective) or skew (the general
    bilinear model; score: duality gap of the true τ-game)."""
    seeds: int = 20
    """Independent games (each strategy runs on the same games and data seeds: paired)."""
    rounds: int = 8
    """Rounds of collect-and-refit."""
    pairs_per_round: int = 32
    """Comparisons collected per round."""
    budget: float = 2.0
    """The enhancer's KL budget KL(π²‖π¹) ≤ budget."""
    lam: float = 1.0
    """Ridge λ of the MLE (Σ = λI + Σ zzᵀ)."""
    instance: InstanceSpec = field(default_factory=InstanceSpec)
    """How each seed's linear game is drawn."""


def run_explore(cfg: ExploreSettings, tick: Tick = None) -> tuple[dict, Files]:
    for name in ("seeds", "rounds", "pairs_per_round"):
        require_int(name, getattr(cfg, name), 2 if name == "seeds" else 1)
    require_positive("budget", cfg.budget)
    require_positive("lam", cfg.lam)
    require_spec("instance.", cfg.instance)
    online = OnlineConfig(model=cfg.model, rounds=cfg.rounds, pairs_per_round=cfg.pairs_per_round, lam=cfg.lam,
                          budget=cfg.budget)
    scores = run_seeds(cfg.instance, online, STRATEGIES, range(cfg.seeds), on_run=tick)
    curves = {s: [interval([run[t] for run in runs]) for t in range(cfg.rounds + 1)] for s, runs in scores.items()}
    final = {s: np.array([run[-1] for run in runs]) for s, runs in scores.items()}
    paired = {s: interval(final["explore"] - final[s]) for s in STRATEGIES if s != "explore"}
    what = "suboptimality J(π*) − J(π)" if cfg.model == "bt" else "duality gap of the true τ-game"
    rows = [[LABELS[s], fmt(curves[s][-1]["mean"], curves[s][-1]["ci95"]),
             "–" if s == "explore" else fmt(paired[s]["mean"], paired[s]["ci95"])] for s in STRATEGIES]
    table = markdown_table(["strategy", f"final {what} (mean ± 95% CI)", "explore − this (paired)"], rows)
    summary = {"settings": asdict(cfg), "curves": curves, "paired_final_difference": paired, "scores": scores}
    files: Files = {"results.json": summary, "README.md": table + "\n",
                    "explore.png": lambda p: plots.rounds_plot(p, curves, what, cfg.pairs_per_round, LABELS)}
    return summary | {"table": table}, files


# ---- pessimism ----------------------------------------------------------------------------------------------------
@dataclass
class PessimismSettings:
    seeds: int = 30
    """Independent offline datasets."""
    beta: float = 1.0
    """Width β of the covariance bonus."""
    k: int = 10
    """Ensemble size (bootstrap resamples)."""
    lam: float = 1.0
    """Ridge λ of the MLE."""
    instance: OfflineSpec = field(default_factory=OfflineSpec)
    """How each seed's instance and behaviour policy are drawn."""


def run_pessimism(cfg: PessimismSettings, tick: Tick = None) -> tuple[dict, Files]:
    require_int("seeds", cfg.seeds, 2)
    require_int("k", cfg.k, 1)
    require_positive("beta", cfg.beta, allow_zero=True)
    require_positive("lam", cfg.lam)
    require_spec("instance.", cfg.instance)
    rows = run_offline_seeds(cfg.instance, range(cfg.seeds), lam=cfg.lam, beta=cfg.beta, k=cfg.k, on_run=tick)
    values = {n: np.array([r[n] for r in rows]) for n in ("mle", "lcb", "ensemble", "optimal")}
    stats = {n: {"regret": interval(values["optimal"] - values[n]),
                 "minus_mle": interval(values[n] - values["mle"]),
                 "wins": int((values[n] > values["mle"]).sum())} for n in ("mle", "lcb", "ensemble")}
    table = markdown_table(
        ["policy", "regret J(π*) − J(π)", "J(π) − J(π_mle) (paired)", f"seeds better than MLE (of {cfg.seeds})"],
        [[n, fmt(s["regret"]["mean"], s["regret"]["ci95"]), fmt(s["minus_mle"]["mean"], s["minus_mle"]["ci95"]),
          s["wins"]] for n, s in stats.items()])
    summary = {"settings": asdict(cfg), "stats": stats, "rows": rows}
    files: Files = {"results.json": summary, "README.md": table + "\n",
                    "pessimism.png": lambda p: plots.paired_plot(p, {n: values[n] - values["mle"]
                                                                       for n in ("lcb", "ensemble")})}
    return summary | {"table": table}, files


# ---- payoff -------------------------------------------------------------------------------------------------------
@dataclass
class PayoffSettings:
    games: tuple[str, ...] = ("bt-transitive", "bt-mixture", "egpo-random", "condorcet-3")
    """Games (paths or shipped NAMEs); every preference must lie strictly inside (0, 1)."""
    tau: float | None = None
    """KL strength τ > 0; overrides each game file's default."""


def run_payoff(cfg: PayoffSettings, tick: Tick = None) -> tuple[dict, Files]:
    if cfg.tau is not None:
        require_positive("tau", cfg.tau)
    results = []
    for spec in cfg.games:
        game = load_game(spec, cfg.tau)
        if not game.tau > 0:
            raise GameError(f"{spec}: the log-odds equilibrium needs τ > 0")
        try:
            pi_log, gap_log = solve_log_odds(game)
        except GameError as err:
            raise GameError(f"{spec}: {err}") from None
        prob = solve_equilibrium(game)
        results.append({"game": game.name, "tau": game.tau, "contexts": game.num_contexts,
                        "l1_distance": (pi_log - prob.policy).abs().sum(-1).max().item(),
                        "log_odds_gap_of_log_odds_eq": gap_log.max().item(),
                        "probability_gap_of_probability_eq": prob.gap.max().item(),
                        "probability_gap_of_log_odds_eq": game.gap(pi_log).max().item(),
                        "log_odds_gap_of_probability_eq": log_odds_gap(game, prob.policy).max().item()})
        if tick is not None:
            tick()
    table = markdown_table(
        ["game", "τ", "max_x ‖π*_log − π*_prob‖₁", "prob. gap of π*_log", "log-odds gap of π*_prob",
         "own gaps (log, prob)"],
        [[r["game"], f"{r['tau']:g}", f"{r['l1_distance']:.4f}", f"{r['probability_gap_of_log_odds_eq']:.3g}",
          f"{r['log_odds_gap_of_probability_eq']:.3g}",
          f"{r['log_odds_gap_of_log_odds_eq']:.1e}, {r['probability_gap_of_probability_eq']:.1e}"] for r in results])
    return {"settings": asdict(cfg), "games": results, "table": table}, {
        "results.json": {"settings": asdict(cfg), "games": results}, "README.md": table + "\n"}


# ---- recovery -----------------------------------------------------------------------------------------------------
@dataclass
class RecoverySettings:
    sizes: tuple[int, ...] = (250, 1000, 4000, 16000)
    """Numbers of comparisons n (drawn with a, b ~ μ)."""
    seeds: int = 20
    """Datasets per n."""
    lam: float = 1e-3
    """Ridge λ (small: the fit is the plain MLE)."""
    contexts: int = 4
    """Contexts C."""
    actions: int = 6
    """Actions N per context."""
    dim: int = 4
    """Feature dimension d."""
    truth_scale: float = 2.0
    """θ ~ scale·N(0, I); A = scale·(G − Gᵀ)/√2."""


def run_recovery(cfg: RecoverySettings, tick: Tick = None) -> tuple[dict, Files]:
    require_int("seeds", cfg.seeds, 2)
    require_positive("lam", cfg.lam)
    if len(cfg.sizes) < 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in cfg.sizes):
        raise UsageError(f"--sizes must be at least two integers >= 1, got {cfg.sizes!r}")
    for name in ("contexts", "actions", "dim"):
        require_int(name, getattr(cfg, name), 2)
    require_positive("truth_scale", cfg.truth_scale)
    g = torch.Generator().manual_seed(0)
    bandit = random_bandit(cfg.contexts, cfg.actions, cfg.dim, 0.1, g)
    theta = cfg.truth_scale * torch.randn(cfg.dim, generator=g, dtype=DTYPE)
    A = random_skew(cfg.dim, cfg.truth_scale, g)
    models = {"bt": (bandit.bt_preference(theta), theta, fit_bt),
              "skew": (bandit.skew_preference(A), skew_to_vector(A), fit_skew)}
    curves = {}
    for name, (P, truth, fit) in models.items():
        rmse = []
        for n in cfg.sizes:
            errors = [(fit(bandit, sample_pairs(P, bandit.mu, bandit.mu, n, torch.Generator().manual_seed(s)),
                           cfg.lam).w - truth).square().sum().item() for s in range(cfg.seeds)]
            rmse.append(math.sqrt(sum(errors) / len(errors)))
            if tick is not None:
                tick()
        slope = float(np.polyfit(np.log(cfg.sizes), np.log(rmse), 1)[0])
        curves[name] = {"rmse": rmse, "slope": slope}
    table = markdown_table(["model", *[f"RMSE n={n}" for n in cfg.sizes], "fitted slope (theory −0.5)"],
                           [[m, *[f"{e:.4f}" for e in c["rmse"]], f"{c['slope']:.3f}"] for m, c in curves.items()])
    summary = {"settings": asdict(cfg), "curves": curves}
    files: Files = {"results.json": summary, "README.md": table + "\n",
                    "recovery.png": lambda p: plots.recovery_plot(p, list(cfg.sizes), curves)}
    return summary | {"table": table}, files


# ---- maxmin -------------------------------------------------------------------------------------------------------
@dataclass
class MaxminSettings:
    seeds: int = 20
    """Independent instances."""
    lam: float = 1.0
    """Ridge λ of every fit."""
    instance: GroupSpec = field(default_factory=GroupSpec)
    """How each seed's groups and users are drawn."""


def run_maxmin(cfg: MaxminSettings, tick: Tick = None) -> tuple[dict, Files]:
    require_int("seeds", cfg.seeds, 2)
    require_positive("lam", cfg.lam)
    spec = cfg.instance
    for name in ("contexts", "actions", "dim", "users", "per_user"):
        require_int(f"instance.{name}", getattr(spec, name), 1)
    require_positive("instance.tau", spec.tau)
    require_positive("instance.truth_scale", spec.truth_scale, allow_zero=True)
    if len(spec.shares) < 1 or any(not (isinstance(s, (int, float)) and s > 0) for s in spec.shares):
        raise UsageError(f"--instance.shares must be numbers > 0, got {spec.shares!r}")
    spec = replace(spec, shares=tuple(s / sum(spec.shares) for s in spec.shares))
    rows = []
    for seed in range(cfg.seeds):
        rows.append({"seed": seed} | group_experiment(spec, seed, cfg.lam))
        if tick is not None:
            tick()
    values = {n: np.array([r[n] for r in rows]) for n in ("pooled", "maxmin_em", "maxmin_true")}
    stats = {n: interval(v) for n, v in values.items()}
    gain = interval(values["maxmin_em"] - values["pooled"])
    table = markdown_table(
        ["policy", "true min-group utility (gain over μ; mean ± 95% CI)"],
        [["pooled single BT reward (standard RLHF)", fmt(stats["pooled"]["mean"], stats["pooled"]["ci95"])],
         ["max-min of the EM mixture", fmt(stats["maxmin_em"]["mean"], stats["maxmin_em"]["ci95"])],
         ["max-min of the true groups (optimum)", fmt(stats["maxmin_true"]["mean"], stats["maxmin_true"]["ci95"])],
         ["max-min EM − pooled (paired)", fmt(gain["mean"], gain["ci95"])]])
    summary = {"settings": asdict(cfg), "stats": stats, "gain": gain, "rows": rows,
               "max_certificate": max(r["certificate"] for r in rows)}
    return summary | {"table": table}, {"results.json": summary, "README.md": table + "\n"}
