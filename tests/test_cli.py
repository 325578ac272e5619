"""The `nashpref` command line, run in-process through ``main(argv)`` (and once as the real console script) on the
shipped games. Numbers are checked against independent truths: the closed-form weighted-RPS equilibrium, the
exact solver, the game's own gap recomputed from the written policies, and extragradient stepped by hand."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nashpref.cli import main
from nashpref.core.equilibrium import extragradient_step, solve_equilibrium
from nashpref.core.gamefile import games_dir, load_game
from nashpref.io import read_jsonl
from nashpref.solvers import REGISTRY
from nashpref.tolerance import assert_close, tolerance

F64 = torch.float64

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def as_policy(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---- equilibrium ---------------------------------------------------------------------------------------------
def test_equilibrium_weighted_rps_matches_closed_form(tmp_path, capsys):
    """Weighted RPS with margins a=0.2, b=0.6, c=1.0: the τ=0 equilibrium is ∝ (c, b, a) = (5/9, 1/3, 1/9)."""
    out = tmp_path / "eq"
    code, stdout, stderr = run(["equilibrium", "--game", "weighted-rps", "--tau", 0, "--out", out], capsys)
    assert code == 0 and stderr == ""
    result = json.loads((out / "equilibrium.json").read_text())
    assert result["game"] == "weighted-rps" and result["tau"] == 0.0
    # τ = 0 is a linear program: HiGHS's feasibility tolerance (1e-9 level), not rounding, bounds these
    torch.testing.assert_close(as_policy(result["policies"]), as_policy([[5 / 9, 1 / 3, 1 / 9]]),
                               atol=1e-9, rtol=0)
    assert len(result["gap"]) == 1 and abs(result["gap"][0]) <= 1e-9
    assert {"method", "seconds"} <= result.keys()
    assert "0.555556" in stdout     # the table on stdout shows the policy


# ---- solve, exact mode ---------------------------------------------------------------------------------------
def test_solve_egpo_reaches_exact_equilibrium(tmp_path, capsys):
    out = tmp_path / "egpo"
    code, stdout, _ = run(["solve", "--game", "weighted-rps", "--solver", "egpo", "--tau", 0.1, "--out", out],
                          capsys)
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    game = load_game("weighted-rps", tau=0.1)
    assert (result["game"], result["tau"], result["solver"]) == ("weighted-rps", 0.1, "egpo")
    policies = as_policy(result["policies"])
    # EGPO's default budget drives the last iterate to the exact π* (Newton-certified, gap ≤ 1e-12).
    # (1e-8: the accuracy EGPO's default budget targets, not rounding)
    torch.testing.assert_close(policies, solve_equilibrium(game).policy, atol=1e-8, rtol=0)
    # The written gap is the exact gap of the written policy, one per context (JSON round-trips float64).
    assert_close(as_policy(result["gap"]), game.gap(policies), scale=1.0, length=3)
    assert max(result["gap"]) <= 1e-8

    rows = read_jsonl(out / "metrics.jsonl")
    iterations = [r["iteration"] for r in rows]
    assert iterations == sorted(set(iterations)) and iterations[-1] == result["iterations"]
    assert rows[-1]["gap"] == max(result["gap"])
    assert rows[0]["gap"] > 1e3 * rows[-1]["gap"]     # it did converge along the way
    assert_png(out / "convergence.png")
    assert "egpo" in stdout and "gap" in stdout       # the final table


def test_solve_egpo_option_reaches_the_solver(tmp_path, capsys):
    """--egpo.eta 0.3 for 7 iterations equals 7 extragradient steps with η = 0.3 taken by hand from μ."""
    out = tmp_path / "eta"
    code, _, _ = run(["solve", "--game", "bt-mixture", "--solver", "egpo", "--egpo.eta", 0.3, "--iters", 7,
                      "--out", out], capsys)
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["solver_config"]["eta"] == 0.3 and result["iterations"] == 7
    game = load_game("bt-mixture")
    log_pi = game.log_mu
    for _ in range(7):
        log_pi = extragradient_step(game, log_pi, 0.3)
    assert_close(as_policy(result["policies"]), log_pi.exp(), scale=1.0, length=7 * 2 * 3)    # 7 steps of 2


def test_average_iterate_solver_reports_the_average(tmp_path, capsys):
    """SPPO's guarantee is on the average: `policies` is (1/T) Σ π_t, `last_policies` is π_T (stepped by hand)."""
    out = tmp_path / "sppo"
    code, _, _ = run(["solve", "--game", "weighted-rps", "--solver", "sppo", "--tau", 0, "--iters", 40,
                      "--out", out], capsys)
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    game = load_game("weighted-rps", tau=0.0)
    solver = REGISTRY["sppo"]()
    log_pi, iterates = solver.init(game), []
    for t in range(40):
        log_pi = solver.step(game, log_pi, t)
        iterates.append(log_pi.exp())
    assert_close(as_policy(result["policies"]), torch.stack(iterates).mean(0), scale=1.0, length=40)
    assert_close(as_policy(result["last_policies"]), iterates[-1], scale=1.0, length=3)
    assert result["iterate"] == "average"
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[-1]["gap_last"] == pytest.approx(game.gap(iterates[-1]).item(), abs=tolerance(F64, length=3))


