"""What the parts of the tabular benchmark suite share: side-by-side timing, a process with a timeout, random
games, the machine and the stamp every part records."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import queue
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import scipy
import torch

from nashpref.benchmarks.tabular.race import machine_info
from nashpref.core.game import PreferenceGame
from nashpref.core.gamefile import build_game


REPO = Path(__file__).resolve().parents[3]          # the repository: commands are recorded relative to it
PARTS = ("a", "b", "c", "d")
SCHEMA = 2          # bumped when a part's stored result changes shape; older stored parts are dropped


def side_by_side(contenders: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Run every contender once per round, ``repeats`` rounds, rotating who goes first; (seconds, last results)."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Any] = {}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            results[name] = contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times, results


def median(values: list[float]) -> float:
    return statistics.median(values)


def random_game(n: int, tau: float, seed: int = 0, contexts: int = 1) -> PreferenceGame:
    """The EGPO random game (games/egpo-random.toml's generator): P[i,j] ~ U(0,1) below the diagonal, μ =
    softmax(N(0,1) logits); ``contexts`` games with consecutive seeds."""
    data = {"name": f"random-n{n}", "tau": tau,
            "context": [{"repeat": contexts, "preference": {"kind": "random", "n": n, "seed": seed},
                         "reference": {"random-logits": {"seed": 1000 + seed, "scale": 1.0}}}]}
    return build_game(data, f"random game N={n}")


def run_with_timeout(target: Callable, args: tuple, timeout: float) -> tuple[Any, float | None]:
    """``target(*args)`` in a forked process; (result, seconds), or (None, None) when it gives no result within
    ``timeout`` seconds (it is then terminated). An exception in the child is raised here."""
    context = multiprocessing.get_context("fork")
    channel = context.Queue()
    process = context.Process(target=_timed_call, args=(channel, target, args))
    process.start()
    try:
        result, seconds, error = channel.get(timeout=timeout)   # read before join: a big result fills the pipe
    except queue.Empty:
        process.terminate()
        process.join()
        return None, None
    process.join()
    if error is not None:
        raise RuntimeError(f"{getattr(target, '__name__', target)}{args[:1]} failed in the child: {error}")
    return result, seconds


def _timed_call(channel, target, args) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        try:
            channel.put((target(*args), time.perf_counter() - start, None))
        except Exception as err:  # reported by the parent, which cannot see the child's traceback otherwise
            channel.put((None, None, repr(err)))


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def machine() -> dict:
    info = machine_info() | {"scipy": scipy.__version__}
    for module in ("cvxpy", "clarabel", "nashpy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:  # an optional benchmark dependency that is missing is reported, not fatal
            info[module] = "not installed"
    return info


def stamp(args) -> dict:
    return {"command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_before": list(os.getloadavg()), "quick": args.quick, "torch_threads": torch.get_num_threads(),
            "schema": SCHEMA}
