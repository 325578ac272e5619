"""What the CLI writes: result dictionaries, atomic JSON / JSONL files, and an output directory that appears
only once everything in it is complete (so bad input or a crash never leaves a half-written DIR)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from torch import Tensor

from nashpref.equilibrium import Equilibrium
from nashpref.exact import ExactRun
from nashpref.game import GameError, PreferenceGame
from nashpref.solvers.base import Solver


def jsonable(value: Any) -> Any:
    """Tensors become (nested) lists; non-finite floats become None so the file stays strict JSON."""
    if isinstance(value, Tensor):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return value


def _write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(jsonable(r), allow_nan=False, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- the output directory ----------------------------------------------------------------------------------------
def check_output_dir(out: Path) -> None:
    """Fail early (before any work) when DIR cannot be an output directory; creates nothing."""
    if out.exists() and not out.is_dir():
        raise GameError(f"--out {out}: exists and is not a directory")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise GameError(f"--out {out}: {parent} is not a directory")


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out``; on success move its contents into ``out``.

    If ``out`` does not exist it appears in one rename; if it exists, each file is replaced atomically (files of
    earlier runs that this run does not produce are kept). On an exception nothing reaches ``out``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)         # mkdtemp makes it private (0700); a published result should not be
    try:
        yield staging
        try:
            os.rename(staging, out)     # atomic when out is absent (or an empty directory)
        except OSError:
            _merge_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_into(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for entry in source.iterdir():
        dest = target / entry.name
        if entry.is_dir() and dest.is_dir():
            _merge_into(entry, dest)
        else:
            os.replace(entry, dest)


# ---- result dictionaries -----------------------------------------------------------------------------------------
def equilibrium_result(game: PreferenceGame, eq: Equilibrium, seconds: float) -> dict:
    """The contents of equilibrium.json."""
    return {
        "game": game.name,
        "tau": game.tau,
        "actions": list(game.actions) if game.actions else None,
        "policies": eq.policy,
        "gap": eq.gap,
        "gap_unregularized": game.gap(eq.policy, tau=0.0),
        "method": eq.method,
        "iterations": eq.iterations,
        "seconds": seconds,
    }


def solve_result(game: PreferenceGame, solver: Solver, run: ExactRun, *, mode: str, seed: int,
                 sampled: Any = None, equilibrium: Equilibrium | None = None) -> dict:
    """The contents of result.json: ``policies`` is the iterate the solver's guarantee is about (the average
    for average-iterate solvers, which then also get ``last_policies``); ``gap`` is exact, one per context."""
    result = {
        "game": game.name,
        "tau": game.tau,
        "solver": solver.name,
        "mode": mode,
        "iterations": run.iterations,
        "iterate": solver.iterate,
        "actions": list(game.actions) if game.actions else None,
        "policies": run.policies,
        "gap": game.gap(run.policies),
        "gap_unregularized": game.gap(run.policies, tau=0.0),
    }
    if solver.iterate == "average":
        result["last_policies"] = run.last_policies
        result["last_gap"] = game.gap(run.last_policies)
    if equilibrium is not None:
        result["equilibrium_gap"] = equilibrium.gap
        if game.tau > 0:    # π* is unique: how far the reported iterate is from it
            result["distance_to_equilibrium"] = (run.policies - equilibrium.policy).abs().sum(-1)
    result |= {"seconds": run.seconds, "seed": seed, "solver_config": solver.config}
    if sampled is not None:
        result["sampled"] = sampled
        if run.metrics and "queries" in run.metrics[-1]:
            result["queries"] = run.metrics[-1]["queries"]
    return result


def summary_row(result: dict) -> dict:
    """One solver's line of the final table and of summary.json (worst context for the gaps)."""
    row = {"solver": result["solver"], "iterate": result["iterate"], "iterations": result["iterations"],
           "gap": result["gap"].max().item(), "gap_unregularized": result["gap_unregularized"].max().item(),
           "seconds": result["seconds"]}
    if "queries" in result:
        row["queries"] = result["queries"]
    return row
