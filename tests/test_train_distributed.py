"""`nashpref train --backend fsdp` under torchrun (gloo, CPU) on the tiny model.

* Same maths at any world size: 2 iterations of every solver with 2 ranks give the same responses and
  preferences as 1 rank with the same global batch (5 training prompts: shares of 3 and 2, so each rank's loss
  weight matters), and final weights equal up to float rounding (relative to the size of the update);
* vLLM per rank (``--sampler vllm --verify-sync``): each rank's own engine samples its prompts; 2 ranks draw
  the same responses as 1 and end with the same weights up to float rounding, and every rank checked its sync;
  with ``--tensor-parallel-size 2`` the 2 ranks share one engine and still draw what 1 rank draws; a vLLM judge
  per rank (next to the sampler's engine) answers its own pairs as transformers does in one process;
* LoRA under FSDP: the reference is the base with the adapters off (sharing the sampler copy's tensors), and
  2 ranks train like 1, moving only the adapted layers;
* faults: ``kill -9`` (or ``kill -STOP``) of one rank ends the others within the timeout with one ``error:`` line
  and a non-zero status, and ``--resume`` ends where an uninterrupted run ends (bit for bit); under
  ``torchrun --max-restarts 1`` the restarted ranks resume from the last checkpoint by themselves.
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


def shm_segments() -> set[str]:
    """vLLM's CPU all-reduce files in /dev/shm (x86 builds with AVX512 use them for tensor parallelism)."""
    return {path.name for path in Path("/dev/shm").glob("*cpushm*")} if Path("/dev/shm").is_dir() else set()


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


