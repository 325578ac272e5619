"""Recorded behaviour of `nashpref train` and `nashpref solve --mode sampled`, to keep a refactor honest.

``record(tiny_dir, workdir)`` runs, through the command line (``nashpref.cli.main``), a 3-iteration
``nashpref train`` per registered solver on the tiny model (hf sampler, fixed seed, small sizes) and a short
sampled tabular solve per solver, and returns per run: the metrics rows without timing fields, every preference
query of every round, and per-tensor statistics of the final weights (sum, L2 norm and a dot product with a
fixed pseudo-random vector, all in float64). ``tests/test_behaviour.py`` compares a fresh recording with the
committed one in ``tests/data/behaviour.json``; ``python scripts/record_behaviour.py`` rewrites that file. Both
run with the same portable CPU kernels (PORTABLE_KERNELS), so any x86-64 machine reproduces the recording.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ITERATIONS = 3
PROMPTS = ["describe the red cat", "tell me about a robot", "what is the river like?",
           "write one line about the warm star", "say something about a dark forest", "describe the golden ship",
           "tell me about a bird", "what is the city like?"]
TRAIN_OPTIONS = ["--sampler", "hf", "--iterations", str(ITERATIONS), "--heldout", "2", "--samples", "2",
                 "--eval-samples", "2", "--max-new-tokens", "8", "--lr", "1e-3", "--tau", "0.1", "--seed", "3"]
# --no-recommended: the generic settings and the papers' options, the losses as a language model trains them
SOLVE_OPTIONS = ["--game", "weighted-rps", "--mode", "sampled", "--iters", "20", "--samples", "4", "--seed", "3",
                 "--labels", "bernoulli", "--no-recommended"]
TINY_BUILD = {"seed": 0, "dialogues": 600, "policy_steps": 60, "reward_steps": 80}   # as tests/conftest_lm.py


def solvers() -> list[str]:
    from nashpref.solvers import REGISTRY

    return list(REGISTRY)


# Added to every row after the recording (which backend and which weights drew the samples; tested in
# tests/test_vllm_mixture.py): not part of the recorded behaviour.
PROVENANCE = ("samplers", "sample_weights", "round_weights", "trained_weights")


def without_timing(row: dict) -> dict:
    return {key: value for key, value in row.items() if not key.endswith("seconds") and key not in PROVENANCE}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tensor_statistics(tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per tensor: numel, sum, sum of |w|, L2 norm and ⟨w, r⟩ for r ~ N(0, 1) from a fixed seed (float64)."""
    stats = {}
    for name in sorted(tensors):
        w = tensors[name].detach().to(torch.float64).reshape(-1)
        r = torch.randn(w.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(w.numel()))
        stats[name] = {"numel": w.numel(), "sum": w.sum().item(), "abs_sum": w.abs().sum().item(),
                       "norm": w.norm().item(), "dot": (w * r).sum().item()}
    return stats


def run_cli(argv: list[str]) -> None:
    from nashpref.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"nashpref {' '.join(argv)} exited with {code}")


def record_train(tiny_dir: Path, workdir: Path, solver: str) -> dict:
    from safetensors.torch import load_file

    prompts = workdir / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    out = workdir / f"train-{solver}"
    run_cli(["train", "--policy", str(tiny_dir / "policy"), "--preference", f"reward:{tiny_dir / 'reward'}",
             "--prompts", str(prompts), "--solver", solver, "--out", str(out)] + TRAIN_OPTIONS)
    rounds = {path.stem: read_jsonl(path) for path in sorted((out / "rounds").glob("iteration-*.jsonl"))}
    return {"metrics": [without_timing(row) for row in read_jsonl(out / "metrics.jsonl")], "rounds": rounds,
            "weights": tensor_statistics(load_file(out / "final" / "model.safetensors"))}


def record_solve(workdir: Path, solver: str) -> dict:
    out = workdir / f"solve-{solver}"
    run_cli(["solve", "--solver", solver, "--out", str(out)] + SOLVE_OPTIONS)
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    return {"metrics": [without_timing(row) for row in read_jsonl(out / "metrics.jsonl")],
            "policies": result["policies"], "gap": result["gap"]}


# Float32 training (the tiny model's build, then each run) drifts apart by far more than one rounding between CPUs:
# torch picks AVX2 or AVX512 kernels and MKL picks a code path per CPU vendor (an AMD AVX512 machine missed an
# Intel recording by 4e-5 at the first iteration). So recordings run in a child process whose kernels are the same
# on every x86-64 CPU: torch's portable (non-vectorised) kernels, MKL's cross-processor reproducible mode (CNR
# "COMPATIBLE"), oneDNN limited to SSE4.1, one thread. They must be set before torch starts, hence a child.
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "record_behaviour.py"


def record(tiny_dir: Path, workdir: Path, names: list[str] | None = None) -> dict:
    """The recording of ``names`` (default: every registered solver), in this process: scripts/record_behaviour.py
    calls it with PORTABLE_KERNELS and one torch thread in place (see record_portably)."""
    names = solvers() if names is None else names
    return {"train_options": TRAIN_OPTIONS, "solve_options": SOLVE_OPTIONS, "tiny_build": TINY_BUILD,
            "kernels": {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        **{key: os.environ.get(key) for key in PORTABLE_KERNELS}},
            "train": {name: record_train(tiny_dir, workdir, name) for name in names},
            "solve": {name: record_solve(workdir, name) for name in names}}


def record_portably(out: Path, names: list[str] | None = None) -> dict:
    """Build the tiny model and record ``names`` in a child process with PORTABLE_KERNELS; returns the recording
    (also written to ``out``)."""
    command = [sys.executable, str(SCRIPT), "--out", str(out)] + (["--solvers", *names] if names else [])
    env = {**os.environ, **PORTABLE_KERNELS, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text(encoding="utf-8"))
