"""What every LLM benchmark preset does around its runs: the output folder, one training run per (method, seed)
with finished runs reused, and the time and load it started at."""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from nashpref.benchmarks.llm.config import LLMBenchConfig
from nashpref.io import read_jsonl


def run_dir(config: LLMBenchConfig, method: str, seed: int) -> Path:
    return config.out / "runs" / method / f"seed-{seed}"


def start_output(config: LLMBenchConfig) -> tuple[float, float, str]:
    """Create ``config.out`` (emptying its runs/ with ``--fresh``); the start time, the load average then and
    the UTC date, for the report."""
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    config.out.mkdir(parents=True, exist_ok=True)
    if config.fresh and (config.out / "runs").exists():
        shutil.rmtree(config.out / "runs")
    return started, load_before, date


def stale(run) -> bool:
    """Whether ``run.out`` holds a run trained with other options than ``run`` (another preset budget, solver
    options, setup): it must not be reused or resumed. Only the options a resumption may change are ignored
    (more iterations extend a run: the lr schedule is per iteration, so a run's first rows do not depend on them)."""
    from nashpref.lm.config import changed_options, describe_config, make_solver

    previous = run.out / "config.json"
    if not previous.is_file():
        return False
    return bool(changed_options(previous, describe_config(run, make_solver(run))))


def train_each(config: LLMBenchConfig, iterations: int, train_config: Callable, **train_options
               ) -> tuple[dict[tuple[str, int], list[dict]], list[str]]:
    """Train every (method, seed) with ``train_config(method, seed)``, methods interleaved within a seed so their
    timings are taken side by side. A run whose final/ exists with ``iterations`` rows is reused (``run_train``
    resumes a partial one from its checkpoint); a run made with other options (:func:`stale`) is deleted and trained
    again. Returns each run's metrics rows and the reused runs' names."""
    from tqdm import tqdm

    from nashpref.lm.trainer import run_train

    rows: dict[tuple[str, int], list[dict]] = {}
    reused = []
    jobs = [(m, s) for s in config.seeds for m in config.methods]
    with tqdm(total=len(jobs), desc="runs", unit="run", file=sys.stderr, disable=not config.progress or None,
              dynamic_ncols=True) as bar:
        for method, seed in jobs:
            run = train_config(method, seed)
            metrics = run_dir(config, method, seed) / "metrics.jsonl"
            if stale(run):
                shutil.rmtree(run.out)
            if (metrics.parent / "final").is_dir() and metrics.exists() and len(read_jsonl(metrics)) >= iterations:
                reused.append(f"{method}/seed-{seed}")
            else:
                bar.set_postfix_str(f"{method} seed {seed}")
                run_train(run, progress=config.progress, **train_options)
            rows[(method, seed)] = read_jsonl(metrics)
            bar.update()
    return rows, reused
