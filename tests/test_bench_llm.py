"""The language-model benchmark: its ground-truth oracle by hand, its scores against hand-derived values and the
exact class game, and one small end-to-end run that resumes without retraining."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from nashpref.benchmarks.llm import setup as llm_setup
from nashpref.benchmarks.llm.run import class_game_gap, ideal_candidates, pool_best_response, win_rate
from nashpref.benchmarks.stats import mean_ci
from nashpref.preferences.rule import (STYLES, quality, raters_rule, rule_oracle, style,
                                       well_formed)
from nashpref.lm.tiny import NOUNS
from nashpref.tolerance import tolerance


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


CYCLE = (2 * sigmoid(3.0) + sigmoid(-6.0)) / 3        # one rater against, two for, at equal quality
PROMPT = "describe the gentle cat"
WARM_Q1 = "the happy cat is red and tall."
COLD_Q1 = "the grim cat is small and old."
PLAIN_Q1 = "the quiet cat sees a red dog."


def test_raters_rule_by_hand():
    assert quality(PROMPT, WARM_Q1) == 1.0
    assert quality(PROMPT, "the happy dog is red and tall.") == 0.5          # off topic, well formed
    assert quality(PROMPT, "the cat is happy") == 0.5                         # on topic, not the grammar
    assert quality(PROMPT, "happy happy") == 0.0
    assert [style(t) for t in (WARM_Q1, COLD_Q1, PLAIN_Q1)] == ["warm", "cold", "plain"]
    # the Condorcet cycle at equal quality; a mean of 3 sigmoids of arguments of size ≤ 3·2.5 (float64)
    rule = tolerance("float64", scale=7.5, length=3)
    assert raters_rule(PROMPT, WARM_Q1, COLD_Q1) == pytest.approx(CYCLE, abs=rule)
    assert raters_rule(PROMPT, COLD_Q1, PLAIN_Q1) == pytest.approx(CYCLE, abs=rule)
    assert raters_rule(PROMPT, PLAIN_Q1, WARM_Q1) == pytest.approx(CYCLE, abs=rule)
    # same style: quality decides, σ(3 · ½ · Δq) for every rater
    assert raters_rule(PROMPT, WARM_Q1, "the happy dog is red and tall.") == pytest.approx(sigmoid(0.75),
                                                                                           abs=rule)
    # across styles quality shifts every rater's utility by ½·Δq: warm (q ½) vs cold (q 0)
    low_warm, bare_cold = "happy cat", "grim grim"
    assert (quality(PROMPT, low_warm), quality(PROMPT, bare_cold)) == (0.5, 0.0)
    expected = (2 * sigmoid(3 * 1.25) + sigmoid(3 * -1.75)) / 3
    assert raters_rule(PROMPT, low_warm, bare_cold) == pytest.approx(expected, abs=rule)
    # ... and even the largest quality edge (1) does not flip the majority: cold (q 1) vs warm (q 0) < ½
    expected = (2 * sigmoid(3 * -0.5) + sigmoid(3 * 2.5)) / 3
    assert raters_rule(PROMPT, COLD_Q1, "happy happy") == pytest.approx(expected, abs=rule)
    assert expected < 0.5


WORDS = ["the", "a", "is", "and", "sees", "happy", "grim", "cold", "warm", "red", "cat", "dog", "."]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=12), st.lists(st.sampled_from(WORDS), max_size=12))
def test_raters_rule_is_a_preference(a, b):
    x, y = " ".join(a), " ".join(b)
    p = raters_rule(PROMPT, x, y)
    assert 0 < p < 1
    assert p + raters_rule(PROMPT, y, x) == pytest.approx(1.0, abs=tolerance("float64", scale=7.5, length=6))
    if x == y:
        assert p == 0.5


def test_styled_responses_are_top_quality_in_their_style():
    rng = random.Random(0)
    for noun in NOUNS:
        for s in STYLES:
            text = llm_setup.styled_response(noun, s, rng)
            assert style(text) == s and well_formed(text)
            assert quality(f"tell me about a {noun}", text) == 1.0


def test_win_rate_and_pool_best_response_by_hand():
    oracle = rule_oracle("raters")
    prompts = [PROMPT]
    # π answers warm (q = 1) always: the pool's best answer is plain (q = 1), which wins with CYCLE
    always_warm = [[WARM_Q1, WARM_Q1]]
    pool = ideal_candidates(prompts, seed=0)
    # the oracle answers in float32: σ of arguments ≤ 7.5, averaged over ≤ 3 opponents
    f32 = tolerance("float32", scale=7.5, length=3)
    assert pool_best_response(oracle, prompts, pool, always_warm) == pytest.approx(CYCLE, abs=f32)
    # the uniform mixture over styles at top quality: every candidate of quality 1 wins exactly ½
    uniform = [[WARM_Q1, COLD_Q1, PLAIN_Q1]]
    assert pool_best_response(oracle, prompts, pool, uniform) == pytest.approx(0.5, abs=f32)
    # win-rate: mean over all pairs; warm vs {warm, cold}: (½ + CYCLE) / 2
    assert win_rate(oracle, prompts, [[WARM_Q1]], [[WARM_Q1, COLD_Q1]]) == pytest.approx((0.5 + CYCLE) / 2,
                                                                                         abs=f32)


def test_class_game_against_an_independent_fixed_point():
    """The class game's equilibrium satisfies π* ∝ μ exp(P π* / τ) (checked by numpy iteration), and its gap
    formula matches a by-hand evaluation for μ itself."""
    tau = 0.2
    reference = [[WARM_Q1] * 6 + [COLD_Q1] * 3 + [PLAIN_Q1] * 1]
    game = class_game_gap([PROMPT], reference, reference, tau)
    assert game["classes"] == ["warm/q1", "cold/q1", "plain/q1"]
    mu = np.array([0.6, 0.3, 0.1])
    np.testing.assert_allclose(game["mu"], mu, rtol=0, atol=tolerance("float64", length=10))   # counts / 10
    P = np.array([[0.5, CYCLE, 1 - CYCLE], [1 - CYCLE, 0.5, CYCLE], [CYCLE, 1 - CYCLE, 0.5]])
    pi = mu.copy()
    for _ in range(20000):                     # damped fixed-point iteration of the regularised best response
        target = mu * np.exp(P @ pi / tau)
        pi = 0.9 * pi + 0.1 * target / target.sum()
    assert np.allclose(game["equilibrium"], pi, atol=1e-9)    # the damped iteration's convergence, not rounding
    # gap of μ: 2[τ log Σ μ exp(P(y ≻ μ)/τ) + τ KL(μ‖μ)] − 1
    expected = 2 * tau * math.log(np.sum(mu * np.exp(P @ mu / tau))) - 1
    assert game["gap"] == pytest.approx(expected, abs=tolerance("float64", scale=2.0, length=3))   # 2τ·(Pμ/τ)
    # responses of a class μ never produced count as mass outside μ
    off = class_game_gap([PROMPT], reference, [["the happy dog is red and tall.", WARM_Q1]], tau)
    assert off["mass_outside_mu"] == pytest.approx(0.5, abs=tolerance("float64", length=2))


def test_mean_ci_matches_scipy():
    values = [0.51, 0.55, 0.49, 0.53]
    mean, half = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values), abs=tolerance("float64", length=4))
    # scipy's interval goes through another route (sem, then a scaled t): rounding of terms of size ~0.5, and the
    # t quantile's own accuracy (~1e-15 relative)
    assert (mean - half, mean + half) == pytest.approx((low, high), abs=tolerance("float64", length=16))
    assert math.isnan(mean_ci([0.5])[1])


def test_prompt_sets_are_disjoint_and_distinct():
    train, heldout = llm_setup.prompt_sets(40, 10, seed=3)
    assert len(set(train)) == 40 and len(set(heldout)) == 10 and not set(train) & set(heldout)
    assert llm_setup.prompt_sets(40, 10, seed=3) == (train, heldout)


# ---- end to end -------------------------------------------------------------------------------------------------
SMALL = llm_setup.BenchSize(llm_setup.SIZES["tiny"].model, pretrain_steps=40, sft_steps=40, train_prompts=6,
                            heldout_prompts=3, iterations=2, samples=2, max_new_tokens=12, eval_samples=3, lr=1e-3)


def test_bench_llm_end_to_end_and_resume(tmp_path, monkeypatch):
    from nashpref.benchmarks.llm.config import LLMBenchConfig
    from nashpref.benchmarks.llm.run import run_bench_llm
    from nashpref.cli import main

    monkeypatch.setitem(llm_setup.SIZES, "tiny", SMALL)
    out = tmp_path / "bench"
    config = LLMBenchConfig(preset="raters", out=out, methods=("nash-md", "iterative-dpo"), seeds=(0, 1),
                            sampler="hf", progress=False)
    report = run_bench_llm(config)
    results = json.loads((out / "results.json").read_text())
    assert (out / "llm.png").stat().st_size > 0 and "| nash-md |" in report.read_text()
    stats_ = results["evaluation"]["stats"]
    f32 = tolerance("float32", length=SMALL.heldout_prompts * SMALL.eval_samples ** 2)   # float32 means over pairs
    assert stats_["reference"]["win_rate_vs_reference"] == pytest.approx(0.5, abs=f32)   # same responses
    for name in ("nash-md/seed-0", "nash-md/seed-1", "iterative-dpo/seed-0"):
        row = stats_[name]
        assert 0 <= row["win_rate_vs_reference"] <= 1 and row["kl_to_reference"] >= 0
        # the response pool holds the exact best response: ≥ the best single policy in the pool
        assert row["exploitability_responses"] >= row["exploitability_policies"] - f32
    assert stats_["iterative-dpo/seed-0"]["win_rate_vs_baseline"] == pytest.approx(0.5, abs=f32)
    runs = results["runs"]
    assert all(len(rows) == SMALL.iterations for rows in runs.values())
    # a second invocation reuses the finished runs: no retraining, identical scores
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/metrics.jsonl")}
    run_bench_llm(config)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/metrics.jsonl")} == stamps
    again = json.loads((out / "results.json").read_text())
    assert again["evaluation"]["stats"] == stats_
    assert sorted(again["meta"]["reused_runs"]) == sorted(runs) and results["meta"]["reused_runs"] == []
    # bad input: one line, exit 2, nothing written
    before = sorted(p.name for p in out.iterdir())
    assert main(["bench", "llm", "--preset", "raters", "--out", str(out), "--methods", "nash-md", "nope"]) == 2
    assert main(["bench", "llm", "--preset", "raters", "--out", str(out), "--samples", "1"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before