def test_solver_all_races_every_registered_solver(tmp_path, capsys):
    out = tmp_path / "race"
    code, stdout, _ = run(["solve", "--game", "weighted-rps", "--solver", "all", "--iters", 15, "--out", out],
                          capsys)
    assert code == 0
    game = load_game("weighted-rps")
    summary = json.loads((out / "summary.json").read_text())
    assert [row["solver"] for row in summary["solvers"]] == list(REGISTRY) and summary["skipped"] == {}
    for name, row in zip(REGISTRY, summary["solvers"]):
        result = json.loads((out / name / "result.json").read_text())
        assert result["solver"] == name and result["iterations"] == 15
        assert row["gap"] == pytest.approx(game.gap(as_policy(result["policies"])).max().item(),
                                           abs=tolerance(F64, length=3))
        assert len(read_jsonl(out / name / "metrics.jsonl")) == 15
        assert_png(out / name / "convergence.png")
        assert name in stdout
    assert_png(out / "convergence.png")


def test_solver_all_at_tau_zero_skips_solvers_that_need_tau(tmp_path, capsys):
    out = tmp_path / "race0"
    code, _, stderr = run(["solve", "--game", "rps", "--solver", "all", "--tau", 0, "--iters", 5, "--out", out],
                          capsys)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    needs_tau = {name for name, cls in REGISTRY.items() if cls.needs_tau}
    assert set(summary["skipped"]) == needs_tau
    assert {row["solver"] for row in summary["solvers"]} == set(REGISTRY) - needs_tau
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(set(REGISTRY) - needs_tau)
    assert all(line.startswith("note: skipped") for line in stderr.splitlines())


# ---- solve, sampled mode -------------------------------------------------------------------------------------
def test_sampled_mode_writes_the_same_files(tmp_path, capsys):
    out = tmp_path / "sampled"
    argv = ["solve", "--game", "weighted-rps", "--solver", "egpo", "--mode", "sampled", "--iters", 12,
            "--samples", 4, "--labels", "bernoulli", "--lr", 0.2, "--out", out]
    code, _, _ = run(argv, capsys)
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    game = load_game("weighted-rps")
    assert result["mode"] == "sampled" and result["iterations"] == 12
    assert result["sampled"]["samples"] == 4 and result["sampled"]["labels"] == "bernoulli"
    assert_close(as_policy(result["gap"]), game.gap(as_policy(result["policies"])), scale=1.0, length=3)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(1, 13))
    assert rows[-1]["gap"] == max(result["gap"])
    queries = [r["queries"] for r in rows]
    assert all(b > a for a, b in zip(queries, queries[1:])) and result["queries"] == queries[-1]
    assert_png(out / "convergence.png")

    # --seed reaches the sampler: the same seed repeats the run exactly, another seed does not.
    again, other = tmp_path / "again", tmp_path / "other"
    assert run(argv[:-1] + [again], capsys)[0] == 0
    assert run(argv[:-1] + [other, "--seed", 1], capsys)[0] == 0
    policies = json.loads((again / "result.json").read_text())["policies"]
    assert policies == result["policies"]
    assert json.loads((other / "result.json").read_text())["policies"] != policies


# ---- games, help, the console script -------------------------------------------------------------------------
def test_games_lists_every_game_file(capsys):
    code, stdout, _ = run(["games"], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:4] for line in stdout.splitlines()[2:]}
    files = sorted(games_dir().glob("*.toml"))
    assert sorted(rows) == sorted(p.stem for p in files) and len(files) >= 8
    for path in files:
        game = load_game(str(path))
        assert rows[path.stem] == [str(game.num_contexts), str(game.num_actions), f"{game.tau:g}"]


