"""The open-ended LLM race (`nashpref bench llm --preset pairwise`): its training rows carry the rule's labels, and
one tiny end-to-end run: a fitted pairwise classifier that is exactly antisymmetric at the style level, and rows
per iteration for the solver."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nashpref.benchmarks.llm import pairwise_race, race
from nashpref.benchmarks.llm import setup as llm_setup
from nashpref.preferences.rule import raters_probability, style

EPS32 = torch.finfo(torch.float32).eps


def test_oracle_rows_cover_every_style_and_quality_with_the_rules_labels():
    from nashpref.lm.tiny import NOUNS
    from nashpref.preferences.rule import prompt_noun, well_formed, words

    rows = pairwise_race.oracle_rows(400, seed=0)
    assert pairwise_race.oracle_rows(400, seed=0) == rows          # reproducible
    responses = [(r["prompt"], y) for r in rows for y in (r["a"], r["b"])]
    assert {style(y) for _, y in responses} == {"warm", "cold", "plain"}
    qualities = set()
    for prompt, y in responses:
        noun = prompt_noun(prompt)
        # quality by hand: ½ for naming the prompt's noun, ½ for a well-formed answer
        qualities.add(0.5 * (noun in words(y)) + 0.5 * well_formed(y))
        assert noun in NOUNS
    assert qualities == {0.0, 0.5, 1.0}
    for r in rows[:50]:
        qa = 0.5 * (prompt_noun(r["prompt"]) in words(r["a"])) + 0.5 * well_formed(r["a"])
        qb = 0.5 * (prompt_noun(r["prompt"]) in words(r["b"])) + 0.5 * well_formed(r["b"])
        assert r["label"] == raters_probability(style(r["a"]), qa, style(r["b"]), qb)


SMALL = llm_setup.BenchSize(llm_setup.SIZES["tiny"].model, pretrain_steps=30, sft_steps=30, train_prompts=6,
                            heldout_prompts=2, iterations=1, samples=2, max_new_tokens=10, eval_samples=2, lr=1e-3)


def test_pairwise_end_to_end_one_solver_one_iteration(tmp_path, monkeypatch):
    from nashpref.benchmarks.llm.config import LLMBenchConfig
    from nashpref.benchmarks.llm.run import run_bench_llm
    from nashpref.preferences import load_text_oracle

    monkeypatch.setitem(llm_setup.SIZES, "tiny", SMALL)
    monkeypatch.setattr(race, "RACE_SFT_STEPS", 30)
    monkeypatch.setattr(pairwise_race, "ORACLE_ROWS", 64)
    monkeypatch.setattr(pairwise_race, "STYLE_SET", 3)
    monkeypatch.setitem(pairwise_race.ORACLE_FIT, "epochs", 1)
    monkeypatch.setitem(race.PRESETS, "pairwise", race.RaceBudget(iterations=2, samples=2, lr=1e-3, lr_decay=0.5,
                                                                  heldout=2, eval_samples=3, max_new_tokens=10))
    out = tmp_path / "pairwise"
    report = run_bench_llm(LLMBenchConfig(preset="pairwise", out=out, methods=("inpo",), progress=False))
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0] and results["oracle"] == f"pairwise:{out / 'oracle'}"
    rows = results["runs"]["inpo"]["0"]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(0 <= r["win_rate_vs_reference"] <= 1 and r["kl"] >= 0 for r in rows)
    assert rows[1]["seconds"] > rows[0]["seconds"] > 0
    # the classifier is read in both orders: P(a ≻ b) + P(b ≻ a) = 1, so the style matrix has M + Mᵀ = 1 and a
    # diagonal of ½, up to float32 rounding of σ and the mean over 9 pairs
    m = torch.tensor(results["oracle_styles"], dtype=torch.float64)
    assert (m + m.T - 1).abs().max().item() <= 16 * EPS32
    oracle = load_text_oracle(results["oracle"])
    rng = random.Random(1)
    prompts = ["what is the cat like?"] * 4
    a = [pairwise_race.grammar_response(prompts[0], rng) for _ in range(4)]
    b = [pairwise_race.grammar_response(prompts[0], rng) for _ in range(4)]
    p, q = oracle.prefer_texts(prompts, a, b), oracle.prefer_texts(prompts, b, a)
    assert (p.double() + q.double() - 1).abs().max().item() <= 4 * EPS32
    assert results["oracle_fit"]["rows"] == 64 and (out / "win-rate.png").stat().st_size > 0
    assert "| inpo |" in report.read_text()
    assert json.loads((out / "oracle" / "fit.json").read_text())["stamp"]["rows"] == 64
    # a second invocation reuses the classifier and the finished run
    again = run_bench_llm(LLMBenchConfig(preset="pairwise", out=out, methods=("inpo",), progress=False))
    assert json.loads((out / "results.json").read_text())["meta"]["reused_runs"] == ["inpo/seed-0"]
    assert again == report
