"""The redesign changed no behaviour: a 3-iteration `nashpref train` per solver on the tiny model (hf sampler,
fixed seed) and a short sampled `nashpref solve` per solver give the metrics, the round datasets and the final
weights recorded in tests/data/behaviour.json (first before the code moved; the solvers added since are recorded
too; tests/behaviour.py says how; rerun
``python scripts/record_behaviour.py`` only for a change that is meant to alter results).

Tolerances: responses, prompts and counts must be equal. A float may differ only by rounding: float32 eps (the
models' dtype; float64 eps for the tabular runs) times the quantity's scale (1 for probabilities, win-rates and
losses of order one, the sum of |w| for a weight sum, ‖w‖ for a norm, ‖w‖·√n for the dot product with an n-vector
of N(0, 1) entries) times the steps that produced it (each iteration's optimizer step and evaluation, plus one).

Those bounds hold for the same CPU kernels only: float32 training on AVX2 or AVX512 kernels, or on MKL's Intel or
AMD code path, drifts apart by far more (an AMD AVX512 machine missed an Intel recording by 4e-5 at the first
iteration, and once one sampled token differs the runs part). So both the recording and the fresh run build the
tiny model and train in a child process with portable kernels (tests/behaviour.py, PORTABLE_KERNELS), the same on
every x86-64 CPU, and every comparison runs everywhere. The train part was re-recorded that way on 2026-12-02
from the code that had matched the original (pre-redesign) recording in CI; the float64 tabular part was unchanged
by the re-recording (checked within the same bound).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from behaviour import ITERATIONS, PORTABLE_KERNELS, record_portably, solvers

RECORDED = Path(__file__).parent / "data" / "behaviour.json"
NAMES = sorted(json.loads(RECORDED.read_text(encoding="utf-8"))["train"])     # solvers added later are not here
F32 = torch.finfo(torch.float32).eps
F64 = torch.finfo(torch.float64).eps
TRAIN_STEPS = 2 * ITERATIONS + 1
SOLVE_STEPS = 20 + 1


def close(got, want, eps: float, steps: int, path: str) -> None:
    """Recursive comparison: floats within eps·max(|want|, 1)·steps, everything else equal."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            close(got[key], want[key], eps, steps, f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            close(g, w, eps, steps, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)), path
        assert abs(got - want) <= eps * max(abs(want), 1.0) * steps, (path, got, want)
    else:
        assert got == want, (path, got, want)


def weights_close(got: dict, want: dict, solver: str) -> None:
    assert got.keys() == want.keys(), solver
    for name, w in want.items():
        g = got[name]
        assert g["numel"] == w["numel"], name
        tolerances = {"sum": w["abs_sum"], "abs_sum": w["abs_sum"], "norm": w["norm"],
                      "dot": w["norm"] * math.sqrt(w["numel"])}
        for key, scale in tolerances.items():
            assert abs(g[key] - w[key]) <= F32 * scale * TRAIN_STEPS, (solver, name, key, g[key], w[key])


@pytest.fixture(scope="module")
def recorded():
    return json.loads(RECORDED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return record_portably(tmp_path_factory.mktemp("behaviour") / "fresh.json", NAMES)


def test_every_recorded_solver_is_still_registered(recorded):
    assert set(recorded["train"]) == set(recorded["solve"]) <= set(solvers())
    assert set(NAMES) >= {"nash-md", "sppo", "inpo", "egpo", "dno", "online-ipo", "iterative-dpo"}   # the redesign's


def test_recording_and_fresh_run_used_the_portable_kernels(recorded, fresh):
    for kernels in (recorded["kernels"], fresh["kernels"]):
        assert kernels["cpu_capability"] == "DEFAULT"
        assert {key: kernels[key] for key in PORTABLE_KERNELS} == PORTABLE_KERNELS


@pytest.mark.parametrize("solver", NAMES)
def test_train_is_unchanged(solver, recorded, fresh):
    want, got = recorded["train"][solver], fresh["train"][solver]
    assert [row["iteration"] for row in got["metrics"]] == list(range(1, ITERATIONS + 1))
    close(got["metrics"], want["metrics"], F32, TRAIN_STEPS, f"{solver}.metrics")
    close(got["rounds"], want["rounds"], F32, TRAIN_STEPS, f"{solver}.rounds")
    weights_close(got["weights"], want["weights"], solver)


@pytest.mark.parametrize("solver", NAMES)
def test_sampled_solve_is_unchanged(solver, recorded, fresh):
    close(fresh["solve"][solver], recorded["solve"][solver], F64, SOLVE_STEPS, f"{solver}.solve")
