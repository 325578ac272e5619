"""`nashpref games`: the shipped games as a table."""

from __future__ import annotations

import dataclasses
import sys

from nashpref.cli.tables import shorten, table
from nashpref.core.gamefile import games_dir, list_games
from nashpref.errors import UsageError

DESCRIPTION_WIDTH = 80          # `nashpref games` cuts descriptions to this (unless --full)


@dataclasses.dataclass
class Games:
    """List the shipped games (the .toml files of the games directory, or of $NASHPREF_GAMES)."""

    full: bool = False
    """Print whole descriptions (by default each is cut to fit one line of the table)."""


def run_games(cmd: Games) -> int:
    broken: list[str] = []
    infos = list_games(broken)
    for message in broken:          # one bad file must not hide the others
        print(f"warning: skipped {message}", file=sys.stderr)
    if not infos:
        raise UsageError(f"no loadable game files (*.toml) in {games_dir()}")
    print(table(["name", "contexts", "actions", "tau", "description"],
                [[g.name, g.num_contexts, g.num_actions, f"{g.tau:g}", g.description if cmd.full else
                  shorten(g.description, DESCRIPTION_WIDTH)] for g in infos]))
    return 0
