"""Start-up time of the command line, side by side in one run (medians of alternating repetitions).

    python scripts/startup.py --out bench/startup [--repeats 5] [--train] [--baseline REV]

* ``import torch``: the floor every command pays;
* ``nashpref equilibrium --game weighted-rps``: the whole command (target: within 1 s of the floor);
* with ``--train``: ``nashpref train`` on the tiny model with the vLLM sampler on CPU, one iteration. From the
  process start to iteration 1 is the start-up (target: <= 10 s): the iteration ends when its round file is
  written, and metrics.jsonl says how long it took. After it come the final save and the exit. CPU seconds
  (user + system, read from /proc every 0.1 s) are given too: on a shared machine they move far less with the
  load than wall time does. One OpenMP thread (OMP_NUM_THREADS=1).
* with ``--baseline REV``: the same train command run from the source tree of git revision REV (same virtual
  environment), alternating with this tree's, so that both see the same load.

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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str], env: dict, cwd: Path = REPO) -> tuple[float, float, float, list[tuple[float, float]]]:
    """(start time, wall seconds, CPU seconds of the process and its children, [(time, CPU seconds so far of the
    process itself)] sampled every 0.1 s) of one run."""
    begin = time.time()
    start = time.perf_counter()
    # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH: run in the tree timed
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples, tick = [], os.sysconf("SC_CLK_TCK")
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    reader.start()
    while True:
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            samples.append((time.time(), (int(fields[11]) + int(fields[12])) / tick))   # utime, stime
        except (OSError, IndexError, ValueError):
            pass
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        message = b"".join(stderr).decode(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"{shlex.join(argv)} failed: {message}")
    return begin, seconds, usage.ru_utime + usage.ru_stime, samples


def cpu_at(samples: list[tuple[float, float]], when: float) -> float:
    """CPU seconds the process had used by time ``when`` (the last sample before it)."""
    before = [cpu for at, cpu in samples if at <= when]
    return before[-1] if before else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "startup")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="also time `nashpref train` with vLLM (minutes)")
    parser.add_argument("--baseline", help="git revision whose tree is timed alongside (with --train)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    cases = {"python -c 'import torch'": [sys.executable, "-c", "import torch"],
             "python -c 'import nashpref.cli'": [sys.executable, "-c", "import nashpref.cli"]}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    samples["nashpref equilibrium --game weighted-rps"] = []
    for r in range(args.repeats):           # alternating, so that load on the machine hits every case alike
        for name, argv in cases.items():
            samples[name].append(timed(argv, env)[1])
        eq = [sys.executable, "-m", "nashpref", "equilibrium", "--game", "weighted-rps", "--out", str(work / f"eq{r}")]
        samples["nashpref equilibrium --game weighted-rps"].append(timed(eq, env)[1])
    results = {name: {"median_seconds": statistics.median(v), "seconds": v} for name, v in samples.items()}
    floor = results["python -c 'import torch'"]["median_seconds"]
    results["equilibrium_over_torch_seconds"] = (
        results["nashpref equilibrium --game weighted-rps"]["median_seconds"] - floor)
    if args.train:
        results["train"] = time_train(work, env, args.repeats, args.baseline)
    command = "python scripts/startup.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results["command"] = command
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_average": os.getloadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "README.md").write_text(report(results))
    print(report(results))


def time_train(work: Path, env: dict, repeats: int, baseline: str | None) -> dict:
    sys.path.insert(0, str(REPO))
    from nashpref.lm.tiny import make_tiny_model

    tiny = work / "tiny"
    make_tiny_model(tiny, seed=0, dialogues=300, policy_steps=30, reward_steps=30)
    trees = {"this tree": REPO}
    if baseline is not None:
        tree = work / "baseline"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", baseline], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        trees[f"baseline {baseline}"] = tree
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(repeats):
        for name, tree in trees.items():
            out = work / f"train-{len(runs[name])}-{tree.name}"
            argv = train_argv(tiny, out)
            begin, wall, cpu, samples = timed(argv, dict(env, PYTHONPATH=str(tree), OMP_NUM_THREADS="1"), tree)
            row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
            ended = (out / "rounds" / "iteration-0001.jsonl").stat().st_mtime
            runs[name].append({"wall_seconds": wall, "cpu_seconds": cpu, "iteration_seconds": row["seconds"],
                               "before_iteration_1_seconds": ended - row["seconds"] - begin,
                               "before_iteration_1_cpu_seconds": cpu_at(samples, ended - row["seconds"]),
                               "after_iteration_1_seconds": begin + wall - ended,
                               "after_iteration_1_cpu_seconds": cpu - cpu_at(samples, ended)})
    keys = ("before_iteration_1_seconds", "before_iteration_1_cpu_seconds", "after_iteration_1_seconds",
            "after_iteration_1_cpu_seconds", "iteration_seconds", "wall_seconds", "cpu_seconds")
    summary = {name: {key: statistics.median(run[key] for run in rs) for key in keys} | {"runs": rs}
               for name, rs in runs.items()}
    return {"trees": summary, "command": shlex.join(train_argv(Path("WORK/tiny"), Path("WORK/train"))[3:])}


def train_argv(tiny: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "nashpref", "train", "--policy", str(tiny / "policy"), "--preference",
            f"reward:{tiny / 'reward'}", "--prompts", str(tiny / "prompts.jsonl"), "--solver", "sppo",
            "--sampler", "vllm", "--iterations", "1", "--samples", "2", "--max-new-tokens", "16", "--out", str(out)]


def report(results: dict) -> str:
    lines = ["# Start-up time", "", f"Command: `{results['command']}`", "",
             f"Machine: Python {results['machine']['python']}, {results['machine']['cpus']} CPUs, load average "
             f"{', '.join(f'{x:.1f}' for x in results['machine']['load_average'])} at the end (a shared machine: "
             "absolute times move with the load; the differences and the CPU seconds are the figures).", "",
             "| what | median seconds | runs |", "|---|---|---|"]
    for name, value in results.items():
        if isinstance(value, dict) and "median_seconds" in value:
            lines.append(f"| `{name}` | {value['median_seconds']:.2f} | "
                         f"{', '.join(f'{s:.2f}' for s in value['seconds'])} |")
    lines += ["", f"`nashpref equilibrium` over `import torch`: **{results['equilibrium_over_torch_seconds']:.2f} s** "
              "(target: within 1 s)."]
    if "train" in results:
        t = results["train"]
        lines += ["", "`nashpref train`, tiny model, vLLM sampler on CPU, one iteration, medians (target: start-up "
                  "<= 10 s); CPU seconds are user + system:", "",
                  "| tree | start-up: wall | start-up: CPU | iteration | after it (save, exit): wall | after it: CPU | "
                  "whole run: wall | whole run: CPU |", "|---|---|---|---|---|---|---|---|"]
        for name, s in t["trees"].items():
            lines.append(f"| {name} | **{s['before_iteration_1_seconds']:.1f}** | "
                         f"**{s['before_iteration_1_cpu_seconds']:.1f}** | {s['iteration_seconds']:.1f} | "
                         f"{s['after_iteration_1_seconds']:.1f} | {s['after_iteration_1_cpu_seconds']:.1f} | "
                         f"{s['wall_seconds']:.1f} | {s['cpu_seconds']:.1f} |")
        lines += ["", f"Train command: `nashpref {t['command']}` (OMP_NUM_THREADS=1: with two threads on a loaded "
                  "2-core machine the OpenMP threads' spinning swamps both the iteration and the CPU figures)", "",
                  "Phase by phase: [where-the-time-goes.md](where-the-time-goes.md)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
