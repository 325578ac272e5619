"""`nashpref equilibrium`: the exact equilibrium of a game, written to DIR/equilibrium.json."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import tyro

from nashpref.cli.tables import policy_table
from nashpref.cli.threads import threads_for
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.gamefile import load_game
from nashpref.core.results import equilibrium_result
from nashpref.io import check_output_dir, staged_output, write_json
from nashpref.quiet import progress


@dataclasses.dataclass
class Equilibrium:
    """Compute the exact equilibrium π* of a game (τ > 0: extragradient + Newton to gap ≤ 1e-12; τ = 0: interior
    point method finished exactly on the support, certified gap ≤ 1e-12, HiGHS linear program as the fallback)
    and write DIR/equilibrium.json."""

    game: str
    """Game: a path to a .toml file, or the NAME of a shipped game (see `nashpref games`)."""
    out: Path
    """Output directory DIR; created only when everything succeeded."""
    tau: Annotated[float | None, tyro.conf.arg(metavar="X")] = None
    """KL strength τ ≥ 0; overrides the game file's default."""


def run_equilibrium(cmd: Equilibrium) -> int:
    check_output_dir(cmd.out)
    game = load_game(cmd.game, cmd.tau)
    threads_for(game)
    start = time.perf_counter()
    if game.tau > 0:          # a second at N = 2000: no progress bar
        eq = solve_equilibrium(game)
    else:
        with progress(game.num_contexts, "equilibrium τ=0") as bar:
            def step(context: int, iteration: int, mu: float) -> None:
                bar.update(context - bar.n)
                bar.set_postfix_str(f"interior point step {iteration}, μ={mu:.1e}")

            eq = solve_equilibrium(game, on_step=step)
    result = equilibrium_result(game, eq, time.perf_counter() - start)
    with staged_output(cmd.out) as staging:
        write_json(staging / "equilibrium.json", result)
    print(policy_table(game, eq.policy, eq.gap))
    print(f"{eq.method}, {result['seconds']:.3g} s; wrote {cmd.out / 'equilibrium.json'}")
    return 0
