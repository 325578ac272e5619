"""Atomic checkpoints, and runs that are killed and resumed ending bit-identical to uninterrupted ones."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from nashpref.lm import checkpoints as checkpoint
from nashpref.lm.checkpoints import latest_state, load_state as load_checkpoint, save_state as save_checkpoint
from nashpref.core.game import PreferenceGame
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.solvers.base import Solver, SolverConfig

F64 = torch.float64


def test_round_trip_keeps_every_bit(tmp_path):
    generator = torch.Generator().manual_seed(3)
    torch.rand(5, generator=generator)       # a state other than the seed's
    state = {"iteration": 7, "seconds": 1.25, "policy": {"logits": torch.randn(4, 5, dtype=F64)},
             "generator": generator.get_state(), "rows": [{"gap": 0.1, "queries": 12}], "name": "x"}
    save_checkpoint(tmp_path / "ck", state)
    loaded = load_checkpoint(tmp_path / "ck")
    assert torch.equal(loaded["policy"]["logits"], state["policy"]["logits"])
    assert torch.equal(loaded["generator"], state["generator"])
    assert {k: loaded[k] for k in ("iteration", "seconds", "rows", "name")} == \
        {k: state[k] for k in ("iteration", "seconds", "rows", "name")}


def test_no_checkpoint_yet_is_none(tmp_path):
    assert load_checkpoint(tmp_path) is None
    assert load_checkpoint(tmp_path / "missing") is None


def test_crash_in_replace_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"iteration": 1, "x": torch.ones(3)})

    def crash(*args):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, {"iteration": 2, "x": torch.zeros(3)})
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path)
    assert loaded["iteration"] == 1 and torch.equal(loaded["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILENAME]     # no temp file left behind


def test_crash_while_writing_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"iteration": 1})

    def half_write(obj, handle):
        handle.write(b"PK\x03\x04 truncated")
        raise OSError("simulated disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILENAME]


# ---- kill and resume ------------------------------------------------------------------------------------------
class NoisyIPO(Solver):
    """Online IPO with Bernoulli labels (algorithms.md §8.2) — enough randomness and optimizer state that any
    RNG or state not restored on resume changes the result."""

    name = "test-ipo"
    Config = SolverConfig

    def step(self, game, log_pi, t):
        raise NotImplementedError

    def collect(self, round):
        y, y2 = round.sample(round.samples), round.sample(round.samples, "mixture", 0.25)
        return {"contexts": round.contexts, "y": y, "y2": y2, "p": round.prefer(y, y2),
                "ref": round.log_prob(y, "reference") - round.log_prob(y2, "reference")}

    def loss(self, batch, policy):
        h = policy.log_prob(batch["contexts"], batch["y"]) - policy.log_prob(batch["contexts"], batch["y2"])
        return ((h - batch["ref"] - (batch["p"] - 0.5) / 0.1) ** 2).mean(), {}


class AveragedIPO(NoisyIPO):
    iterate = "average"


class ExtragradientIPO(NoisyIPO):
    extragradient = True


SOLVERS = {"average": AveragedIPO, "extragradient": ExtragradientIPO}
CONFIG = SampledConfig(iterations=12, samples=3, labels="bernoulli", lr=0.03, optimizer="adam", epochs=2,
                       minibatches=2, contexts_per_round=3, seed=5)


def game():
    P = torch.rand(5, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    P = torch.triu(P, 1) + torch.tril(1 - P.transpose(1, 2), -1) + 0.5 * torch.eye(4, dtype=F64)
    return PreferenceGame.create(P, torch.full((4,), 0.25, dtype=F64), 0.1)


def same_run(a, b):
    assert torch.equal(a.policies, b.policies) and torch.equal(a.last_policies, b.last_policies)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a.metrics) == strip(b.metrics)
    assert a.iterations == b.iterations


class Crash(Exception):
    pass


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_crash_after_an_iteration_then_resume_is_bit_identical(tmp_path, solver):
    whole = run_sampled(game(), SOLVERS[solver](), CONFIG)

    def crash_at_7(t, row):
        if t == 7:                  # before iteration 7's checkpoint: the resume redoes it
            raise Crash

    with pytest.raises(Crash):
        run_sampled(game(), SOLVERS[solver](), CONFIG, crash_at_7, checkpoint_dir=tmp_path)
    assert latest_state(tmp_path)["iteration"] == 6
    same_run(run_sampled(game(), SOLVERS[solver](), CONFIG, checkpoint_dir=tmp_path, resume=True), whole)


def test_crash_inside_an_extragradient_step_then_resume_is_bit_identical(tmp_path):
    whole = run_sampled(game(), ExtragradientIPO(), CONFIG)

    class Fragile(ExtragradientIPO):
        calls = 0

        def loss(self, batch, policy):
            Fragile.calls += 1
            if Fragile.calls == 4 * 4 + 3:      # 4 steps per half-step: iteration 5, inside the second half
                raise Crash
            return super().loss(batch, policy)

    with pytest.raises(Crash):
        run_sampled(game(), Fragile(), CONFIG, checkpoint_dir=tmp_path)
    assert latest_state(tmp_path)["iteration"] == 2
    same_run(run_sampled(game(), ExtragradientIPO(), CONFIG, checkpoint_dir=tmp_path, resume=True), whole)


def test_crash_during_checkpoint_save_then_resume_is_bit_identical(tmp_path, monkeypatch):
    whole = run_sampled(game(), AveragedIPO(), CONFIG)
    real_replace, calls = os.replace, []

    def replace_failing_at_4(src, dst):
        if os.path.basename(dst) == checkpoint.LATEST:      # the 4th checkpoint's pointer write
            calls.append(dst)
        if len(calls) == 4:
            raise OSError("simulated crash during rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_at_4)
    with pytest.raises(OSError):
        run_sampled(game(), AveragedIPO(), CONFIG, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    assert latest_state(tmp_path)["iteration"] == 3
    same_run(run_sampled(game(), AveragedIPO(), CONFIG, checkpoint_dir=tmp_path, resume=True), whole)


def test_sigkill_then_resume_in_a_new_process_is_bit_identical(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint import AveragedIPO, CONFIG, game
        from nashpref.sampled import run_sampled

        def kill_at_9(t, row):
            if t == 9:
                os.kill(os.getpid(), signal.SIGKILL)

        run_sampled(game(), AveragedIPO(), CONFIG, kill_at_9, checkpoint_dir={str(tmp_path)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert latest_state(tmp_path)["iteration"] == 8
    resumed = run_sampled(game(), AveragedIPO(), CONFIG, checkpoint_dir=tmp_path, resume=True)
    same_run(resumed, run_sampled(game(), AveragedIPO(), CONFIG))


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    same_run(run_sampled(game(), AveragedIPO(), CONFIG, checkpoint_dir=tmp_path, resume=True),
             run_sampled(game(), AveragedIPO(), CONFIG))
    assert latest_state(tmp_path)["iteration"] == CONFIG.iterations