def test_help_shows_every_solver_option(capsys):
    code, stdout, _ = run(["solve", "--help"], capsys)
    assert code == 0
    for name, cls in REGISTRY.items():
        for field in cls.Config.__dataclass_fields__:
            assert f"--{name}.{field.replace('_', '-')}" in stdout


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("nashpref")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run([script, "equilibrium", "--game", "rps", "--out", tmp_path / "rps"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    policy = json.loads((tmp_path / "rps" / "equilibrium.json").read_text())["policies"][0]
    # uniform μ on a symmetric cycle: π* uniform, a Newton fixed point: rounding of s = Pπ/τ (3 terms, size 1/τ)
    assert policy == pytest.approx([1 / 3] * 3, abs=tolerance(F64, scale=1 / 0.1, length=3))
    bad = subprocess.run([script, "solve", "--game", "rps", "--solver", "egpo", "--out", tmp_path / "x",
                          "--no-such-flag", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("error: ") and "no-such-flag" in bad.stderr
    assert not (tmp_path / "x").exists()


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------------------
GOOD_MATRIX = "[[0.5, 0.4, 0.8], [0.6, 0.5, 0.0], [0.2, 1.0, 0.5]]"


def game_file(matrix: str = GOOD_MATRIX, reference: str = '"uniform"', tau: str = "0.1") -> str:
    return f'name = "bad"\ntau = {tau}\nreference = {reference}\n[preference]\nkind = "matrix"\nmatrix = {matrix}\n'


NEEDS_TAU = next(name for name, cls in REGISTRY.items() if cls.needs_tau)

BAD_INPUTS = {
    # name: (game file text or None for a shipped game, extra argv, text the error must contain)
    "not complementary": (game_file("[[0.5, 0.7], [0.7, 0.5]]"), [], "P + Pᵀ = 1"),
    "entry outside [0,1]": (game_file("[[0.5, 1.5], [-0.5, 0.5]]"), [], "[0, 1]"),
    "nan entry": (game_file("[[0.5, nan], [nan, 0.5]]"), [], "non-finite"),
    "not square": (game_file("[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]"), [], "square"),
    "reference not a distribution": (game_file(reference="[0.5, 0.2, 0.2]"), [], "sum to 1"),
    "reference with a zero": (game_file(reference="[0.5, 0.5, 0.0]"), [], "> 0"),
    "negative tau in file": (game_file(tau="-1.0"), [], "tau"),
    "garbled toml": ('name = "bad\n[preference\nkind = ', [], "TOML"),
    "negative tau flag": (None, ["--tau", "-0.5"], "tau"),
    "unknown game": (None, ["--game", "no-such-game"], "no-such-game"),
    "missing file": (None, ["--game", "{tmp}/missing.toml"], "missing.toml"),
    "unknown solver": (None, ["--solver", "no-such-solver"], "no-such-solver"),
    "solver needs tau": (None, ["--solver", NEEDS_TAU, "--tau", "0"], "tau > 0"),
    "zero iterations": (None, ["--iters", "0"], "--iters"),
    "iterations not a number": (None, ["--iters", "many"], "--iters"),
    "unknown flag": (None, ["--no-such-flag", "3"], "--no-such-flag"),
    "bad solver option": (None, ["--egpo.eta", "-1"], "eta"),
    "sampled zero samples": (None, ["--mode", "sampled", "--samples", "0"], "samples"),
    "sampled zero lr": (None, ["--mode", "sampled", "--lr", "0"], "lr"),
    "bad labels": (None, ["--mode", "sampled", "--labels", "maybe"], "maybe"),
}


def later_wins(argv: list[str]) -> list[str]:
    """Drop earlier copies of flags that ``argv`` repeats, so a case can override a default flag."""
    seen, kept = set(), []
    for i in range(len(argv) - 2, -1, -2):
        if argv[i] not in seen:
            seen.add(argv[i])
            kept[:0] = argv[i:i + 2]
    return kept


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    text, extra, expected = BAD_INPUTS[case]
    game = "weighted-rps"
    if text is not None:
        (tmp_path / "bad.toml").write_text(text)
        game = str(tmp_path / "bad.toml")
    out = tmp_path / "out"
    before = sorted(tmp_path.iterdir())
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    argv = later_wins(["--game", game, "--solver", "egpo", "--out", str(out)] + extra)
    code, stdout, stderr = run(["solve"] + argv, capsys)
    assert code == 2
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and stderr.endswith("\n")
    assert expected in stderr, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert sorted(tmp_path.iterdir()) == before      # no DIR, no staging leftovers next to it


def test_bad_game_for_equilibrium_and_existing_file_as_out(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(game_file("[[0.5, 0.9], [0.9, 0.5]]"))
    code, _, stderr = run(["equilibrium", "--game", tmp_path / "bad.toml", "--out", tmp_path / "eq"], capsys)
    assert code == 2 and stderr.startswith("error: ") and len(stderr.splitlines()) == 1
    assert str(tmp_path / "bad.toml") in stderr and not (tmp_path / "eq").exists()

    (tmp_path / "taken").write_text("a file")
    code, _, stderr = run(["equilibrium", "--game", "rps", "--out", tmp_path / "taken"], capsys)
    assert code == 2 and "not a directory" in stderr and (tmp_path / "taken").read_text() == "a file"


def test_rerun_into_existing_dir_replaces_files(tmp_path, capsys):
    """A second run into the same DIR replaces its files (and keeps files it does not produce)."""
    out = tmp_path / "again"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run(["solve", "--game", "rps", "--solver", "egpo", "--iters", 3, "--out", out], capsys)[0] == 0
    assert run(["solve", "--game", "rps", "--solver", "egpo", "--iters", 5, "--out", out], capsys)[0] == 0
    assert json.loads((out / "result.json").read_text())["iterations"] == 5
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["again"]
    assert math.isfinite(json.loads((out / "result.json").read_text())["gap"][0])


def test_recommended_sampled_settings_are_the_solvers_tuned_ones(tmp_path):
    """--recommended takes SPPO's tuned settings (its sampled_defaults and sampled_options) where the command left
    the defaults, keeps what the command set, and the run equals run_sampled called with those settings."""
    from nashpref.core.gamefile import load_game
    from nashpref.sampled import SampledConfig, run_sampled
    from nashpref.solvers.sppo import SPPO, Config

    out = tmp_path / "rec"
    assert main(["solve", "--game", "weighted-rps", "--solver", "sppo", "--mode", "sampled", "--recommended",
                 "--iters", "40", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    expected = SampledConfig(iterations=40, samples=4, lr=0.5, optimizer="sgd", epochs=1, seed=0)
    assert result["sampled"]["lr"] == 0.5 and result["sampled"]["optimizer"] == "sgd"
    assert result["sampled"]["iterations"] == 40          # set on the command line: kept
    options = Config(eta=1.0, reference_samples=1024, opponents=1024, log_partition="fit", distinct=True)
    assert result["solver_config"]["reference_samples"] == 1024 and result["solver_config"]["eta"] == 1.0
    run = run_sampled(load_game("weighted-rps"), SPPO(options), expected)
    assert_close(torch.tensor(result["policies"], dtype=torch.float64), run.policies, scale=1.0)


def test_sampled_mode_defaults_to_the_tuned_settings(tmp_path):
    """Without a flag, `solve --mode sampled` runs the tuned settings (the same run as --recommended);
    --no-recommended runs the generic defaults and the paper's options."""
    runs = {}
    for flag in ("--recommended", None, "--no-recommended"):
        out = tmp_path / str(flag)
        argv = ["solve", "--game", "weighted-rps", "--solver", "dno", "--mode", "sampled", "--iters", "10",
                "--out", str(out)] + ([flag] if flag else [])
        assert main(argv) == 0
        runs[flag] = json.loads((out / "result.json").read_text())
    assert runs[None]["policies"] == runs["--recommended"]["policies"]
    assert runs[None]["solver_config"]["opponents"] == 1024 and runs[None]["sampled"]["optimizer"] == "sgd"
    generic = runs["--no-recommended"]
    assert generic["solver_config"]["opponents"] == 0 and generic["solver_config"]["distinct"] is False
    assert (generic["sampled"]["optimizer"], generic["sampled"]["lr"], generic["sampled"]["samples"]) == \
        ("adam", 0.01, 8)


def test_bench_tabular_through_the_cli(tmp_path, capsys):
    """`nashpref bench tabular` runs the race and records the command; EGPO's written policy is the exact
    equilibrium (checked against solve_equilibrium), iterative DPO's is not; bad input writes nothing."""
    import json

    from nashpref.core.equilibrium import solve_equilibrium
    from nashpref.core.gamefile import load_game

    out = tmp_path / "race"
    argv = ["bench", "tabular", "--out", str(out), "--games", "weighted-rps", "--solvers", "egpo", "iterative-dpo",
            "--modes", "exact", "--quick"]
    assert main(argv) == 0
    assert f"wrote {out / 'README.md'}" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert "nashpref bench tabular" in (out / "README.md").read_text()
    star = solve_equilibrium(load_game("weighted-rps")).policy[0]
    runs = {row["solver"]: row for row in results["runs"]}
    assert runs["egpo"]["policy"][0] == pytest.approx(star.tolist(), abs=1e-6)     # --quick budget's accuracy
    assert runs["iterative-dpo"]["final_gap"] > 0.1
    assert main(["bench", "tabular", "--out", str(tmp_path / "bad"), "--solvers", "nope"]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("argv", [
    ["train", "--policy", "p", "--preference", "rule:raters", "--prompts", "x.jsonl", "--solver", "nash-md"],
    ["fit-preference", "--data", "pairs.jsonl", "--base", "p"],
    ["bench", "llm"],
])
def test_language_model_commands_without_the_lm_extra(argv, tmp_path, monkeypatch, capsys):
    """Without transformers/datasets installed, every LM command says which packages are missing, in one line."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("transformers", "datasets", "safetensors", "tokenizers")
                        else real(name, *a))
    out = tmp_path / "out"
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {'bench llm' if argv[0] == 'bench' else argv[0]} needs the language-model extra "
                   "(transformers, datasets, safetensors, tokenizers missing): pip install -e '.[lm]'"]
    assert not out.exists()
