"""The ``nashpref`` command line (tyro): ``equilibrium``, ``solve``, ``games``, ``train``, ``fit-preference`` and
``bench tabular`` / ``bench llm``.

The solver choices and every solver's own options (``--<solver>.<field>``) are built from
``nashpref.solvers.REGISTRY``; this module knows no solver by name. Bad input of any kind ends in one line
``error: …`` on stderr and exit status 2, with nothing written to ``--out``: every result is computed in memory
first and the output directory appears only at the end (see :func:`nashpref.outputs.staged_output`).
"""

import contextlib
import dataclasses
import io
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Literal, Sequence, Union

import torch
import tyro
from tqdm import tqdm

from nashpref.benchmarks.llm import LLMBenchConfig, run_bench_llm
from nashpref.benchmarks.tabular import TabularBenchConfig, run_bench_tabular
from nashpref.equilibrium import solve_equilibrium
from nashpref.exact import run_exact
from nashpref.fit_preference import FitPreferenceConfig, run_fit_preference
from nashpref.game import GameError, PreferenceGame
from nashpref.gamefile import games_dir, list_games, load_game
from nashpref.outputs import (check_output_dir, equilibrium_result, solve_result, staged_output, summary_row,
                              write_json, write_jsonl)
from nashpref.plots import convergence_plot
from nashpref.sampled import (SampledConfig, recommended_options, recommended_values, run_sampled,
                              validate_config)
from nashpref.solvers import REGISTRY, Solver
from nashpref.train import build_train_command, quiet_library_progress, run_train

EXIT_BAD_INPUT = 2
DESCRIPTION = ("nashpref: Nash learning from human feedback. Exact equilibria of preference games, every solver's "
               "exact dynamics, and sampled training with the per-sample losses that train language models.")
_SAMPLED = SampledConfig()      # defaults of the sampled-mode options
DESCRIPTION_WIDTH = 80          # `nashpref games` cuts descriptions to this (unless --full)
SMALL_GAME = 1 << 20            # preference entries (C·N²) up to which one torch thread is fastest


class UsageError(GameError):
    """A command-line problem that is not about a game file."""


# ---- commands ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Equilibrium:
    """Compute the exact equilibrium π* of a game (τ > 0: extragradient + Newton to gap ≤ 1e-12; τ = 0: linear
    program) and write DIR/equilibrium.json."""

    game: str
    """Game: a path to a .toml file, or the NAME of a shipped game (see `nashpref games`)."""
    out: Path
    """Output directory DIR; created only when everything succeeded."""
    tau: Annotated[float | None, tyro.conf.arg(metavar="X")] = None
    """KL strength τ ≥ 0; overrides the game file's default."""


@dataclasses.dataclass
class Games:
    """List the shipped games (the .toml files of the games directory, or of $NASHPREF_GAMES)."""

    full: bool = False
    """Print whole descriptions (by default each is cut to fit one line of the table)."""


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
    """Iterations (≥ 1). Default: the solver's own default in exact mode, 500 in sampled mode."""
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
    recommended: bool = False
    """[sampled] Use each solver's tuned settings for tabular sampled training (its `sampled_defaults` for
    iterations / samples / lr / optimizer / epochs and its `sampled_options` for its own options) wherever this
    command leaves the value at its default; the tuned values are listed in the solver modules."""


def option_field(solver_name: str) -> str:
    """The attribute (and, with '-', the flag prefix) that holds a solver's Config: 'nash-md' → nash_md."""
    return re.sub(r"\W", "_", solver_name)


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


BenchCommand = Union[
    Annotated[TabularBenchConfig, tyro.conf.subcommand(
        "tabular", description="Race every solver and iterative DPO on the shipped games, exact and sampled "
                               "modes, at one budget; writes a table and plots (see bench/README.md).")],
    Annotated[LLMBenchConfig, tyro.conf.subcommand("llm", description=" ".join(LLMBenchConfig.__doc__.split()))],
]


@dataclasses.dataclass
class Bench:
    """Benchmarks against iterative DPO: `bench tabular` (exact and sampled solver races on the shipped games) and
    `bench llm` (a tiny language model under a ground-truth intransitive oracle)."""

    benchmark: tyro.conf.OmitSubcommandPrefixes[BenchCommand]
    """Which benchmark."""