@pytest.fixture(scope="module")
def vllm_runs(tiny_dir, prompts_file, tmp_path_factory) -> dict[int, Path]:
    pytest.importorskip("vllm")
    out = {}
    for nproc in (1, 2):
        out[nproc] = tmp_path_factory.mktemp(f"vllm{nproc}")
        done = subprocess.run(torchrun(nproc, str(ROOT / "tests" / "dist_worker.py"), "vllm", str(out[nproc]),
                                       str(tiny_dir), str(prompts_file)),
                              env=env(), capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("solver", ["sppo", "online-ipo"])
def test_vllm_engine_per_rank_trains_like_one_rank(solver, vllm_runs, tiny_dir):
    one, two = vllm_runs[1] / solver, vllm_runs[2] / solver
    for iteration in (1, 2):        # per-request seeds keyed by (round, prompt): the split over ranks is invisible
        name = f"rounds/iteration-{iteration:04d}.jsonl"
        assert [(r["prompt"], r["a"], r["b"]) for r in read_jsonl(one / name)] == \
               [(r["prompt"], r["a"], r["b"]) for r in read_jsonl(two / name)]
    for row in read_jsonl(two / "metrics.jsonl"):
        assert row["samplers"] == {"heldout": "vllm", "policy": "vllm"}
        assert row["sample_weights"]["policy"] == [row["iteration"] - 1]      # π_t: synced after each step
    for rank in (0, 1):             # every rank ran its own engine in the training process and checked each sync
        seen = json.loads((two / f"engine-rank{rank}.json").read_text())
        assert seen["executor"] == "ExecutorWithExternalLauncher" and seen["version"] >= 4
        assert 0 <= seen["verify_error"] <= seen["tolerance"]
        assert 0 <= seen["final_error"] <= seen["tolerance"]       # the engine ends on the final weights
    start = weights(tiny_dir / "policy")
    final_one, final_two = weights(one / "final"), weights(two / "final")
    assert final_one.keys() == final_two.keys() == start.keys()
    assert relative_gap(final_two, final_one, start) <= BOUND
    assert any(not torch.equal(start[k], final_one[k]) for k in start)


def test_vllm_mixture_engine_per_rank_from_the_command_line(tiny_dir, prompts_file, tmp_path):
    """Nash-MD's two-stack engine (policy, mixture and reference samples) per rank, through ``-m nashpref train``:
    2 ranks draw what 1 rank draws, and the run ends without a traceback (vLLM's groups end before ours)."""
    pytest.importorskip("vllm")
    runs = {}
    for nproc in (1, 2):
        runs[nproc] = tmp_path / f"ranks{nproc}"
        args = with_options(train_args(tiny_dir, prompts_file, runs[nproc]), sampler="vllm", solver="nash-md",
                            iterations="2")
        done = subprocess.run(torchrun(nproc, *args, "--verify-sync"), env=env(), capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
    for iteration in (1, 2):
        name = f"rounds/iteration-{iteration:04d}.jsonl"
        assert [(r["prompt"], r["a"], r["b"]) for r in read_jsonl(runs[1] / name)] == \
               [(r["prompt"], r["a"], r["b"]) for r in read_jsonl(runs[2] / name)]
    for row in read_jsonl(runs[2] / "metrics.jsonl"):
        assert row["samplers"] == {"heldout": "vllm", "mixture": "vllm", "policy": "vllm"}
    start = weights(tiny_dir / "policy")
    assert relative_gap(weights(runs[2] / "final"), weights(runs[1] / "final"), start) <= BOUND


@pytest.mark.parametrize("ranks", [2, 4])
def test_vllm_tensor_parallel_engines_draw_what_one_rank_draws(ranks, vllm_runs, tiny_dir, prompts_file, tmp_path):
    """Engines of tensor parallel 2 (each rank holds half of every weight matrix, and the two ranks of an engine
    meet in all-reduces over gloo): one engine on 2 ranks, or two engines on 4 ranks. The responses are those of
    one rank's engine of tensor parallel 1, token for token (seeded per prompt; the all-reduce only changes float
    rounding, ~1e-6 in log-probs), and every rank's engine holds the final weights (its teacher-forced log-probs
    match the saved final policy within the sync tolerance). No shared-memory file of vLLM's CPU all-reduce is left
    behind: one left by the 2-rank run made the 4-rank run's engine fail (same group name)."""
    before = shm_segments()
    done = subprocess.run(torchrun(ranks, str(ROOT / "tests" / "dist_worker.py"), "vllm", str(tmp_path),
                                   str(tiny_dir), str(prompts_file), "2", "sppo"), env=env(), capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert shm_segments() <= before
    one, two = vllm_runs[1] / "sppo", tmp_path / "sppo"
    for iteration in (1, 2):
        name = f"rounds/iteration-{iteration:04d}.jsonl"
        assert [(r["prompt"], r["a"], r["b"]) for r in read_jsonl(one / name)] == \
               [(r["prompt"], r["a"], r["b"]) for r in read_jsonl(two / name)]
    for rank in range(ranks):
        seen = json.loads((two / f"engine-rank{rank}.json").read_text())
        assert (seen["executor"], seen["tensor_parallel"], seen["group"]) == ("ExecutorWithExternalLauncher", 2, 2)
        assert seen["version"] >= 4 and 0 <= seen["verify_error"] <= seen["tolerance"]
        assert 0 <= seen["final_error"] <= seen["tolerance"]
    start = weights(tiny_dir / "policy")
    assert relative_gap(weights(two / "final"), weights(one / "final"), start) <= BOUND


def test_vllm_tensor_parallel_must_divide_the_ranks(tiny_dir, prompts_file, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "run"
    args = with_options(train_args(tiny_dir, prompts_file, out), sampler="vllm")
    done = subprocess.run(torchrun(2, *args, "--tensor-parallel-size", "3"), env=env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode != 0 and not out.exists()
    errors = {line for line in done.stderr.splitlines() if line.startswith("error:")}
    assert errors == {"error: --tensor-parallel-size 3: must divide the number of ranks (2)"}


@pytest.mark.parametrize("tensor_parallel", [1, 2])
def test_vllm_judge_per_rank_answers_as_transformers(tensor_parallel, tiny_dir, tmp_path):
    """``JudgeOracle.from_pretrained(..., backend="vllm")`` under torchrun, next to a sampler engine: each rank's
    judge (its own engine, or with tensor parallel 2 the ranks' shared one) answers that rank's pairs with the
    greedy answers of the transformers judge in one process, so the verdicts are the same."""
    pytest.importorskip("vllm")
    sys.path.insert(0, str(ROOT / "tests"))
    from dist_worker import JUDGED
    from nashpref.lm.backend.distributed import shard_items
    from nashpref.preferences.judge import JudgeOracle, hf_generator

    done = subprocess.run(torchrun(2, str(ROOT / "tests" / "dist_worker.py"), "judge", str(tmp_path), str(tiny_dir),
                                   str(tensor_parallel)), env=env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    transformers = JudgeOracle(hf_generator(str(tiny_dir / "policy"), 16, device="cpu", dtype="float32"))
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"judge-rank{rank}.json").read_text())
        prompts, a, b = (list(column) for column in zip(*shard_items(JUDGED, 2, rank)))
        assert seen["answers"] == transformers.generate(transformers.requests(prompts, a, b))
        assert seen["preference"] == transformers.prefer_texts(prompts, a, b).tolist()
        assert (seen["executor"], seen["tensor_parallel"], seen["separate"]) == \
               ("ExecutorWithExternalLauncher", tensor_parallel, True)


@pytest.fixture(scope="module")
def lora_runs(tiny_dir, prompts_file, tmp_path_factory) -> dict[int, Path]:
    out = {}
    for nproc in (1, 2):
        out[nproc] = tmp_path_factory.mktemp(f"lora{nproc}")
        done = subprocess.run(torchrun(nproc, str(ROOT / "tests" / "dist_worker.py"), "lora", str(out[nproc]),
                                       str(tiny_dir), str(prompts_file)),
                              env=env(), capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_lora_under_fsdp_reference_is_the_base_with_adapters_off(lora_runs):
    for rank in (0, 1):
        seen = json.loads((lora_runs[2] / f"lora-rank{rank}.json").read_text())
        # The reference's tensors are the sampler's copy's base tensors (one copy of the base per rank), and its
        # log-probs are those of the policy with the adapters disabled, exactly.
        assert seen["shared"] == seen["reference_tensors"] == seen["base_tensors"]
        assert seen["off_equals_reference"] and seen["on_differs"]
        assert seen["trainable"] == ["lora_A", "lora_B"] and seen["sharded"] > 0


@pytest.mark.parametrize("solver", ["sppo", "nash-md"])
def test_lora_two_ranks_train_like_one_and_only_the_adapters(solver, lora_runs, tiny_dir):
    one, two = lora_runs[1] / solver, lora_runs[2] / solver
    for iteration in (1, 2):
        name = f"rounds/iteration-{iteration:04d}.jsonl"
        assert [(r["prompt"], r["a"], r["b"]) for r in read_jsonl(one / name)] == \
               [(r["prompt"], r["a"], r["b"]) for r in read_jsonl(two / name)]
    start = weights(tiny_dir / "policy")
    final_one, final_two = weights(one / "final"), weights(two / "final")   # adapters merged
    assert final_one.keys() == final_two.keys() == start.keys()
    assert relative_gap(final_two, final_one, start) <= BOUND
    # all-linear LoRA: every linear layer of the decoder moves; embeddings, norms and the output head (which
    # peft leaves out) are the frozen base's, bit for bit.
    for key in start:
        moved = not torch.equal(final_two[key], start[key])
        assert moved == (key.endswith("proj.weight")), key


# ---- faults ------------------------------------------------------------------------------------------------
ITERATIONS = 12                 # ~0.5 s each with 2 ranks: a kill after the 2nd checkpoint lands mid-run
TIMEOUT = 30                    # --timeout: the bound on a collective waiting for a dead rank


def free_port() -> int:
    import socket

    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def train_args(tiny: Path, prompts: Path, out: Path) -> list[str]:
    return ["-m", "nashpref", "train", "--policy", str(tiny / "policy"), "--preference", f"reward:{tiny / 'reward'}",
            "--prompts", str(prompts), "--solver", "sppo", "--sampler", "hf", "--heldout", "3", "--samples", "2",
            "--eval-samples", "2", "--max-new-tokens", "8", "--lr", "1e-3", "--tau", "0.1", "--timeout",
            str(TIMEOUT), "--iterations", str(ITERATIONS), "--out", str(out)]


def with_options(args: list[str], **options: str) -> list[str]:
    """``args`` with the value after each ``--flag`` replaced (keyword ``max_new_tokens`` for ``--max-new-tokens``)."""
    args = list(args)
    for key, value in options.items():
        args[args.index("--" + key.replace("_", "-")) + 1] = value
    return args


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, prompts_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = subprocess.run(torchrun(2, *train_args(tiny_dir, prompts_file, out)), env=env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def kill_a_rank_after(out: Path, iteration: int, parents: list[subprocess.Popen],
                      how: signal.Signals = signal.SIGKILL) -> tuple[float, int]:
    """Wait until checkpoint ``iteration`` is published, then send ``how`` (``kill -9``) to the worker of the last
    launcher in ``parents`` (one torchrun agent each); returns the time it was sent and the worker's pid."""
    pointer = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and all(p.poll() is None for p in parents):
        if pointer.exists() and int(pointer.read_text().split("-")[1]) >= iteration:
            break
        time.sleep(0.05)
    assert pointer.exists(), "no checkpoint was written"
    workers = subprocess.run(["pgrep", "-P", str(parents[-1].pid)], capture_output=True, text=True).stdout.split()
    assert workers, "the launcher has no worker left"
    os.kill(int(workers[-1]), how)
    return time.monotonic(), int(workers[-1])


def checkpointed(out: Path) -> int:
    return int((out / "checkpoints" / "latest").read_text().split("-")[1])


def assert_same_run(out: Path, reference: Path) -> None:
    """``out`` ended exactly where ``reference`` did: bit-equal final weights (CPU, gloo with 2 ranks: every sum
    is taken in the same order), the same metrics and the same round datasets."""
    mine, theirs = weights(out / "final"), weights(reference / "final")
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    timing = {"sampling_seconds", "judging_seconds", "sync_seconds", "training_seconds", "evaluation_seconds",
              "seconds"}
    rows, expected = read_jsonl(out / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows] == \
           [{k: v for k, v in r.items() if k not in timing} for r in expected]
    for t in range(1, ITERATIONS + 1):
        name = f"rounds/iteration-{t:04d}.jsonl"
        assert read_jsonl(out / name) == read_jsonl(reference / name)


def worker_log(logs: Path, attempt: int = 0) -> str:
    """The stderr of the (only) local worker of a torchrun agent run with --log-dir LOGS --redirects 3."""
    files = list(logs.glob(f"*/attempt_{attempt}/0/stderr.log"))
    assert len(files) == 1, list(logs.rglob("*"))
    return files[0].read_text()


def two_agents(tiny: Path, prompts: Path, out: Path, logs: Path, timeout: float) -> list[subprocess.Popen]:
    """Two torchrun agents with one rank each (static rendezvous on 127.0.0.1), as two nodes would run them;
    each worker's stderr goes to LOGS/logsN."""
    port, agents = free_port(), []
    args = train_args(tiny, prompts, out)
    args[args.index("--timeout") + 1] = str(timeout)
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--node_rank", str(node), "--rdzv-backend", "static", "--master-addr", "127.0.0.1",
                   "--master-port", str(port), "--log-dir", str(logs / f"logs{node}"), "--redirects", "3", *args]
        agents.append(subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, start_new_session=True))
    return agents


def test_killed_rank_ends_the_job_and_resume_matches_an_uninterrupted_run(uninterrupted, tiny_dir, prompts_file,
                                                                           tmp_path):
    """Two torchrun agents (two "nodes" of one rank each, as on a cluster, where no agent can stop the other's
    workers): ``kill -9`` of rank 1 must end rank 0 through the failed collective, with one ``error:`` line
    within the timeout, and ``--resume`` then ends bit-equal to the run that was never interrupted."""
    out = tmp_path / "run"
    agents = two_agents(tiny_dir, prompts_file, out, tmp_path, TIMEOUT)
    try:
        killed, _ = kill_a_rank_after(out, 2, agents)
        for agent in agents:
            agent.communicate(timeout=TIMEOUT + 60)
        ended = time.monotonic() - killed
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
    assert [agent.returncode for agent in agents] == [1, 1]
    assert ended < TIMEOUT + 15                     # no hang: the survivor gave up within the timeout
    survivor = worker_log(tmp_path / "logs0").strip().splitlines()
    assert len(survivor) == 1 and survivor[0].startswith("error: rank 0: a collective with the other ranks "
                                                         "failed"), survivor
    assert "Traceback" not in survivor[0]
    assert 2 <= checkpointed(out) < ITERATIONS
    resumed = subprocess.run(torchrun(2, *train_args(tiny_dir, prompts_file, out), "--resume"), env=env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, uninterrupted)


def test_a_rank_that_stops_answering_ends_the_others_after_the_timeout(tiny_dir, prompts_file, tmp_path):
    """``kill -STOP`` of rank 1 (alive, silent: its sockets stay open, so only the timeout can tell): rank 0's
    next collective gives up after ``--timeout`` seconds with one ``error:`` line, not a hang."""
    out, timeout = tmp_path / "run", 10
    agents = two_agents(tiny_dir, prompts_file, out, tmp_path, timeout)
    stopped = None
    try:
        sent, stopped = kill_a_rank_after(out, 2, agents, signal.SIGSTOP)
        agents[0].communicate(timeout=timeout + 60)
        ended = time.monotonic() - sent
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
        if stopped is not None:
            os.kill(stopped, signal.SIGKILL)
    assert agents[0].returncode == 1
    assert timeout - 1 <= ended < timeout + 20      # it waited for the timeout, and not much longer
    survivor = worker_log(tmp_path / "logs0").strip().splitlines()
    assert len(survivor) == 1 and survivor[0].startswith("error: rank 0: a collective with the other ranks "
                                                         "failed"), survivor
    assert "Timed out" in survivor[0]


def test_torchrun_max_restarts_resumes_from_the_last_checkpoint(uninterrupted, tiny_dir, prompts_file, tmp_path):
    """``torchrun --max-restarts 1``: after ``kill -9`` of a rank, torchrun stops the other and starts both again
    (TORCHELASTIC_RESTART_COUNT=1); they continue from the last checkpoint without --resume and end bit-equal to
    the uninterrupted run."""
    out, logs = tmp_path / "run", tmp_path / "logs"
    command = [*torchrun(2, "--max-restarts", "1", "--log-dir", str(logs), "--redirects", "3"),
               *train_args(tiny_dir, prompts_file, out)]
    job = subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        kill_a_rank_after(out, 2, [job])
        at_kill = checkpointed(out)
        _, stderr = job.communicate(timeout=900)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, stderr[-3000:]
    assert at_kill < ITERATIONS
    assert list(logs.glob("*/attempt_1/0/stderr.log")), "torchrun did not restart the workers"
    assert_same_run(out, uninterrupted)
