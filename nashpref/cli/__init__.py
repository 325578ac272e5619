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
import os
import shlex
import sys
from pathlib import Path
from typing import Callable, Sequence

import tyro

from nashpref import quiet
from nashpref.cli.config_file import GlobalOptions, config_flags, print_config, save_config, split_globals, to_toml
from nashpref.cli.tyro_errors import summarise_tyro_error
from nashpref.errors import EXIT_BAD_INPUT, NashprefError, UsageError, one_line
from nashpref.signals import Interrupted, interruptible
from nashpref.tracking import check_available

DESCRIPTION = ("nashpref: Nash learning from human feedback. Exact equilibria of preference games, every solver's "
               "exact dynamics, and sampled training with the per-sample losses that train language models. "
               "Every command also takes --config FILE (TOML: its options; typed flags override), --print-config "
               "(print the effective options as such a file and stop), --report-to none|tensorboard|wandb and "
               "--verbose (the libraries' own logs).")


COMMANDS = ("equilibrium", "solve", "games", "train", "fit-preference", "bench", "theory")


def command(name: str) -> type:
    """The dataclass of one subcommand, importing only what it needs: `nashpref equilibrium` starts without
    transformers, vLLM, datasets, matplotlib or the benchmark code."""
    if name == "equilibrium":
        from nashpref.cli.equilibrium import Equilibrium
        return Equilibrium
    if name == "solve":
        from nashpref.cli.solve import build_solve_command
        return build_solve_command()
    if name == "games":
        from nashpref.cli.games import Games
        return Games
    if name == "train":
        from nashpref.cli.train import build_train_command
        return build_train_command()
    if name == "fit-preference":
        from nashpref.preferences.fit import FitPreferenceConfig
        return FitPreferenceConfig
    if name == "bench":
        from nashpref.cli.bench import Bench
        return Bench
    if name == "theory":
        from nashpref.cli.theory import Theory
        return Theory
    raise KeyError(name)


def commands(names: Sequence[str] = COMMANDS) -> dict[str, type]:
    return {name: command(name) for name in names}


def runner(cmd) -> Callable:
    """The function that runs a parsed command."""
    name = type(cmd).__name__
    if name == "Equilibrium":
        from nashpref.cli.equilibrium import run_equilibrium
        return run_equilibrium
    if name == "Solve":
        from nashpref.cli.solve import run_solve
        return run_solve
    if name == "Games":
        from nashpref.cli.games import run_games
        return run_games
    if name == "FitPreferenceConfig":
        from nashpref.cli.train import run_fit_preference_command
        return run_fit_preference_command
    if name == "Theory":
        from nashpref.cli.theory import run_theory
        return run_theory
    raise KeyError(name)


