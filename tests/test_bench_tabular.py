"""`nashpref bench tabular` (nashpref.benchmarks.tabular.race): a quick race on three small games, checked against
closed-form equilibria, the exact solver, reach iterations recomputed by hand from the stored curves, and the
query counts each solver's sampling scheme implies."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch
import tyro

from nashpref.benchmarks.tabular.race import TabularBenchConfig, reached_at, run_bench_tabular
from nashpref.core.equilibrium import solve_equilibrium
from nashpref.errors import NashprefError
from nashpref.core.gamefile import games_dir, load_game
from nashpref.solvers import REGISTRY
from nashpref.tolerance import tolerance

GAMES = ("rps", "weighted-rps", "condorcet-3")
BUDGET = 12_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Queries per context and round, from each solver's sampling scheme under its recommended settings:
# online IPO and Nash-MD-PG query K = 64 pairs; INPO and iterative DPO all K(K−1)/2 pairs of K = 8 samples; EGPO
# two preferences per triple, K = 64 triples, in both extragradient half-rounds. SPPO, DNO, SPO, COMAL and MPO ask each
# distinct pair of different actions once (at most N(N−1)/2 = 3 here), so their counts are read from their rows.
QUERIES_PER_ROUND = {"online-ipo": 64, "nash-md": 64, "inpo": 28, "iterative-dpo": 28, "egpo": 2 * 2 * 64,
                     "nash-mp": 2 * 8 + 2 * 8}
DISTINCT_PAIRS = {"sppo", "dno", "spo", "comal", "mpo"}
# K = 8: ONPO's first round has no memory (28 pair queries); every later one adds K queries against it
LATER_ROUND_EXTRA = {"onpo": 8}
# weighted-rps at τ = 0.1 (algorithms.md §10.3; games/weighted-rps.toml)
WEIGHTED_RPS_EQUILIBRIUM = [0.562001, 0.225349, 0.212650]


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    config = TabularBenchConfig(out=tmp_path_factory.mktemp("race") / "out", games=GAMES, quick=True,
                                query_budget=BUDGET, curve_points=100_000, progress=False)
    assert run_bench_tabular(config) == 0
    return config, json.loads((config.out / "results.json").read_text())


def rows(report: dict, mode: str, game: str | None = None) -> list[dict]:
    return [r for r in report["runs"] if r["mode"] == mode and (game is None or r["game"] == game)]


def test_exact_egpo_and_inpo_end_at_the_closed_form_equilibrium(race):
    _, report = race
    truths = {"rps": [1 / 3] * 3, "weighted-rps": WEIGHTED_RPS_EQUILIBRIUM}
    for game_name, truth in truths.items():
        game = load_game(game_name)
        exact = solve_equilibrium(game).policy
        for row in rows(report, "exact", game_name):
            if row["solver"] not in ("egpo", "inpo"):
                continue
            policy = torch.tensor(row["policy"], dtype=torch.float64)
            # EGPO contracts like (1 − τ/(1+τ))^t: exact to rounding after 200 steps; INPO's 200 steps leave gap
            # ~2e-8, i.e. an error ~1e-4 in π (the gap is quadratic in it): convergence bounds, not rounding
            accuracy = 2e-6 if row["solver"] == "egpo" else 1e-3
            torch.testing.assert_close(policy, torch.tensor([truth], dtype=torch.float64), atol=accuracy, rtol=0)
            assert (policy - exact).abs().sum().item() <= accuracy
            # the same L1 distance and gap recomputed from the same float64 numbers (JSON round-trips them)
            assert row["distance_to_equilibrium"] == pytest.approx((policy - exact).abs().sum().item(),
                                                                   abs=tolerance(torch.float64, length=3))
            # the reported gap is the game's gap of the reported policy, and as small as π*'s own
            assert row["final_gap"] == pytest.approx(game.gap(policy).max().item(),
                                                     abs=tolerance(torch.float64, length=3))
            assert abs(row["final_gap"] - game.gap(exact).max().item()) <= 1e-6


def first_iteration_staying_below(iterations: list[int], gaps: list[float], threshold: float) -> int | None:
    """By hand: the first iteration whose gap and every later one are ≤ threshold."""
    for k, iteration in enumerate(iterations):
        if all(g <= threshold for g in gaps[k:]):
            return iteration
    return None


def test_reach_is_the_first_iteration_that_stays_below(race):
    _, report = race
    checked = 0
    for row in report["runs"]:
        curve = row["curve"]
        assert curve["iteration"] == list(range(1, row["iterations"] + 1))   # every iteration was stored
        for threshold in report["thresholds"]:
            by_hand = first_iteration_staying_below(curve["iteration"], curve["gap"], threshold)
            hit = row["reach"][f"{threshold:g}"]
            assert (hit and hit["iteration"]) == by_hand
            if hit is not None and row["mode"] == "sampled":
                solver = row["solver"]
                if solver == "onpo":
                    expected = 28 * by_hand + LATER_ROUND_EXTRA[solver] * (by_hand - 1)
                elif solver in DISTINCT_PAIRS:        # between 0 and 3 queries a round
                    expected = curve["queries"][by_hand - 1]
                    assert expected <= 3 * by_hand
                else:
                    expected = by_hand * QUERIES_PER_ROUND[solver]
                assert hit["queries"] == expected       # integer counts
            checked += hit is not None
    assert checked >= 20        # most Nash solvers reach 1e-2 on these games: the comparison is not vacuous


def test_reached_at_on_a_hand_made_sequence():
    def as_rows(gaps):
        return [{"iteration": t + 1, "gap": g} for t, g in enumerate(gaps)]

    assert reached_at(as_rows([0.5, 0.005, 0.02, 0.004, 0.003]), 1e-2) == 4   # the dip at 2 does not hold
    assert reached_at(as_rows([0.001, 0.002]), 1e-2) == 1
    assert reached_at(as_rows([0.001, 0.2]), 1e-2) is None
    assert reached_at(as_rows([0.5, 0.01]), 1e-2) == 2                          # ≤ counts


def test_sampled_rows_spend_the_same_query_budget(race):
    _, report = race
    assert report["query_budget"] == BUDGET
    for row in rows(report, "sampled"):
        if row["solver"] in DISTINCT_PAIRS:      # 3 queries a round (μ covers all 3): the budget buys 4000
            # rounds, more than their tuned counts (1000 or 2000), which the race stops at unless --fill-budget
            assert row["iterations"] == REGISTRY[row["solver"]].sampled_defaults["iterations"] < BUDGET // 3
            assert row["queries_per_context"] <= 3 * row["iterations"]
            assert row["sampled"]["iterations"] == row["iterations"]
            continue
        first = 28 if row["solver"] == "onpo" else QUERIES_PER_ROUND[row["solver"]]
        later = first + LATER_ROUND_EXTRA.get(row["solver"], 0)
        assert row["iterations"] == 1 + (BUDGET - first) // later
        assert BUDGET - later < row["queries_per_context"] <= BUDGET
        assert row["sampled"]["iterations"] == row["iterations"]
    assert {r["solver"] for r in rows(report, "sampled")} == set(REGISTRY)


def test_iterative_dpo_loses_to_the_nash_solvers_on_intransitive_games(race):
    """algorithms.md §8.4 / iterative_dpo.py: iterative DPO heads for a Gibbs policy of a fitted BT reward, not the
    Nash equilibrium; on a cycle its iterates never settle near it."""
    config, report = race
    readme = (config.out / "README.md").read_text()
    for game in ("condorcet-3", "weighted-rps"):
        for mode in ("exact", "sampled"):
            gaps = {r["solver"]: r["final_gap"] for r in rows(report, mode, game)}
            best = min(g for name, g in gaps.items() if name != "iterative-dpo")
            assert gaps["iterative-dpo"] > 5 * max(best, 1e-3)
            if mode == "exact":
                assert gaps["iterative-dpo"] > 0.1 and best <= 1e-12      # exact-mode solvers reach π*
        assert f"**{game}**: iterative DPO ends at gap" in readme


def test_outputs_record_the_command_and_plots(race):
    config, report = race
    readme = (config.out / "README.md").read_text()
    assert readme.splitlines()[2:4] == ["```", report["command"]]     # the command on top, in a code block
    assert report["command"].startswith("nashpref bench tabular ")
    assert "](exact.png)" in readme and "](sampled.png)" in readme
    for name in ("exact.png", "sampled.png"):
        data = (config.out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000
    assert {"cpu", "cores", "python", "torch", "numpy"} <= report["machine"].keys()
    assert report["seconds"] > sum(report["mode_seconds"].values()) * 0.99
    assert len(report["load_before"]) == 3 and report["date"]
    assert sorted(p.name for p in config.out.parent.iterdir()) == ["out"]   # no staging folder left behind
    # the recorded command parses back into the very config that ran
    parsed = tyro.cli(TabularBenchConfig, args=shlex.split(report["command"])[3:])
    assert parsed == config


def test_tyro_builds_the_config_with_help(capsys):
    config = tyro.cli(TabularBenchConfig, args=["--games", "rps", "bt-mixture", "--solvers", "egpo",
                                                "iterative-dpo", "--modes", "sampled", "--query-budget", "5000",
                                                "--seeds", "3", "4", "--no-recommended", "--tau", "0.05",
                                                "--quick", "--out", "somewhere"])
    assert config == TabularBenchConfig(out=Path("somewhere"), games=("rps", "bt-mixture"),
                                        solvers=("egpo", "iterative-dpo"), modes=("sampled",), query_budget=5000,
                                        seeds=(3, 4), recommended=False, tau=0.05, quick=True)
    default = tyro.cli(TabularBenchConfig, args=[])
    assert default.solvers == tuple(REGISTRY) and "iterative-dpo" in default.solvers
    assert default.games == tuple(path.stem for path in sorted(games_dir().glob("*.toml")))
    with pytest.raises(SystemExit):
        tyro.cli(TabularBenchConfig, args=["--help"])
    assert "Preference queries per context" in capsys.readouterr().out


def test_unregularised_race_skips_tau_solvers_and_meets_the_hedge_bound(tmp_path):
    """At τ = 0 EGPO (needs τ > 0) is skipped. SPPO is Hedge in self-play: with payoffs in [0, 1] its regret after
    T steps of size η is at most L/η + ηT/8 (L = log(1/min μ) = log 3 here), and in self-play the unregularised gap
    of the average iterate is 2·regret/T."""
    out = tmp_path / "zero"
    iterations = 300
    run_bench_tabular(TabularBenchConfig(out=out, games=("rps", "weighted-rps"), solvers=("egpo", "sppo"),
                                         modes=("exact",), exact_iterations=iterations, tau=0.0, progress=False))
    report = json.loads((out / "results.json").read_text())
    assert {(s["game"], s["solver"]) for s in report["skipped"]} == {("rps", "egpo"), ("weighted-rps", "egpo")}
    assert [r["solver"] for r in report["runs"]] == ["sppo", "sppo"]
    for row in report["runs"]:
        eta = REGISTRY["sppo"]().step_size(load_game(row["game"], tau=0.0))
        bound = 2 * (math.log(3) / eta + eta * iterations / 8) / iterations
        assert -1e-12 <= row["final_gap"] <= bound
    assert "Skipped egpo on rps" in (out / "README.md").read_text()


@pytest.mark.parametrize("change, message", [
    ({"games": ("no-such-game",)}, "unknown game"),
    ({"solvers": ("egpo", "ppo")}, "unknown solver 'ppo'"),
    ({"modes": ("exact", "fast")}, "unknown mode 'fast'"),
    ({"exact_iterations": 0}, "exact_iterations must be an integer >= 1"),
    ({"query_budget": -5}, "query_budget must be an integer >= 1"),
    ({"query_budget": 100, "solvers": ("inpo", "egpo")}, "below one round of egpo"),
    ({"seeds": ()}, "seeds must be a non-empty list"),
    ({"tau": -1.0}, "tau must be a finite number >= 0"),
    ({"out": "FILE"}, "exists and is not a directory"),
    ({"out": "FILE/below"}, "is not a directory"),
])
def test_bad_input_raises_one_line_and_writes_nothing(tmp_path, change, message):
    (tmp_path / "FILE").write_text("x")
    options = {"out": "race", "games": ("rps",), "modes": ("sampled",), "query_budget": 30_000,
               "progress": False} | change
    options["out"] = tmp_path / options["out"]
    with pytest.raises(NashprefError, match=message) as err:
        run_bench_tabular(TabularBenchConfig(**options))
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_large_games_run_the_large_game_budget(tmp_path):
    """batch-256 has 256·16 > 1000 (context, action) pairs: it runs large_game_iterations; rps runs the full count.
    EGPO's KL to π*_τ contracts at least like (1 − ητ)^t = (10/11)^t at τ = 0.1 (η = 1/(1+τ)): after 40 steps
    it is below 2.2% of its start, so the gap must have fallen well below its value at μ."""
    out = tmp_path / "large"
    run_bench_tabular(TabularBenchConfig(out=out, games=("batch-256", "rps"), solvers=("egpo",), modes=("exact",),
                                         exact_iterations=60, large_game_iterations=40, progress=False))
    report = json.loads((out / "results.json").read_text())
    assert {r["game"]: r["iterations"] for r in report["runs"]} == {"batch-256": 40, "rps": 60}
    batch = next(r for r in report["runs"] if r["game"] == "batch-256")
    assert batch["final_gap"] < 1e-2 * report["games"]["batch-256"]["gap_at_mu"]     # the contraction bound above
    assert "On batch-256 (more than 1000 context-action pairs) every solver runs 40 iterations" in \
        (out / "README.md").read_text()
