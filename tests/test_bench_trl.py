"""Pure helpers of the TRL side-by-side benchmark (nashpref.benchmarks.trl, run by scripts/bench_trl.py). TRL itself
is never imported: CI does not install it, and the benchmark's modules import only the standard library at top
level."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nashpref.benchmarks.trl import plan as bench
from nashpref.benchmarks.trl.evaluate import speedups
from nashpref.benchmarks.trl.mixture import valid_positions
from nashpref.tolerance import tolerance


# ---- confidence intervals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("values, t_table", [
    ([0.4, 0.5, 0.6], 4.3027),                        # t_{0.975, 2} from a printed t table
    ([0.52, 0.61, 0.47, 0.58, 0.55], 2.7764),         # t_{0.975, 4}
    ([0.1, 0.3], 12.7062),                            # t_{0.975, 1}
])
def test_t_interval_matches_table_quantiles(values, t_table):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    out = bench.t_interval(values)
    assert out["n"] == n
    sums = tolerance("float64", scale=max(map(abs, values)), length=n)
    assert out["mean"] == pytest.approx(mean, abs=sums)
    assert out["half_width"] == pytest.approx(t_table * sd / math.sqrt(n), abs=1e-4)    # the table's 4 decimals
    assert out["low"] == pytest.approx(mean - out["half_width"], abs=sums)
    assert out["high"] == pytest.approx(mean + out["half_width"], abs=sums)


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, hits = 3000, 0
    for sample in rng.normal(0.3, 0.05, size=(trials, 3)):
        out = bench.t_interval(sample.tolist())
        hits += out["low"] <= 0.3 <= out["high"]
    # binomial sd of the coverage is 0.004 at 3000 trials; 4 sd either side
    assert abs(hits / trials - 0.95) < 0.016           # a statistical bound (see above), not rounding


def test_t_interval_with_one_seed_has_no_width():
    out = bench.t_interval([0.7])
    assert out["mean"] == 0.7 and math.isnan(out["half_width"]) and math.isnan(out["low"])
    assert bench.t_interval([])["n"] == 0


# ---- the iteration mapping ------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm, trl_algorithm", [("nash-md", "nash-md"), ("iterative-dpo", "online-dpo")])
def test_both_sides_take_the_same_steps_over_the_same_batches(algorithm, trl_algorithm):
    ours = bench.iteration_plan(algorithm, 8, 10, 56)
    trl = bench.iteration_plan(trl_algorithm, 8, 10, 56)
    assert bench.optimizer_steps("ours", ours["ours"], 56) == bench.optimizer_steps("trl", trl["trl"], 56) == 10
    assert ours["ours"]["prompts_per_round"] == trl["trl"]["per_device_train_batch_size"] == 8
    assert trl["trl"]["gradient_accumulation_steps"] == 1
    # responses per prompt: online DPO draws 2 policy samples (fixed in TRL); TRL Nash-MD 1 policy + 1 mixture
    trl_responses = 2 if trl_algorithm == "online-dpo" else 1 + 1
    our_responses = ours["ours"]["samples"] * (2 if algorithm == "nash-md" else 1)   # Nash-MD: K policy + K mixture
    assert our_responses == trl_responses == ours["responses_per_prompt"] == 2


def test_iteration_plan_rejects_more_prompts_than_the_training_set():
    with pytest.raises(ValueError, match="exceeds"):
        bench.iteration_plan("nash-md", 57, 10, 56)
    with pytest.raises(ValueError, match="iterations"):
        bench.iteration_plan("nash-md", 8, 0, 56)


@pytest.mark.parametrize("method", ["ours-nash-md-vllm", "ours-iterative-dpo-hf"])
def test_our_command_parses_into_the_intended_training_config(method, tmp_path):
    from nashpref.cli import parse

    argv = bench.our_command(method, Path("SETUP"), "rule:cyclic", tmp_path / "run", 3, 10, 8, 56, 32, 1e-3)
    config = parse(argv)
    algorithm = bench.METHODS[method]["algorithm"]
    assert config.solver == algorithm and config.seed == 3 and config.iterations == 10
    assert config.prompts_per_round == 8 and config.epochs == 1 and config.minibatches == 1
    assert config.samples == (1 if algorithm == "nash-md" else 2)
    assert config.lr == 1e-3 and config.max_new_tokens == 32 and config.heldout == 0
    assert config.tau == bench.TAU and config.max_grad_norm == 1.0 and config.weight_decay == 0.0
    assert config.temperature == 1.0 and config.top_k == 0 and config.top_p == 1.0 and config.labels == "exact"
    assert config.sampler == bench.METHODS[method]["sampler"]
    if algorithm == "nash-md":
        assert config.nash_md.mixture == bench.MIXTURE and config.nash_md.loss == "pg"
    else:
        assert config.iterative_dpo.label_smoothing == 0.0 and config.iterative_dpo.reference == "initial"


def test_round_robin_runs_every_pair_once_and_rotates_the_start():
    methods, seeds = ["a", "b", "c"], [0, 1, 2, 3]
    order = bench.round_robin(methods, seeds)
    assert sorted(order) == sorted((m, s) for m in methods for s in seeds)
    firsts = [order[i * len(methods)][0] for i in range(len(seeds))]
    assert firsts == ["a", "b", "c", "a"]
    assert [s for _, s in order] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


# ---- timing files ---------------------------------------------------------------------------------------------
def test_our_iteration_time_is_the_sum_of_the_four_phases(tmp_path):
    rows = [{"iteration": 1, "sampling_seconds": 0.5, "judging_seconds": 0.01, "training_seconds": 0.2,
             "sync_seconds": 0.04, "evaluation_seconds": 3.0, "loss": 0.1},
            {"iteration": 2, "sampling_seconds": 0.25, "judging_seconds": 0.02, "training_seconds": 0.125,
             "sync_seconds": 0.0, "evaluation_seconds": 0.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    times = bench.our_iteration_times(bench.read_jsonl(path))
    assert [t["iteration"] for t in times] == [1, 2]
    four = tolerance("float64", length=4)                          # a sum of four phases of size < 1
    assert times[0]["seconds"] == pytest.approx(0.75, abs=four)     # evaluation is not part of an iteration
    assert times[1]["seconds"] == pytest.approx(0.395, abs=four)
    assert times[1]["training"] == 0.125


def test_trl_step_time_keeps_the_wall_time_and_calls_the_rest_training():
    timing = {"steps": [{"step": 1, "seconds": 1.0, "sampling": 0.6, "judging": 0.1},
                        {"step": 2, "seconds": 0.5, "sampling": 0.3}]}
    times = bench.trl_step_times(timing)
    three = tolerance("float64", length=3)                           # wall − sampling − judging
    assert times[0]["seconds"] == 1.0 and times[0]["training"] == pytest.approx(0.3, abs=three)
    assert times[1]["judging"] == 0.0 and times[1]["training"] == pytest.approx(0.2, abs=three)


def test_median_skips_the_first_iteration():
    assert bench.median_after_first([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert bench.median_after_first([9.0, 1.0, 3.0]) == 2.0
    assert bench.median_after_first([4.0]) == 4.0
    assert math.isnan(bench.median_after_first([]))


def test_speedup_is_trl_time_over_ours():
    timing = {"ours-nash-md-hf": {"median_seconds_per_iteration": 0.1, "wall_seconds": 20.0},
              "trl-nash-md": {"median_seconds_per_iteration": 0.35, "wall_seconds": 10.0}}
    out = speedups(timing)
    ratio = pytest.approx(3.5, abs=tolerance("float64", scale=3.5))       # one division
    assert out == {"ours-nash-md-hf vs trl-nash-md": {"per_iteration": ratio, "wall": 0.5}}


# ---- failure lines and mixture checks ---------------------------------------------------------------------------
def test_error_line_reads_rank_prefixed_and_multi_line_errors():
    log = ("[rank0]: Traceback (most recent call last):\n"
           "[rank0]:   File \"x.py\", line 3, in <module>\n"
           "[rank0]: AttributeError: 'Parameter' object has no attribute 'weight_loader'\n")
    assert bench.error_line(log) == "AttributeError: 'Parameter' object has no attribute 'weight_loader'"
    log = ("UserWarning: not this\nTraceback (most recent call last):\n  File \"y.py\"\n"
           "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
           "  Value error, max_model_len (544) is too long\n")
    assert bench.error_line(log) == ("pydantic_core._pydantic_core.ValidationError: 1 validation error for "
                                     "ModelConfig | Value error, max_model_len (544) is too long")
    assert bench.error_line("all fine\n") is None


def test_valid_positions_stop_after_the_first_end_token():
    tokens = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 9, 2, 0]])
    expected = torch.tensor([[True, True, False, False], [True, True, True, True], [True, False, False, False]])
    assert torch.equal(valid_positions(tokens, [2]), expected)


def test_prompt_and_completion_text_from_trl_rows():
    assert bench.prompt_plain([{"role": "user", "content": "tell me"}]) == "tell me"
    assert bench.prompt_plain("plain") == "plain"
    assert bench.completion_plain([{"role": "assistant", "content": "a warm day"}]) == "a warm day"