def commands() -> dict[str, type]:
    return {"equilibrium": Equilibrium, "solve": build_solve_command(), "games": Games,
            "train": build_train_command(), "fit-preference": FitPreferenceConfig, "bench": Bench}


# ---- parsing: tyro's error boxes become one line ------------------------------------------------------------------
def parse(argv: Sequence[str]):
    """The command object; tyro's multi-line error boxes become one UsageError line (--help exits normally)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            cmd = tyro.extras.subcommand_cli_from_dict(commands(), prog="nashpref", args=list(argv),
                                                       description=DESCRIPTION)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise UsageError(summarise_tyro_error(captured.getvalue())) from None
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())
    return cmd


_SEPARATOR = re.compile(r"^[\s\-─━=]+$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def summarise_tyro_error(text: str) -> str:
    """One line from tyro's error box: its title and the first paragraph of its body. The box is drawn with
    rounded corners on some consoles and as plain text with dashed rules on others; both are handled."""
    lines = [_ANSI.sub("", line).strip().strip("│╭╮╰╯┃").strip() for line in text.splitlines()]
    lines = [line.strip("─ ") if line.startswith("─") or line.endswith("─") else line for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return "could not parse the command line"
    title, body = lines[0], lines[1:]
    while body and _SEPARATOR.match(body[0]):
        body.pop(0)
    for i, line in enumerate(body):
        if line and _SEPARATOR.match(line):
            body = body[:i]
            break
    if title.lower().startswith("required"):   # keep just the missing flags, not their help text
        flags = [line.split()[0] for line in body if line.startswith("-")]
        return f"missing required option(s): {', '.join(flags)}"
    paragraph = []
    for line in body:
        if not line and paragraph:
            break
        if line:
            paragraph.append(line)
    message = " ".join(paragraph)
    # "Value error: Error parsing …", "Missing argument: Missing value …": the title adds nothing then
    redundant = message and (title.lower().endswith("error") or
                             message.split()[0].lower() == title.split()[0].lower())
    if not redundant:
        message = f"{title}: {message}" if message else title
    causes = [m.group(2) for line in body if (m := re.match(r"- <class '(\w+)'>: (.*)", line))
              and m.group(1) != "NoneType"]
    if causes:
        message += f" ({causes[-1]})"
    return re.sub(r"\s+", " ", message)


# ---- running --------------------------------------------------------------------------------------------------
def progress(total: int, name: str) -> tqdm:
    """A progress bar on stderr, shown on a terminal once a run takes longer than half a second."""
    return tqdm(total=total, desc=name, unit="it", file=sys.stderr, delay=0.5, disable=None, leave=False,
                dynamic_ncols=True)


def threads_for(game: PreferenceGame) -> None:
    """One torch thread for small games: their tensors are tiny, and a thread pool then costs more than it
    saves (measured: EGPO on egpo-random, 2791 steps, 0.24 s with one thread vs 4.3 s with two on a busy 2-core
    machine). An explicit OMP_NUM_THREADS is left alone."""
    if game.P.numel() <= SMALL_GAME and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def run_equilibrium(cmd: Equilibrium) -> int:
    check_output_dir(cmd.out)
    game = load_game(cmd.game, cmd.tau)
    threads_for(game)
    start = time.perf_counter()
    eq = solve_equilibrium(game)
    result = equilibrium_result(game, eq, time.perf_counter() - start)
    with staged_output(cmd.out) as staging:
        write_json(staging / "equilibrium.json", result)
    print(policy_table(game, eq.policy, eq.gap))
    print(f"{eq.method}, {result['seconds']:.3g} s; wrote {cmd.out / 'equilibrium.json'}")
    return 0


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
    generic defaults when --recommended is set."""
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


def run_games(cmd: Games) -> int:
    infos = list_games()
    if not infos:
        raise UsageError(f"no game files (*.toml) in {games_dir()}")
    print(table(["name", "contexts", "actions", "tau", "description"],
                [[g.name, g.num_contexts, g.num_actions, f"{g.tau:g}", g.description if cmd.full else
                  shorten(g.description, DESCRIPTION_WIDTH)] for g in infos]))
    return 0


