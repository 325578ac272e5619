"""The data-parallel backends under real torchrun processes (gloo, CPU): shares and reductions against hand
values, one FSDP2 / DDP step against a single-process step on the same global batch, and DCP checkpoints
(round trip at the same world size, resharding 2 → 1 ranks, per-rank RNG)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from nashpref.lm.backend.distributed import shard_bounds  # noqa: E402
from nashpref.lm.backend.fsdp import STATE_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"
sys.path.insert(0, str(ROOT / "tests"))
import dist_worker  # noqa: E402


def torchrun(nproc: int, *args: str, backend: str = "fsdp", timeout: float = 300) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "BACKEND": backend,
                        "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", str(WORKER), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def results(out: Path, scenario: str, nproc: int) -> list[dict]:
    return [json.loads((out / f"{scenario}-rank{r}.json").read_text()) for r in range(nproc)]


def test_shard_bounds_cover_in_order():
    for count in range(0, 13):
        for ranks in range(1, 5):
            pieces = [shard_bounds(count, ranks, r) for r in range(ranks)]
            assert pieces[0][0] == 0 and pieces[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
            sizes = [stop - start for start, stop in pieces]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_collectives_two_ranks(tmp_path):
    torchrun(2, "collectives", str(tmp_path))
    first, second = results(tmp_path, "collectives", 2)
    assert first["share"] == [0, 1, 2, 3, 4, 5] and second["share"] == [6, 7, 8, 9, 10]
    for r in (first, second):
        assert r["mean"] == pytest.approx(55 / 11, rel=1e-15)    # count-weighted mean = mean of 0..10
        assert r["plain_mean"] == 0.5 and r["sum"] == 3.0
        assert r["gathered"] == [f"0:{i}" for i in range(6)] + [f"1:{i}" for i in range(6, 11)]


def single_process_reference(steps: int = 2) -> tuple[dict, dict]:
    """(initial, final) weights of the same two clipped AdamW steps on the global batch in one process."""
    model = dist_worker.tiny_llama()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    tokens = dist_worker.global_batch()
    for _ in range(steps):
        dist_worker.row_losses(model, tokens).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad()
    return start, {k: v.clone() for k, v in model.state_dict().items()}


def relative_gap(weights: dict, reference: dict, start: dict) -> float:
    """|w − w_ref| / |w_ref − w_0| over all parameters (2-norms)."""
    diff = sum(((weights[k] - reference[k]) ** 2).sum() for k in reference) ** 0.5
    update = sum(((reference[k] - start[k]) ** 2).sum() for k in reference) ** 0.5
    return float(diff / update)


def rounding_bound() -> float:
    """float32 rounding through the longest reduction of the gradient (tokens × MLP width): the relative
    difference two summation orders may leave in an Adam update."""
    return torch.finfo(torch.float32).eps * dist_worker.ROWS * dist_worker.WIDTH * 128


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    torchrun(2, "train", str(out))
    return out


@pytest.mark.parametrize("backend", ["fsdp", "ddp"])
def test_two_rank_step_matches_one_process(backend, fsdp_runs, tmp_path):
    out = fsdp_runs
    if backend == "ddp":
        out = tmp_path
        torchrun(2, "train", str(out), backend="ddp")
    start, reference = single_process_reference()
    final = torch.load(out / "train-final.pt")
    gap = relative_gap(final, reference, start)
    assert gap <= rounding_bound(), gap
    ranks = results(out, "train", 2)
    assert ranks[0]["loss1"] == ranks[1]["loss1"]       # metrics are reduced: every rank reports the same


def test_dcp_round_trip_same_world_size(fsdp_runs):
    out = fsdp_runs
    torchrun(2, "resume", str(out), str(out / "checkpoint"))
    assert (out / "checkpoint" / STATE_FILE).exists() and not list(out.glob(".checkpoint*"))
    trained, resumed = results(out, "train", 2), results(out, "resume", 2)
    for before, after in zip(trained, resumed):
        assert after["weights_equal"] and after["moments_equal"]
        assert after["state"] == {"iteration": 1, "rows": [{"a": 1}]}
        assert after["after_load_draw"] == before["after_save_draw"]     # this rank's own RNG came back
        assert after["loss2"] == before["loss2"]
    assert trained[0]["after_save_draw"] != trained[1]["after_save_draw"]
    final, again = torch.load(out / "train-final.pt"), torch.load(out / "resume-final.pt")
    assert all(torch.equal(final[k], again[k]) for k in final)      # same world size: bit for bit


def test_dcp_reshards_two_ranks_to_one(fsdp_runs, tmp_path):
    source = fsdp_runs
    (tmp_path / "step1.pt").symlink_to(source / "step1.pt")
    (tmp_path / "checkpoint").symlink_to(source / "checkpoint")
    torchrun(1, "resume", str(tmp_path), str(tmp_path / "checkpoint"))
    (single,) = results(tmp_path, "resume", 1)
    assert single["weights_equal"] and single["moments_equal"]       # exact values after resharding
    assert single["after_load_draw"] == results(source, "train", 2)[0]["after_save_draw"]
    start, _ = single_process_reference(0)
    two = torch.load(source / "train-final.pt")
    one = torch.load(tmp_path / "resume-final.pt")
    assert relative_gap(one, two, start) <= rounding_bound()
