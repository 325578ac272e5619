"""scripts/gpu_check.py on a CPU: its dry run (1 iteration of 1 solver under torchrun, --backend fsdp), its FLOP
count against torch's FlopCounterMode, and its one-line refusal without a CUDA device."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("sizes", [dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=128, vocab_size=512),
                                   dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
                                        num_key_value_heads=3, intermediate_size=200, vocab_size=300)])
def test_step_flops_equal_torch_flop_counter(sizes):
    from transformers import LlamaConfig

    script = load_script()
    config = LlamaConfig(max_position_embeddings=64, tie_word_embeddings=False, **sizes)
    assert script.step_flops(config, 3, 17) == script.counted_flops(config, 3, 17)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_stops_with_one_line(tmp_path):
    done = run("--out", str(tmp_path / "gpu"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: no CUDA device")
    assert not (tmp_path / "gpu").exists()


def test_cpu_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "gpu"
    done = run("--device", "cpu", "--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["solvers"]) == ["sppo"]
    sppo = results["solvers"]["sppo"]
    assert sppo["status"] == "ok" and sppo["iterations"] == 1 and math.isfinite(sppo["loss"])
    assert sppo["samples"] == 4 * 2             # prompts per round × samples
    assert sppo["peak_memory_bytes"] > 0
    step = results["train_step"]
    # 6 · linear weights · tokens + 12 · layers · hidden · seq · tokens for the dry-run model (h 64, 2 layers,
    # MLP 128, k/v width 32, vocab 512) on 2 × 32 tokens: 6 · 81 920 · 64 + 12 · 2 · 64 · 32 · 64, by hand.
    assert step["flops_per_step"] == 6 * (2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 64 * 512) * 64 \
        + 12 * 2 * 64 * 32 * 64 == 44_040_192
    assert step["flops_counted"] == step["flops_per_step"]
    assert step["mfu"] is None                  # no known peak on a CPU
    assert len(step["step_seconds"]) == 3         # 1 warm-up + 2 timed: the median is the mean of the 2
    assert step["median_seconds"] == pytest.approx(sum(step["step_seconds"][1:]) / 2)
    draw = results["sampling"]
    assert 0 < draw["tokens"] <= draw["prompts"] * draw["samples"] * draw["max_new_tokens"]
    assert draw["tokens_per_second"] == pytest.approx(draw["tokens"] / draw["seconds"])
    report = (out / "README.md").read_text()
    assert "--device cpu --dry-run" in report and "| sppo | ok | 1 |" in report
