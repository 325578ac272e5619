"""`nashpref solve`: a solver's exact dynamics or sampled training on a game, or a race of every solver."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from nashpref.cli.tables import describe, summary_table
from nashpref.cli.threads import threads_for
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.exact import run_exact
from nashpref.core.game import PreferenceGame
from nashpref.core.gamefile import load_game
from nashpref.core.results import solve_result, summary_row
from nashpref.errors import UsageError
from nashpref.io import check_output_dir, staged_output, write_json, write_jsonl
from nashpref.plots import convergence_plot
from nashpref.quiet import progress
from nashpref.sampled import SampledConfig, recommended_options, recommended_values, run_sampled, validate_config
from nashpref.solvers import REGISTRY, Solver, option_field
from nashpref.validate import check_memory

_SAMPLED = SampledConfig()      # defaults of the sampled-mode options
ROUND_TENSORS, ROW_BYTES = 16, 1024     # see sampled_memory


@dataclasses.dataclass
class SolveBase:
    """Run a solver's dynamics on a game and write DIR/result.json, DIR/metrics.jsonl and DIR/convergence.png.
    With --solver all, every registered solver runs: DIR/<solver>/ for each, one race plot DIR/convergence.png
    and DIR/summary.json."""

    game: str
    """Game: a path to a .toml file, or the NAME of a shipped game (see `nashpref games`)."""
    solver: str
    """(replaced by the registry's choices)"""
    out: Path
    """Output directory DIR; created only when everything succeeded."""
    tau: Annotated[float | None, tyro.conf.arg(metavar="X")] = None
    """KL strength τ ≥ 0; overrides the game file's default."""
    iters: Annotated[int | None, tyro.conf.arg(metavar="N")] = None
    """Iterations (≥ 1). Default: the solver's own default in exact mode; in sampled mode its tuned count (500
    with --no-recommended)."""
    seed: int = 0
    """Seed of every sample and label in sampled mode (the exact dynamics are deterministic)."""
    mode: Literal["exact", "sampled"] = "exact"
    """exact: the solver's exact tabular update with exact win-rates. sampled: train a tabular policy with the
    solver's per-sample loss on sampled responses and preference queries (the code that trains LMs)."""
    samples: int = _SAMPLED.samples
    """[sampled] K: responses sampled per context per round."""
    labels: Literal["exact", "bernoulli"] = _SAMPLED.labels
    """[sampled] Preference signal: exact probabilities P(a ≻ b), or one Bernoulli 0/1 label per query."""
    lr: float = _SAMPLED.lr
    """[sampled] Learning rate on the policy logits."""
    epochs: int = _SAMPLED.epochs
    """[sampled] Passes over each round's batch."""
    minibatches: int = _SAMPLED.minibatches
    """[sampled] Optimizer steps per epoch (the batch is split along contexts)."""
    optimizer: Literal["sgd", "adam"] = _SAMPLED.optimizer
    """[sampled] Optimizer on the policy logits."""
    contexts_per_round: Annotated[int | None, tyro.conf.arg(metavar="B")] = _SAMPLED.contexts_per_round
    """[sampled] Contexts drawn per round (default: all contexts of the game)."""
    recommended: bool = True
    """[sampled] Use each solver's tuned settings for tabular sampled training (its `sampled_defaults` for
    iterations / samples / lr / optimizer / epochs and its `sampled_options` for its own options) wherever this
    command leaves the value at its default; the tuned values are listed in the solver modules. With
    --no-recommended every solver runs the generic defaults below and its paper options."""


def sampled_memory(game: PreferenceGame, config: SampledConfig) -> None:
    """Refuse sampled runs whose rounds or logs would not fit in memory: a round holds about ROUND_TENSORS
    8-byte values per sampled response (responses, labels, log-probs, weights, their gradients), and every
    iteration keeps one metrics row (about ROW_BYTES)."""
    per_round = ROUND_TENSORS * 8.0 * (config.contexts_per_round or game.num_contexts) * config.samples
    check_memory(f"--samples {config.samples}: one round", per_round)
    check_memory(f"--iters {config.iterations}: the metrics of every iteration", ROW_BYTES * config.iterations)


def solver_help() -> str:
    listing = ", ".join(f"{name} ({cls.iterate} iterate)" for name, cls in REGISTRY.items())
    return f"Solver to run, or 'all' to race every registered one: {listing}."


def build_solve_command() -> type:
    """SolveBase + a `solver` choice over the registry + one nested Config per registered solver."""
    choice = Literal[tuple(REGISTRY) + ("all",)]  # type: ignore[misc]
    fields = [("solver", Annotated[choice, tyro.conf.arg(help=solver_help())])]
    fields += [(option_field(name), cls.Config, dataclasses.field(default_factory=cls.Config))
               for name, cls in REGISTRY.items()]
    solve = dataclasses.make_dataclass("Solve", fields, bases=(SolveBase,))
    solve.__doc__ = SolveBase.__doc__
    return solve


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be an integer >= 1, got {value}")


def run_solve(cmd) -> int:
    check_output_dir(cmd.out)
    check_positive("--iters", cmd.iters)
    game = load_game(cmd.game, cmd.tau)
    threads_for(game)
    race = cmd.solver == "all"
    solvers, skipped = [], {}
    for name, cls in (REGISTRY.items() if race else [(cmd.solver, REGISTRY[cmd.solver])]):
        if cls.needs_tau and game.tau == 0:
            reason = (f"solver {name} needs tau > 0 (it solves the KL-regularised game) but {game.name} is run "
                      "at tau = 0; pass --tau X with X > 0")
            if not race:
                raise UsageError(reason)
            skipped[name] = reason
            continue
        config = getattr(cmd, option_field(name))
        if cmd.mode == "sampled" and cmd.recommended:
            config = recommended_options(cls, config)
        solvers.append(cls(config))
    sampled = {solver.name: sampled_config(cmd, solver) for solver in solvers} if cmd.mode == "sampled" else {}
    for config in sampled.values():
        validate_config(config)
        sampled_memory(game, config)
    # Each solver's budget, worked out before anything runs: solvers check their options here, so a bad option
    # of the last solver in a race fails at once rather than after the others have run.
    budgets = [sampled[solver.name].iterations if sampled else cmd.iters or solver.default_iterations(game)
               for solver in solvers]

    equilibrium = solve_equilibrium(game)
    reference = {"gap": equilibrium.gap.max().item(),
                 "gap_unregularized": game.gap(equilibrium.policy, tau=0.0).max().item()}
    results, metrics = {}, {}
    for solver, iterations in zip(solvers, budgets):
        run = run_solver(game, solver, iterations, cmd.seed, sampled.get(solver.name))
        results[solver.name] = solve_result(game, solver, run, mode=cmd.mode, seed=cmd.seed,
                                            sampled=sampled.get(solver.name), equilibrium=equilibrium)
        metrics[solver.name] = run.metrics

    def write_one(folder: Path, name: str) -> None:
        folder.mkdir(exist_ok=True)
        write_json(folder / "result.json", results[name])
        write_jsonl(folder / "metrics.jsonl", metrics[name])
        convergence_plot(folder / "convergence.png", {name: metrics[name]}, tau=game.tau, reference=reference,
                         title=f"{game.name}: {name} ({cmd.mode}), {describe(game)}")

    rows = [summary_row(r) for r in results.values()]
    with staged_output(cmd.out) as staging:
        if race:
            for name in results:
                write_one(staging / name, name)
            convergence_plot(staging / "convergence.png", metrics, tau=game.tau, reference=reference,
                             x="queries" if cmd.mode == "sampled" else "iteration",
                             title=f"{game.name}: every solver ({cmd.mode}), {describe(game)}")
            write_json(staging / "summary.json", {
                "game": game.name, "tau": game.tau, "mode": cmd.mode, "seed": cmd.seed,
                "equilibrium_gap": reference["gap"], "solvers": rows, "skipped": skipped})
        else:
            write_one(staging, solvers[0].name)
    for name in skipped:
        print(f"note: skipped {name}: it needs tau > 0", file=sys.stderr)
    print(summary_table(rows))
    print(f"wrote {cmd.out}")
    return 0


def sampled_config(cmd, solver: Solver) -> SampledConfig:
    """The sampled-mode settings of one solver: the command's, with the solver's tuned values in place of the
    generic defaults unless --no-recommended is set."""
    values = {"iterations": cmd.iters if cmd.iters is not None else _SAMPLED.iterations, "samples": cmd.samples,
              "lr": cmd.lr, "optimizer": cmd.optimizer, "epochs": cmd.epochs}
    if cmd.recommended:
        values = recommended_values(solver, values)
    return SampledConfig(**values, labels=cmd.labels, minibatches=cmd.minibatches, seed=cmd.seed,
                         contexts_per_round=cmd.contexts_per_round)


def run_solver(game: PreferenceGame, solver: Solver, iterations: int, seed: int, sampled: SampledConfig | None):
    torch.manual_seed(seed)
    with progress(iterations, solver.name) as bar:
        if sampled is None:
            return run_exact(game, solver, iterations, on_step=lambda t: bar.update())

        def on_iteration(t: int, row: dict) -> None:
            bar.set_postfix(gap=f"{row['gap']:.2e}", refresh=False)
            bar.update()
        return run_sampled(game, solver, sampled, on_iteration=on_iteration)
