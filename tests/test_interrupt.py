"""Ctrl-C and SIGTERM: one line, exit 128 + signal, nothing half written; `train` resumes bit for bit after one."""

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
from nashpref.signals import Interrupted, interruptible

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["describe the red cat", "tell me about a robot", "what is the river like?", "write one line about a star",
           "say something about a dark forest", "describe the golden ship", "tell me about a bird"]


def test_interruptible_raises_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught:
        with interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)                       # the handler runs before this returns
    assert caught.value.exit_status == 143 and caught.value.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


def cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "nashpref", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def cpu_seconds(pid: int) -> float:
    """CPU seconds a process has used (Linux /proc): past its imports, it is in the command's work."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen, signum: int, ready) -> tuple[int, str]:
    deadline = time.monotonic() + 300
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, process.communicate()[1]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_solve_stops_with_one_line_and_writes_nothing(tmp_path, signum, status):
    out = tmp_path / "run"
    process = cli("solve", "--game", "weighted-rps", "--solver", "egpo", "--iters", "100000000", "--out", str(out))
    code, stderr = stop(process, signum, lambda: cpu_seconds(process.pid) > 8)     # imports take ~3 s
    assert code == status
    assert stderr.strip().splitlines() == [f"interrupted by {signal.Signals(signum).name}: nothing was written to "
                                           f"{out}; run the command again"]
    assert list(tmp_path.iterdir()) == []        # no DIR, no hidden staging directory


# ---- train ----------------------------------------------------------------------------------------------------------
def train_args(tiny: Path, prompts: Path, out: Path) -> list[str]:
    return ["train", "--policy", str(tiny / "policy"), "--preference", f"reward:{tiny / 'reward'}", "--prompts",
            str(prompts), "--solver", "nash-md", "--sampler", "hf", "--iterations", "3", "--heldout", "2",
            "--samples", "2", "--eval-samples", "2", "--max-new-tokens", "8", "--lr", "1e-3", "--tau", "0.1",
            "--prompts-per-round", "3", "--minibatches", "2", "--labels", "bernoulli", "--out", str(out)]


def train_config(tiny: Path, prompts: Path, out: Path, **options):
    from nashpref.cli import parse

    return parse(train_args(tiny, prompts, out) + sum(([f"--{k.replace('_', '-')}"] if v is True else []
                                                       for k, v in options.items()), []))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, prompts_file, tmp_path_factory):  # noqa: F811
    from nashpref.lm.trainer import run_train

    out = tmp_path_factory.mktemp("whole") / "run"
    torch.set_num_threads(1)
    run_train(train_config(tiny_dir, prompts_file, out), progress=False)
    return weights(out / "final")


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_train_stops_on_a_signal_and_resumes_bit_for_bit(tiny_dir, prompts_file, uninterrupted, tmp_path,  # noqa: F811
                                                         signum, status):
    from nashpref.lm.trainer import run_train

    out = tmp_path / "run"
    args = train_args(tiny_dir, prompts_file, out)
    process = cli(*args)
    code, stderr = stop(process, signum, lambda: (out / "checkpoints" / "latest").is_file())
    assert code == status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"interrupted by {signal.Signals(signum).name}: {out} keeps the last complete "
                               "checkpoint; continue with: nashpref train ")
    assert lines[0].endswith(" --resume")
    assert not (out / "final").exists()
    assert not [p for p in out.rglob(".*.tmp")]          # no staging file or directory left behind
    run_train(train_config(tiny_dir, prompts_file, out, resume=True), progress=False)
    assert_same_weights(weights(out / "final"), uninterrupted)


def test_a_signal_inside_a_checkpoint_write_leaves_the_previous_one(tiny_dir, prompts_file, uninterrupted,  # noqa: F811
                                                                    tmp_path, monkeypatch):
    """SIGTERM arrives while iteration 2's checkpoint is being written (its files are out, the pointer is not):
    the write is abandoned, iteration 1's checkpoint stays the latest, and --resume still ends bit for bit."""
    from nashpref.io import atomic_write
    from nashpref.lm import checkpoints
    from nashpref.lm.trainer import run_train

    out = tmp_path / "run"
    calls = []

    def pointer(root, name):
        calls.append(name)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        atomic_write(Path(root) / checkpoints.LATEST, name + "\n")
    monkeypatch.setattr(checkpoints, "write_pointer", pointer)
    with pytest.raises(Interrupted):
        with interruptible():
            run_train(train_config(tiny_dir, prompts_file, out), progress=False)
    monkeypatch.undo()
    assert (out / "checkpoints" / "latest").read_text().strip() == "iteration-0001"
    run_train(train_config(tiny_dir, prompts_file, out, resume=True), progress=False)
    assert_same_weights(weights(out / "final"), uninterrupted)