def parse(argv: Sequence[str]):
    """The command object; tyro's multi-line error boxes become one UsageError line (--help exits normally)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            named = [argv[0]] if argv and argv[0] in COMMANDS else COMMANDS    # build only the command run
            cmd = tyro.extras.subcommand_cli_from_dict(commands(named), prog="nashpref", args=list(argv),
                                                       description=DESCRIPTION)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise UsageError(summarise_tyro_error(captured.getvalue())) from None
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())
    return cmd


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


def say(line: str) -> None:
    """``line`` on stderr in one write: under torchrun every rank may report the same error at once, and lines
    written in pieces would interleave (one write of under PIPE_BUF bytes to a pipe is atomic)."""
    sys.stderr.flush()
    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode("utf-8", "replace"))
    except (AttributeError, OSError, ValueError):     # a stderr without a descriptor (captured in tests)
        print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 128 + N after signal N). Without ``argv`` (the
    ``nashpref`` program) the process ends here (:func:`quick_exit`)."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    parsed: list = []
    try:
        with interruptible():
            status = run(argv, parsed)
    except Interrupted as stop:
        say(f"interrupted by {stop.name}: {resume_hint(parsed[0] if parsed else None, argv)}")
        status = stop.exit_status
    if program:
        quick_exit(status)
    return status


def quick_exit(status: int) -> None:
    """End the process now that the work is done and written. The interpreter's own exit runs full garbage
    collections over every object of torch, transformers and vLLM, module after module, after vLLM's engine
    shutdown has unfrozen the heap: 5-7 s after a vLLM run on this machine (bench/startup); under torchrun it
    also destroys gloo's objects in whatever order finalization reaches them, which can abort a finished rank.
    Here the exit handlers run (logging, vLLM's shutdown, temporary directories), the streams are flushed and the
    process exits without the collections. A rank under torchrun that failed ends at once, without the exit
    handlers (its peers are gone or failing too). A process whose non-daemon thread still runs exits the
    ordinary way."""
    import atexit
    import os
    import threading

    failed_rank = "RANK" in os.environ and status != 0
    if not failed_rank and any(t.is_alive() and not t.daemon for t in threading.enumerate()
                               if t is not threading.main_thread()):
        return
    if not failed_rank:
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def command_class(argv: Sequence[str]) -> type | None:
    """The dataclass of the subcommand named at the start of ``argv`` (None if there is none)."""
    if not argv or argv[0] not in COMMANDS:
        return None
    if argv[0] == "bench":
        from nashpref.cli.bench import BENCH_COMMANDS
        return BENCH_COMMANDS.get(argv[1]) if len(argv) > 1 else None
    return command(argv[0])


def with_config(argv: list[str], options: GlobalOptions) -> list[str]:
    """argv with the config file's values as flags right after the subcommand (typed flags come later and
    win)."""
    if options.config is None:
        return argv
    cls = command_class(argv)
    if cls is None:
        raise UsageError("--config: name the command first, e.g. nashpref solve --config FILE")
    depth = 2 if argv[0] == "bench" else 1
    return argv[:depth] + config_flags(options.config, cls, options) + argv[depth:]


def run(argv: Sequence[str], parsed: list) -> int:
    """Parse and run one command (``parsed`` receives it, for the interrupt message)."""
    try:
        argv, options = split_globals(argv)
        argv = with_config(argv, options)
        quiet.configure(options.verbose)
        try:
            cmd = parse(argv)
        except SystemExit as stop:              # --help
            return stop.code or 0
        if type(cmd).__name__ == "Bench":
            cmd = cmd.benchmark
        parsed.append(cmd)
        text = to_toml(cmd, {"report-to": options.report_to} if options.report_to != "none" else None)
        if options.print_config:
            print_config(text)
            return 0
        check_available(options.report_to)
        name = type(cmd).__name__
        if name in ("TabularBenchConfig", "LLMBenchConfig"):    # benchmarks record the command behind them
            from nashpref.cli.bench import BENCH_RUNNERS
            status = BENCH_RUNNERS[name](cmd, "nashpref " + shlex.join(argv))
        elif name == "Train":
            from nashpref.cli.train import run_train_command
            status = run_train_command(cmd, report_to=options.report_to)
        else:
            status = runner(cmd)(cmd)
            if options.report_to != "none" and status == 0:
                report_files(options.report_to, cmd)
        if status == 0:
            save_config(cmd, text)
        return status
    except BrokenPipeError:                     # output piped into e.g. `head`: not an error of ours
        sys.stderr.close()
        return 0
    except (NashprefError, OSError) as err:     # OSError: --out cannot be written
        say(one_line(err))
        return EXIT_BAD_INPUT


def report_files(kind: str, cmd) -> None:
    """Commands that write OUT/metrics.jsonl (or OUT/<solver>/metrics.jsonl) at the end: every row to the
    tracker, one step per iteration, under the solver's name."""
    from nashpref.io import read_jsonl
    from nashpref.tracking import make_tracker

    out = getattr(cmd, "out", None)
    if out is None:
        return
    files = sorted(Path(out).glob("*/metrics.jsonl")) + sorted(Path(out).glob("metrics.jsonl"))
    tracker = make_tracker(kind, Path(out), config=None, name=Path(out).name)
    try:
        for file in files:
            prefix = file.parent.name if file.parent != Path(out) else getattr(cmd, "solver", "")
            for row in read_jsonl(file):
                tracker.log(row, int(row.get("iteration", 0)), prefix)
    finally:
        tracker.close()

if __name__ == "__main__":
    sys.exit(main())
