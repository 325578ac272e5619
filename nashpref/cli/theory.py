"""`nashpref theory {explore,pessimism,payoff,recovery,maxmin}`: the theory experiments on linear contextual bandits
(nashpref.theory), each writing results.json, README.md (its table) and, where it helps, a plot to --out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Union

import tyro

from nashpref.cli.solve import progress
from nashpref.io import atomic_write, check_output_dir, staged_output, write_json
from nashpref.theory import experiments as ex


@dataclasses.dataclass(kw_only=True)
class Explore(ex.ExploreSettings):
    """Online iterative RLHF with exploration (main policy vs the enhancer) against no exploration (μ vs μ) and
    iterative DPO (main vs main) on random linear games: the exact score per round, mean and 95% interval."""

    out: Path
    """Output directory; created only when everything succeeded."""


@dataclasses.dataclass(kw_only=True)
class Pessimism(ex.PessimismSettings):
    """Greedy MLE vs the covariance-bonus LCB and the bootstrap-ensemble minimum on narrow offline data: true
    values of the Gibbs policies over seeds."""

    out: Path
    """Output directory; created only when everything succeeded."""


@dataclasses.dataclass(kw_only=True)
class Payoff(ex.PayoffSettings):
    """The log-odds payoff's equilibrium against the probability payoff's, per game (exact)."""

    out: Path
    """Output directory; created only when everything succeeded."""


@dataclasses.dataclass(kw_only=True)
class Recovery(ex.RecoverySettings):
    """Parameter recovery of the BT and skew-bilinear MLEs as the data grows (RMSE and its fitted slope)."""

    out: Path
    """Output directory; created only when everything succeeded."""


@dataclasses.dataclass(kw_only=True)
class Maxmin(ex.MaxminSettings):
    """Max-min alignment over user groups learnt by EM from unlabelled users' comparisons, against one pooled BT
    reward: the true utility of the worst-off group."""

    out: Path
    """Output directory; created only when everything succeeded."""


def _described(cls, name: str):
    return Annotated[cls, tyro.conf.subcommand(name, description=" ".join(cls.__doc__.split()))]


TheoryCommand = Union[_described(Explore, "explore"), _described(Pessimism, "pessimism"),
                      _described(Payoff, "payoff"), _described(Recovery, "recovery"),
                      _described(Maxmin, "maxmin")]


@dataclasses.dataclass
class Theory:
    """Experiments from the theory of RLHF as a KL-regularised contextual bandit / preference game, checked exactly
    on linear contextual bandits (see docs/theory.md)."""

    experiment: tyro.conf.OmitSubcommandPrefixes[TheoryCommand]
    """Which experiment."""


RUNS = {Explore: (ex.run_explore, lambda c: c.seeds * 3), Pessimism: (ex.run_pessimism, lambda c: c.seeds),
        Payoff: (ex.run_payoff, lambda c: len(c.games)), Recovery: (ex.run_recovery, lambda c: 2 * len(c.sizes)),
        Maxmin: (ex.run_maxmin, lambda c: c.seeds)}


def run_theory(cmd: Theory) -> int:
    experiment = cmd.experiment
    check_output_dir(experiment.out)
    run, total = RUNS[type(experiment)]
    with progress(total(experiment), f"theory {type(experiment).__name__.lower()}") as bar:
        summary, files = run(experiment, tick=bar.update)
    with staged_output(experiment.out) as staging:
        for name, content in files.items():
            if isinstance(content, dict):
                write_json(staging / name, content)
            elif isinstance(content, str):
                atomic_write(staging / name, content)
            else:
                content(staging / name)
    print(summary["table"])
    print(f"wrote {experiment.out}")
    return 0
