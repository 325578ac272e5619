"""Start-up time of the command line, side by side in one run (medians of alternating repetitions).

    python scripts/startup.py --out bench/startup [--repeats 5] [--train]

* ``import torch``: the floor every command pays;
* ``nashpref equilibrium --game weighted-rps``: the whole command (target: within 1 s of the floor);
* with ``--train``: ``nashpref train`` on the tiny model with the vLLM sampler on CPU, one iteration: the wall
  time minus the iteration's own seconds (metrics.jsonl) is the time before iteration 1 plus the final save
  (target: <= 10 s).

Results go to OUT/README.md and OUT/results.json with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "startup")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="also time `nashpref train` with vLLM (minutes)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    cases = {"python -c 'import torch'": [sys.executable, "-c", "import torch"],
             "python -c 'import nashpref.cli'": [sys.executable, "-c", "import nashpref.cli"]}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    samples["nashpref equilibrium --game weighted-rps"] = []
    for r in range(args.repeats):           # alternating, so that load on the machine hits every case alike
        for name, argv in cases.items():
            samples[name].append(timed(argv, env))
        eq = [sys.executable, "-m", "nashpref", "equilibrium", "--game", "weighted-rps", "--out", str(work / f"eq{r}")]
        samples["nashpref equilibrium --game weighted-rps"].append(timed(eq, env))
    results = {name: {"median_seconds": statistics.median(v), "seconds": v} for name, v in samples.items()}
    floor = results["python -c 'import torch'"]["median_seconds"]
    results["equilibrium_over_torch_seconds"] = (
        results["nashpref equilibrium --game weighted-rps"]["median_seconds"] - floor)
    if args.train:
        results["train"] = time_train(work, env)
    command = "python scripts/startup.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results["command"] = command
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_average": os.getloadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "README.md").write_text(report(results))
    print(report(results))


def time_train(work: Path, env: dict) -> dict:
    sys.path.insert(0, str(REPO))
    from nashpref.lm.tiny import make_tiny_model

    tiny = work / "tiny"
    make_tiny_model(tiny, seed=0, dialogues=300, policy_steps=30, reward_steps=30)
    out = work / "train"
    argv = [sys.executable, "-m", "nashpref", "train", "--policy", str(tiny / "policy"), "--preference",
            f"reward:{tiny / 'reward'}", "--prompts", str(tiny / "prompts.jsonl"), "--solver", "sppo",
            "--sampler", "vllm", "--iterations", "1", "--samples", "2", "--max-new-tokens", "16", "--out", str(out)]
    wall = timed(argv, dict(env, OMP_NUM_THREADS="2"))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return {"wall_seconds": wall, "iteration_seconds": row["seconds"], "before_iteration_1_and_save_seconds":
            wall - row["seconds"], "command": shlex.join(argv[3:]).replace(str(work), "WORK")}


def report(results: dict) -> str:
    lines = ["# Start-up time", "", f"Command: `{results['command']}`", "",
             f"Machine: Python {results['machine']['python']}, {results['machine']['cpus']} CPUs, load average "
             f"{', '.join(f'{x:.1f}' for x in results['machine']['load_average'])} (a shared machine: absolute "
             "times move with the load; the difference is the figure).", "",
             "| what | median seconds | runs |", "|---|---|---|"]
    for name, value in results.items():
        if isinstance(value, dict) and "median_seconds" in value:
            lines.append(f"| `{name}` | {value['median_seconds']:.2f} | "
                         f"{', '.join(f'{s:.2f}' for s in value['seconds'])} |")
    lines += ["", f"`nashpref equilibrium` over `import torch`: **{results['equilibrium_over_torch_seconds']:.2f} s** "
              "(target: within 1 s)."]
    if "train" in results:
        t = results["train"]
        lines += ["", f"`nashpref train` (tiny model, vLLM sampler on CPU, 1 iteration): wall {t['wall_seconds']:.1f} s"
                  ", "
                  f"of which the iteration {t['iteration_seconds']:.1f} s; before iteration 1 plus the final save: "
                  f"**{t['before_iteration_1_and_save_seconds']:.1f} s** (target: <= 10 s).", "",
                  f"Train command: `nashpref {t['command']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
