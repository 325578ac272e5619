"""`nashpref theory …` in-process: files written and their numbers checked against the library computed
independently; bad input is one error line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nashpref.cli import main
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.gamefile import load_game
from nashpref.theory.logodds import solve_log_odds
from nashpref.theory.online import InstanceSpec, OnlineConfig, run_seeds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_payoff_writes_the_distance_between_the_two_equilibria(tmp_path, capsys):
    out = tmp_path / "payoff"
    code, stdout, _ = run(["theory", "payoff", "--games", "bt-mixture", "--out", out], capsys)
    assert code == 0 and "bt-mixture" in stdout
    row = json.loads((out / "results.json").read_text())["games"][0]
    game = load_game("bt-mixture")
    expected = (solve_log_odds(game)[0] - solve_equilibrium(game).policy).abs().sum(-1).max().item()
    assert row["l1_distance"] == pytest.approx(expected, rel=1e-9)
    assert (out / "README.md").read_text().startswith("| game |")


def test_explore_writes_the_same_scores_as_the_library(tmp_path, capsys):
    out = tmp_path / "explore"
    argv = ["theory", "explore", "--seeds", 2, "--rounds", 2, "--pairs-per-round", 8, "--instance.contexts", 2,
            "--instance.actions", 4, "--instance.dim", 2, "--out", out]
    code, _, _ = run(argv, capsys)
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    expected = run_seeds(InstanceSpec(contexts=2, actions=4, dim=2), OnlineConfig(rounds=2, pairs_per_round=8),
                         ("explore", "greedy", "passive"), range(2))
    for strategy, runs in expected.items():
        np.testing.assert_allclose(result["scores"][strategy], runs, rtol=1e-12)
        assert result["curves"][strategy][-1]["mean"] == pytest.approx(np.mean([r[-1] for r in runs]), rel=1e-12)
    assert (out / "explore.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("argv,message", [
    (["theory", "pessimism", "--k", 0], "--k must be an integer >= 1"),
    (["theory", "explore", "--instance.tau", 0], "--instance.tau must be a finite number > 0"),
    (["theory", "payoff", "--games", "rps"], "rps: the log-odds payoff needs"),
    (["theory", "recovery", "--sizes", 100], "--sizes must be at least two"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code, _, stderr = run(argv + ["--out", out], capsys)
    assert code == 2 and stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1
    assert not out.exists()