# ---- plain tables ------------------------------------------------------------------------------------------------
def describe(game: PreferenceGame) -> str:
    contexts = f"{game.num_contexts} context{'s' if game.num_contexts > 1 else ''}"
    return f"τ = {game.tau:g}, {contexts} × {game.num_actions} actions"


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


def table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def gap_text(gap: float) -> str:
    """Rounding can make an exact gap of 0 come out at −1e-16; show that as 0, but any real negative as is."""
    return f"{0.0 if -1e-12 < gap < 0 else gap:.3e}"


def summary_table(rows: list[dict]) -> str:
    queries = any("queries" in r for r in rows)
    header = ["solver", "iterate", "iterations"] + (["queries"] if queries else []) + \
             ["gap", "gap (tau=0)", "seconds"]
    body = [[r["solver"], r["iterate"], r["iterations"]] + ([r.get("queries", "")] if queries else []) +
            [gap_text(r["gap"]), gap_text(r["gap_unregularized"]), f"{r['seconds']:.3f}"] for r in rows]
    return table(header, body)


def policy_table(game: PreferenceGame, policies, gaps, limit: int = 10, width: int = 8) -> str:
    def fmt(p) -> str:
        shown = ", ".join(f"{x:.6f}" for x in p[:width].tolist())
        return f"({shown}{', …' if len(p) > width else ''})"

    rows = [[c, fmt(policies[c]), gap_text(gaps[c].item())] for c in range(min(game.num_contexts, limit))]
    text = table(["context", "policy" + (f" over {', '.join(game.actions)}" if game.actions and
                                         game.num_actions <= width else ""), "gap"], rows)
    if game.num_contexts > limit:
        text += f"\n… {game.num_contexts - limit} more contexts in equilibrium.json"
    return text


# ---- language models ---------------------------------------------------------------------------------------------
def run_train_command(cmd) -> int:
    quiet_library_progress()
    result = run_train(cmd)
    last = result.rows[-1] if result.rows else {}
    shown = ", ".join(f"{key} {last[key]:.4g}" for key in ("loss", "win_rate_vs_reference", "kl_to_reference")
                      if isinstance(last.get(key), (int, float)))
    print(f"trained {result.iterations} iterations in {result.seconds:.1f} s{': ' + shown if shown else ''}; "
          f"wrote {result.final}")
    return 0


def run_fit_preference_command(cmd: FitPreferenceConfig) -> int:
    quiet_library_progress()
    result = run_fit_preference(cmd)
    last = result.rows[-1]
    shown = ", ".join(f"{key} {last[key]:.4g}" for key in ("train_loss_after", "validation_loss",
                                                           "validation_accuracy") if key in last)
    print(f"fitted {len(result.rows) - 1} epochs: {shown}; wrote {result.out}")
    return 0


# ---- benchmarks ------------------------------------------------------------------------------------------------
def run_bench_tabular_command(cmd: TabularBenchConfig, command: str) -> int:
    status = run_bench_tabular(cmd)         # it rebuilds its command line from the config itself
    print(f"wrote {cmd.out / 'README.md'}")
    return status


def run_bench_llm_command(cmd: LLMBenchConfig, command: str) -> int:
    quiet_library_progress()
    path = run_bench_llm(cmd, command=command)
    print(f"wrote {path}")
    return 0


BENCH_RUNNERS: dict[str, Callable] = {"TabularBenchConfig": run_bench_tabular_command,
                                      "LLMBenchConfig": run_bench_llm_command}


# ---- entry point -------------------------------------------------------------------------------------------------
RUNNERS: dict[str, Callable] = {"Equilibrium": run_equilibrium, "Solve": run_solve, "Games": run_games,
                                "Train": run_train_command, "FitPreferenceConfig": run_fit_preference_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            cmd = parse(argv)
        except SystemExit as stop:              # --help
            return stop.code or 0
        if isinstance(cmd, Bench):
            cmd = cmd.benchmark
        name = type(cmd).__name__
        if name in BENCH_RUNNERS:               # benchmarks record the command that reproduces them
            return BENCH_RUNNERS[name](cmd, "nashpref " + shlex.join(argv))
        return RUNNERS[name](cmd)
    except BrokenPipeError:                     # output piped into e.g. `head`: not an error of ours
        sys.stderr.close()
        return 0
    except (GameError, OSError) as err:        # OSError: --out cannot be written
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
