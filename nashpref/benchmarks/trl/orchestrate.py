"""``run``: every contender as a subprocess in its own venv, round robin over seeds; then TRL's vLLM colocate
attempt, ``check-mixture`` and ``evaluate``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from nashpref.benchmarks.trl.plan import (METHODS, OUR_VENV, ROOT, SCRIPT, error_line, iteration_plan, our_command,
                                          read_jsonl, round_robin)


def read_setup(setup: Path, preference: str | None) -> dict:
    """Paths and the oracle spec of a setup directory (policy/, prompts-train.jsonl, prompts-heldout.jsonl,
    optional setup.json whose "preference" names the oracle)."""
    for name in ("policy", "prompts-train.jsonl", "prompts-heldout.jsonl"):
        if not (setup / name).exists():
            fail(f"--setup {setup}: missing {name}")
    info = {}
    if (setup / "setup.json").is_file():
        info = json.loads((setup / "setup.json").read_text(encoding="utf-8"))
    spec = preference or info.get("preference") or "rule:raters"
    train = read_jsonl(setup / "prompts-train.jsonl")
    heldout = read_jsonl(setup / "prompts-heldout.jsonl")
    return {"preference": spec, "train": [row["prompt"] for row in train],
            "heldout": [row["prompt"] for row in heldout], "info": info}


def bench_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                "OMP_NUM_THREADS": str(threads), "VLLM_CPU_KVCACHE_SPACE": "1", "WANDB_DISABLED": "true",
                "PYTHONUNBUFFERED": "1"})
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def venv_python(venv: str) -> Path:
    return ROOT / venv / "bin" / "python"


def run_one(method: str, seed: int, args: argparse.Namespace, setup: dict, env: dict) -> dict:
    """Train one contender in its own venv; returns wall seconds (start-up included) and the exit status."""
    spec = METHODS[method]
    run_dir = Path(args.out) / "runs" / method / f"seed-{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if spec["side"] == "trl":
        command = [str(venv_python(spec["venv"])), str(SCRIPT), "trl-worker", "--method", method,
                   "--setup", str(args.setup), "--preference", setup["preference"], "--seed", str(seed),
                   "--iterations", str(args.iterations), "--prompts-per-iteration", str(args.prompts_per_iteration),
                   "--max-new-tokens", str(args.max_new_tokens), "--lr", repr(args.lr), "--run-dir", str(run_dir)]
    else:
        command = [str(ROOT / OUR_VENV / "bin" / "nashpref")] + our_command(
            method, Path(args.setup), setup["preference"], run_dir, seed, args.iterations,
            args.prompts_per_iteration, len(setup["train"]), args.max_new_tokens, args.lr)
    log = Path(args.out) / "logs" / f"{method}-seed-{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        try:
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False,
                                  timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = time.perf_counter() - start
    if spec["side"] == "ours" and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")      # resumable state; final/ is the result
    if (run_dir / "trl").is_dir() and not any((run_dir / "trl").iterdir()):
        (run_dir / "trl").rmdir()                   # TRL's output_dir, empty with save_strategy="no"
    result = {"method": method, "seed": seed, "wall_seconds": wall, "returncode": code,
              "command": command, "log": str(log.relative_to(args.out))}
    (run_dir).mkdir(parents=True, exist_ok=True)
    (run_dir / "wall.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    status = "ok" if code == 0 else f"FAILED ({code}), see {log}"
    print(f"  {method:26s} seed {seed}: {wall:6.1f} s wall  {status}", flush=True)
    return result


def try_vllm_colocate(args: argparse.Namespace, setup: dict, env: dict) -> dict:
    """TRL online DPO with use_vllm=True, vllm_mode='colocate' for two steps; on this CPU backend it is expected
    to fail at the first weight sync. Returns the exact error line."""
    run_dir = Path(args.out) / "runs" / "trl-online-dpo-vllm-colocate" / "seed-0"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    command = [str(venv_python(".venv-trl")), str(SCRIPT), "trl-worker", "--method",
               "trl-online-dpo", "--vllm-colocate", "--setup", str(args.setup), "--preference",
               setup["preference"], "--seed", "0", "--iterations", "2", "--prompts-per-iteration",
               str(args.prompts_per_iteration), "--max-new-tokens", str(args.max_new_tokens), "--lr", repr(args.lr),
               "--run-dir", str(run_dir)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout,
                              check=False)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = (exc.stdout or "") + (exc.stderr or "") if isinstance(exc.stdout, str) else "", "timeout"
    log = Path(args.out) / "logs" / "trl-online-dpo-vllm-colocate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("$ " + " ".join(command) + "\n" + output, encoding="utf-8")
    steps = 0
    if (run_dir / "timing.json").is_file():
        steps = len(json.loads((run_dir / "timing.json").read_text(encoding="utf-8"))["steps"])
    result = {"returncode": code, "error": error_line(output), "steps_completed": steps,
              "failed_in_weight_sync": "_move_model_to_vllm" in output,
              "seconds": time.perf_counter() - start, "log": str(log.relative_to(args.out)), "command": command}
    print(f"  vLLM colocate: exit {code}, {steps} steps, error: {result['error']}", flush=True)
    return result


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2: bad input, caught before anything is built or written."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its usage errors as one `error:` line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}")


def run(args: argparse.Namespace) -> None:
    methods = args.methods.split(",") if args.methods else list(METHODS)
    for method in methods:
        if method not in METHODS:
            fail(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")
        venv = METHODS[method].get("venv", OUR_VENV)
        if not venv_python(venv).exists():
            fail(f"{venv} is missing; build it with: bash scripts/setup_trl_venvs.sh")
    if not Path(args.setup).exists():          # deterministic: the same files as `nashpref bench llm` builds
        from nashpref.benchmarks.llm.setup import build_setup

        print(f"building the {args.size} setup in {args.setup}", flush=True)
        build_setup(args.setup, args.size, 0)
    setup = read_setup(Path(args.setup), args.preference)
    for method in methods:
        try:
            iteration_plan(METHODS[method]["algorithm"], args.prompts_per_iteration, args.iterations,
                           len(setup["train"]))
        except ValueError as err:
            fail(str(err))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = bench_env(args.threads)
    seeds = list(range(args.seeds))
    began = time.time()
    print(f"bench_trl: {len(methods)} methods x {len(seeds)} seeds, {args.iterations} iterations, "
          f"oracle {setup['preference']}", flush=True)
    runs = [run_one(method, seed, args, setup, env) for method, seed in round_robin(methods, seeds)]
    colocate = try_vllm_colocate(args, setup, env) if not args.skip_colocate else None
    if not args.skip_mixture_check:
        print("  geometric mixture: correctness and cost (TRL vs ours)", flush=True)
        command = [str(venv_python(".venv-trl-nashmd")), str(SCRIPT), "check-mixture", "--setup",
                   str(args.setup), "--preference", setup["preference"], "--max-new-tokens",
                   str(args.max_new_tokens), "--result", str(out / "mixture_check.json")]
        with open(out / "logs" / "check-mixture.log", "w", encoding="utf-8") as handle:
            subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True)
    training_wall = time.time() - began
    state = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
             "argv": sys.argv, "methods": methods, "seeds": seeds, "runs": runs, "vllm_colocate": colocate,
             "training_wall_seconds": training_wall, "preference": setup["preference"]}
    (out / "runs.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    print(f"training done in {training_wall:.0f} s; evaluating", flush=True)
    command = [str(venv_python(OUR_VENV)), str(SCRIPT), "evaluate", "--setup", str(args.setup),
               "--out", str(out), "--eval-samples", str(args.eval_samples), "--max-new-tokens",
               str(args.max_new_tokens), "--total-start", repr(began)]
    subprocess.run(command, cwd=ROOT, env=env, check=True)
