"""`nashpref train --backend fsdp` under torchrun (gloo, CPU) on the tiny model.

* Same maths at any world size: 2 iterations of every solver with 2 ranks give the same responses and
  preferences as 1 rank with the same global batch (5 training prompts: shares of 3 and 2, so each rank's loss
  weight matters), and final weights equal up to float rounding (relative to the size of the update);
* faults: ``kill -9`` of one rank ends the job within the timeout with a non-zero status, and ``--resume``
  (here with 1 rank: the checkpoint is resharded) ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest_lm import tiny_dir  # noqa: F401  (fixture)
from nashpref.io import read_jsonl
from nashpref.solvers import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["describe the red cat", "tell me about a robot", "what is the river like?",
           "write one line about the warm star", "say something about a dark forest", "describe the golden ship",
           "tell me about a bird", "what is the city like?"]
# float32 rounding through the longest reduction of a gradient (tokens × MLP width of the tiny model), relative
# to the update: two summation orders (one rank, or two ranks and a reduce-scatter) may differ by this much.
BOUND = 1e-3


def env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    return path


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def relative_gap(a: dict, b: dict, start: dict) -> float:
    diff = sum(((a[k] - b[k]) ** 2).sum() for k in start) ** 0.5
    update = sum(((b[k] - start[k]) ** 2).sum() for k in start) ** 0.5
    return float(diff / update)


@pytest.fixture(scope="module")
def runs(tiny_dir, prompts_file, tmp_path_factory) -> dict[int, Path]:
    out = {}
    for nproc in (1, 2):
        out[nproc] = tmp_path_factory.mktemp(f"ranks{nproc}")
        done = subprocess.run(torchrun(nproc, str(ROOT / "tests" / "dist_worker.py"), "solvers", str(out[nproc]),
                                       str(tiny_dir), str(prompts_file)),
                              env=env(), capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("solver", list(REGISTRY) + ["online-ipo-bernoulli"])
def test_two_ranks_train_like_one(solver, runs, tiny_dir):
    one, two = runs[1] / solver, runs[2] / solver
    for iteration in (1, 2):
        name = f"rounds/iteration-{iteration:04d}.jsonl"
        first, second = read_jsonl(one / name), read_jsonl(two / name)
        assert len(first) == len(second) > 0
        for a, b in zip(first, second):          # the same prompts, responses and preferences, in rank order
            assert (a["prompt"], a["a"], a["b"]) == (b["prompt"], b["a"], b["b"])
            assert a["preference"] == pytest.approx(b["preference"], rel=1e-5)
    rows_one, rows_two = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    for a, b in zip(rows_one, rows_two):
        assert (a["queries"], a["pairs"], a["samples"]) == (b["queries"], b["pairs"], b["samples"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)   # reduced: the global batch's loss
    start = weights(tiny_dir / "policy")
    final_one, final_two = weights(one / "final"), weights(two / "final")
    assert final_one.keys() == final_two.keys() == start.keys()
    assert relative_gap(final_two, final_one, start) <= BOUND
    assert any(not torch.equal(start[k], final_one[k]) for k in start)
    assert (two / "checkpoints" / "iteration-0002" / "__1_0.distcp").exists()     # rank 1 wrote its shards


@pytest.mark.skip(reason="written but not yet run (out of time): run it and remove this mark")
def test_killed_rank_ends_the_job_and_resume_matches_an_uninterrupted_run(runs, tiny_dir, prompts_file,
                                                                           tmp_path):
    out = tmp_path / "run"
    command = torchrun(2, "-m", "nashpref", "train", "--policy", str(tiny_dir / "policy"), "--preference",
                       f"reward:{tiny_dir / 'reward'}", "--prompts", str(prompts_file), "--solver", "sppo",
                       "--sampler", "hf", "--heldout", "3", "--samples", "2", "--eval-samples", "2",
                       "--max-new-tokens", "8", "--lr", "1e-3", "--tau", "0.1", "--timeout", "30",
                       "--out", str(out))
    job = subprocess.Popen(command + ["--iterations", "40"], env=env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pointer = out / "checkpoints" / "latest"
        deadline = time.monotonic() + 600
        while not pointer.exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.5)
        assert pointer.exists(), "no checkpoint was written"
        ranks = subprocess.run(["pgrep", "-f", "-P", str(job.pid), "nashpref"], capture_output=True, text=True)
        children = [int(pid) for pid in ranks.stdout.split()]
        assert len(children) == 2, ranks.stdout
        killed = time.monotonic()
        os.kill(children[-1], signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)
        assert job.returncode != 0
        assert time.monotonic() - killed < 60           # within the 30 s collective timeout (+ teardown)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    done = int(pointer.read_text().split("-")[1])
    assert 1 <= done < 40
    # Resume with ONE rank up to iteration done + 1 (resharding), and compare with the 2-rank run that was never
    # interrupted... which is the sppo run of `runs` when done + 1 == 2; otherwise run the reference here.
    total = done + 1
    resumed = subprocess.run(torchrun(1, *command[command.index("-m"):], "--iterations", str(total), "--resume"),
                             env=env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if total == 2:
        reference = runs[2] / "sppo"
    else:
        reference = tmp_path / "uninterrupted"
        fresh = command[:-1] + [str(reference), "--iterations", str(total)]
        again = subprocess.run(fresh, env=env(), capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
    start = weights(tiny_dir / "policy")
    assert relative_gap(weights(out / "final"), weights(reference / "final"), start) <= BOUND
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(1, total + 1))
    last = read_jsonl(out / f"rounds/iteration-{total:04d}.jsonl")
    assert [(r["a"], r["b"]) for r in last] == [(r["a"], r["b"]) for r in
                                                read_jsonl(reference / f"rounds/iteration-{total:04d}.jsonl")]
