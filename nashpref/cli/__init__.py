"""The ``nashpref`` command line (tyro): one module per subcommand — ``equilibrium``, ``solve``, ``games``,
``train``, ``fit-preference``, ``bench tabular`` / ``bench llm`` and ``theory …``.

The solver choices and every solver's own options (``--<solver>.<field>``) are built from
``nashpref.solvers.REGISTRY``; no command knows a solver by name. Bad input of any kind (``nashpref.errors``) ends
here, and only here, in one line ``error: …`` on stderr and exit status 2, with nothing written to ``--out``:
every result is computed in memory first and the output directory appears only at the end
(:func:`nashpref.io.staged_output`).
"""

import contextlib
import io
import shlex
import sys
from typing import Callable, Sequence

import tyro

from nashpref.cli.bench import BENCH_RUNNERS, Bench
from nashpref.cli.equilibrium import Equilibrium, run_equilibrium
from nashpref.cli.games import Games, run_games
from nashpref.cli.solve import build_solve_command, run_solve
from nashpref.cli.theory import Theory, run_theory
from nashpref.cli.train import build_train_command, run_fit_preference_command, run_train_command
from nashpref.cli.tyro_errors import summarise_tyro_error
from nashpref.errors import EXIT_BAD_INPUT, NashprefError, UsageError, one_line
from nashpref.signals import Interrupted, interruptible
from nashpref.preferences.fit import FitPreferenceConfig

DESCRIPTION = ("nashpref: Nash learning from human feedback. Exact equilibria of preference games, every solver's "
               "exact dynamics, and sampled training with the per-sample losses that train language models.")


def commands() -> dict[str, type]:
    return {"equilibrium": Equilibrium, "solve": build_solve_command(), "games": Games,
            "train": build_train_command(), "fit-preference": FitPreferenceConfig, "bench": Bench,
            "theory": Theory}


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


RUNNERS: dict[str, Callable] = {"Equilibrium": run_equilibrium, "Solve": run_solve, "Games": run_games,
                                "Train": run_train_command, "FitPreferenceConfig": run_fit_preference_command, "Theory": run_theory}


def resume_hint(cmd, argv: Sequence[str]) -> str:
    """How to go on after an interrupt: commands that checkpoint resume; the others wrote nothing."""
    out = getattr(cmd, "out", None)
    if hasattr(cmd, "resume"):
        again = list(argv) if "--resume" in argv else [*argv, "--resume"]
        return f"{out} keeps the last complete checkpoint; continue with: nashpref {shlex.join(again)}"
    if type(cmd).__name__ == "LLMBenchConfig":
        return f"{out} keeps the finished runs; the same command continues where this one stopped"
    where = f" to {out}" if out is not None else ""
    return f"nothing was written{where}; run the command again"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 128 + N after signal N)."""
    argv = sys.argv[1:] if argv is None else argv
    parsed: list = []
    try:
        with interruptible():
            return run(argv, parsed)
    except Interrupted as stop:
        print(f"interrupted by {stop.name}: {resume_hint(parsed[0] if parsed else None, argv)}", file=sys.stderr)
        return stop.exit_status


def run(argv: Sequence[str], parsed: list) -> int:
    """Parse and run one command (``parsed`` receives it, for the interrupt message)."""
    try:
        try:
            cmd = parse(argv)
        except SystemExit as stop:              # --help
            return stop.code or 0
        if isinstance(cmd, Bench):
            cmd = cmd.benchmark
        parsed.append(cmd)
        name = type(cmd).__name__
        if name in BENCH_RUNNERS:               # benchmarks record the command that reproduces them
            return BENCH_RUNNERS[name](cmd, "nashpref " + shlex.join(argv))
        return RUNNERS[name](cmd)
    except BrokenPipeError:                     # output piped into e.g. `head`: not an error of ours
        sys.stderr.close()
        return 0
    except (NashprefError, OSError) as err:     # OSError: --out cannot be written
        print(one_line(err), file=sys.stderr)
        return EXIT_BAD_INPUT

if __name__ == "__main__":
    sys.exit(main())
