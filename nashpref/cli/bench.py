"""`nashpref bench tabular` and `nashpref bench llm`: the benchmarks against iterative DPO."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Callable, Union

import tyro

from nashpref.benchmarks.llm.config import LLMBenchConfig
from nashpref.benchmarks.llm.run import run_bench_llm
from nashpref.benchmarks.tabular.race import TabularBenchConfig, run_bench_tabular
from nashpref.cli.train import quiet_library_progress


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


BENCH_RUNNERS: dict[str, Callable] = {"TabularBenchConfig": run_bench_tabular_command,
                                      "LLMBenchConfig": run_bench_llm_command}
BENCH_COMMANDS: dict[str, type] = {"tabular": TabularBenchConfig, "llm": LLMBenchConfig}
