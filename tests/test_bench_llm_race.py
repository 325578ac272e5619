"""The known-answer LLM race (`nashpref bench llm --preset quick|full`): its class game against independent
computations (numpy extragradient, scipy maximisation, scipy Bradley–Terry fit), the rule:cycle oracle by hand,
the setup's refusal of a μ near the equilibrium, and one tiny end-to-end run whose rows are checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, root

from nashpref.benchmarks.llm import race
from nashpref.benchmarks.llm import setup as llm_setup
from nashpref.benchmarks.llm.classgame import BT_RIDGE, ClassGame, bt_gibbs_map, class_shares
from nashpref.benchmarks.llm.race_report import describe_setting, mixture_gap, stored_class_game, target_gaps
from nashpref.errors import BadInput
from nashpref.preferences.rule import CYCLE_WIN, rule_oracle

EPS = torch.finfo(torch.float64).eps
TAU = 0.1
MATRIX = np.array([[0.5, CYCLE_WIN, 1 - CYCLE_WIN], [1 - CYCLE_WIN, 0.5, CYCLE_WIN],
                   [CYCLE_WIN, 1 - CYCLE_WIN, 0.5]])
MU = np.array([0.84, 0.08, 0.08])


def test_cycle_rule_by_hand():
    oracle = rule_oracle("cycle")
    warm, cold, plain = "the happy cat is red.", "the grim cat is old.", "the quiet cat sees a dog."
    p = oracle.prefer_texts(["x"] * 4, [warm, cold, plain, warm], [cold, plain, warm, "the kind dog is gentle."])
    assert p.tolist() == pytest.approx([CYCLE_WIN, CYCLE_WIN, CYCLE_WIN, 0.5], abs=1e-7)
    assert class_shares([warm, cold, cold, plain]).tolist() == [0.25, 0.5, 0.25]


def objective(p: np.ndarray, q: np.ndarray) -> float:
    """f(p, q) = P(p ≻ q) − τ KL(p‖μ) + τ KL(q‖μ)."""
    kl = lambda x: float(np.sum(x * np.log(x / MU)))       # noqa: E731
    return float(p @ MATRIX @ q) - TAU * kl(p) + TAU * kl(q)


def maximise(f) -> float:
    """max over the simplex of f, by BFGS on softmax logits (smooth, concave in p)."""
    result = minimize(lambda z: -f(np.exp(z - z.max()) / np.exp(z - z.max()).sum()), np.zeros(3), method="BFGS",
                      options={"gtol": 1e-12})
    return -result.fun


@pytest.mark.parametrize("shares", [MU, [0.2, 0.3, 0.5], [0.5, 0.1, 0.4], [0.05, 0.9, 0.05]])
def test_class_gap_against_a_direct_maximisation(shares):
    pi = np.asarray(shares, dtype=float)
    game = ClassGame.build(torch.tensor(MU), TAU)
    # gap = max_p f(p, π) − min_q f(π, q), each side maximised numerically (no closed form used)
    direct = maximise(lambda p: objective(p, pi)) + maximise(lambda q: -objective(pi, q))
    # BFGS stops at gradient 1e-12 on a problem with curvature ≥ τ·min μ: the value error is far below this bound,
    # which is the rounding of the sums involved (a few dozen float64 operations on O(1) numbers)
    assert game.gap(torch.tensor(pi)) == pytest.approx(direct, abs=1e-9)


def test_iterates_mixture_gap_is_the_gap_of_the_mean_shares():
    # Three iterates leaning on each class in turn: answering with a uniformly drawn one yields uniform class
    # shares, whose gap is maximised directly (scipy), independently of nashpref's gap.
    rows = [{"class_shares": shares} for shares in ([0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6])]
    game = {"matrix": MATRIX.tolist(), "reference": MU.tolist()}
    uniform = np.full(3, 1 / 3)
    direct = maximise(lambda p: objective(p, uniform)) + maximise(lambda q: -objective(uniform, q))
    assert mixture_gap(stored_class_game(game, TAU), rows) == pytest.approx(direct, abs=1e-9)      # as in the direct test above
    # and it is not the mean of the iterates' own gaps (the gap is not linear in the policy)
    own = np.mean([maximise(lambda p, s=np.array(r["class_shares"]): objective(p, s))
                   + maximise(lambda q, s=np.array(r["class_shares"]): -objective(s, q)) for r in rows])
    assert abs(own - direct) > 0.01


def test_each_solver_is_scored_on_the_gap_it_targets():
    # SPPO (average iterate, ignores τ): the τ = 0 gap max_k (M s̄)_k − ½ of the iterates' mean shares s̄, worked
    # out by hand; INPO (last iterate, τ game): the τ gap of its last shares, maximised directly (scipy).
    game = {"matrix": MATRIX.tolist(), "reference": MU.tolist()}
    iterates = [[0.6, 0.2, 0.2], [0.2, 0.2, 0.6]]               # mean (0.4, 0.2, 0.4)
    results = {"class_game": game, "seeds": [0], "reference_class_gap": 0.3, "tau": TAU,
               "runs": {m: {"0": [{"class_shares": s} for s in iterates]} for m in ("sppo", "inpo", "onpo")}}
    stored = stored_class_game(game, TAU)
    sppo = target_gaps(results, "sppo", stored)
    w = CYCLE_WIN       # rows of M times (0.4, 0.2, 0.4): 0.2 + 0.2w + 0.4(1 − w), 0.4(1 − w) + 0.1 + 0.4w, ...
    by_hand = max(0.2 + 0.2 * w + 0.4 * (1 - w), 0.4 * (1 - w) + 0.1 + 0.4 * w, 0.4 * w + 0.2 * (1 - w) + 0.2) - 0.5
    assert (sppo["game"], sppo["iterate"]) == ("τ = 0", "mixture")
    assert sppo["gaps"] == [pytest.approx(by_hand, abs=8 * EPS)]
    # μ's τ = 0 gap, by hand: μ = (0.84, 0.08, 0.08); the best reply is plain (it beats warm)
    mu_by_hand = max(0.42 + 0.08 * w + 0.08 * (1 - w), 0.84 * (1 - w) + 0.04 + 0.08 * w,
                     0.84 * w + 0.08 * (1 - w) + 0.04) - 0.5
    assert sppo["reference"] == pytest.approx(mu_by_hand, abs=8 * EPS)
    inpo = target_gaps(results, "inpo", stored)
    last = np.array(iterates[-1])
    direct = maximise(lambda p: objective(p, last)) + maximise(lambda q: -objective(last, q))
    assert (inpo["game"], inpo["iterate"], inpo["reference"]) == ("τ", "last", 0.3)
    assert inpo["gaps"] == [pytest.approx(direct, abs=1e-9)]       # as in the direct test above
    # the curves: SPPO's first point is the first iterate's own τ = 0 gap (0.6, 0.2, 0.2): row 3 of M, plain
    first = max(0.3 + 0.2 * w + 0.2 * (1 - w), 0.6 * (1 - w) + 0.1 + 0.2 * w, 0.6 * w + 0.2 * (1 - w) + 0.1) - 0.5
    assert sppo["curves"] == [[pytest.approx(first, abs=8 * EPS), pytest.approx(by_hand, abs=8 * EPS)]]
    # ONPO takes τ when given one and its theory is about the average iterate: the τ gap of the mean shares
    onpo, mean = target_gaps(results, "onpo", stored), np.array([0.4, 0.2, 0.4])
    assert (onpo["game"], onpo["iterate"]) == ("τ", "mixture")
    assert onpo["gaps"] == [pytest.approx(maximise(lambda p: objective(p, mean))
                                          + maximise(lambda q: -objective(mean, q)), abs=1e-9)]


def test_race_settings_reach_the_training_config(tmp_path, monkeypatch):
    from nashpref.benchmarks.llm.config import LLMBenchConfig
    from nashpref.lm.config import make_solver

    setting = race.RaceSetting(lr=5e-4, lr_decay=0.9, adam_beta1=0.0, options=(("tau", 0.2), ("period", 8)))
    monkeypatch.setattr(race, "RACE_SETTINGS", {"comal": setting})
    budget = race.PRESETS["full"]
    build = lambda method, **options: race.race_train_config(        # noqa: E731
        LLMBenchConfig(preset="full", out=tmp_path, **options), budget, tmp_path, method, 0, "hf")
    tuned = build("comal")
    assert (tuned.lr, tuned.lr_decay, tuned.adam_beta1) == (5e-4, 0.9, 0.0)
    assert (make_solver(tuned).config.tau, make_solver(tuned).config.period) == (0.2, 8)
    plain = build("comal", tuned=False)
    assert (plain.lr, plain.lr_decay, plain.adam_beta1) == (budget.lr, budget.lr_decay, 0.9)
    assert make_solver(plain).config.period == 100                   # COMAL's own default
    other = build("inpo")
    assert (other.lr, other.lr_decay, other.adam_beta1) == (budget.lr, budget.lr_decay, 0.9)
    given = build("comal", lr=2e-3)                                  # --lr applies to every solver
    assert (given.lr, given.lr_decay, given.adam_beta1) == (2e-3, 0.9, 0.0)
    assert describe_setting(setting.describe()) == "lr 0.0005 × 0.9, β1 0, tau 0.2, period 8"
    assert describe_setting({}) == "preset"


def numpy_equilibrium(steps: int = 20_000) -> np.ndarray:
    """The τ-regularised equilibrium by extragradient mirror descent in numpy (independent of nashpref)."""
    log_mu, log_pi, eta = np.log(MU), np.log(MU), 1.0
    step = lambda lp, s: (log_mu * eta * TAU + lp + eta * s) / (1 + eta * TAU)     # noqa: E731
    normalise = lambda lp: lp - np.log(np.exp(lp - lp.max()).sum()) - lp.max()    # noqa: E731
    for _ in range(steps):
        half = normalise(step(log_pi, MATRIX @ np.exp(log_pi)))
        log_pi = normalise(step(log_pi, MATRIX @ np.exp(half)))
    return np.exp(log_pi)


def test_class_equilibrium_against_numpy_extragradient():
    game = ClassGame.build(torch.tensor(MU), TAU)
    expected = numpy_equilibrium()
    # extragradient contracts by 1/(1 + ητ) per step: after 2e4 steps it sits at the fixed point to rounding
    assert game.equilibrium.numpy() == pytest.approx(expected, abs=64 * EPS)
    assert abs(game.gap(game.equilibrium)) <= 64 * EPS
    # the fixed point π* ∝ μ exp(Pπ*/τ)
    fixed = MU * np.exp(MATRIX @ expected / TAU)
    assert expected == pytest.approx(fixed / fixed.sum(), abs=64 * EPS)
    assert game.gap(game.mu) > 0.2            # this μ is far from it


def test_bt_gibbs_policy_is_a_fixed_point_of_an_independent_bt_fit():
    game = ClassGame.build(torch.tensor(MU), TAU)
    pi = game.bt_gibbs.numpy()

    def gradient(free):      # of the ridged Bradley–Terry log-likelihood of M on π ⊗ π pairs (fit_bradley_terry's
        s = np.concatenate([[0.0], free])   # objective, written out again), with s_warm pinned at 0
        win = 1 / (1 + np.exp(-(s[:, None] - s[None, :])))           # σ(s_i − s_j)
        w = pi[:, None] * pi[None, :]
        g = (w * MATRIX * win.T).sum(1) - (w * MATRIX.T * win).sum(1) - BT_RIDGE * pi * s
        return g[1:]

    s = np.concatenate([[0.0], root(gradient, np.zeros(2), method="hybr", tol=1e-14).x])
    gibbs = MU * np.exp((s - s.max()) / TAU)
    # π is accepted as a fixed point when |map(π) − π| ≤ 1e-10; the map's gain near it is ≈ 4 (4c/(√3 τ) on a
    # cycle), so map(π) computed with an exact fit can sit up to ~10× that from π
    assert pi == pytest.approx(gibbs / gibbs.sum(), abs=1e-9)
    assert (bt_gibbs_map(game.game, game.bt_gibbs) - game.bt_gibbs).abs().max().item() <= 1e-10
    assert game.gap(game.bt_gibbs) > 0.05     # a Bradley–Terry fixed point is not the equilibrium here


def test_setup_refuses_a_reference_near_the_equilibrium(tmp_path):
    from nashpref.benchmarks.llm.config import LLMBenchConfig

    budget = race.PRESETS["quick"]
    near = ClassGame.build(torch.tensor(MU), TAU).equilibrium.tolist()
    (tmp_path / "reference-classes.json").write_text(json.dumps({"max_new_tokens": budget.max_new_tokens,
                                                                  "shares": near}))
    with pytest.raises(BadInput, match="below 0.2"):
        race.race_class_game(tmp_path, budget, LLMBenchConfig())


SMALL = llm_setup.BenchSize(llm_setup.SIZES["tiny"].model, pretrain_steps=30, sft_steps=30, train_prompts=6,
                            heldout_prompts=2, iterations=1, samples=2, max_new_tokens=10, eval_samples=2, lr=1e-3)


def test_race_end_to_end_one_solver_one_seed_one_iteration(tmp_path, monkeypatch):
    from nashpref.benchmarks.llm.config import LLMBenchConfig
    from nashpref.benchmarks.llm.run import run_bench_llm
    from nashpref.cli import main

    monkeypatch.setitem(llm_setup.SIZES, "tiny", SMALL)
    monkeypatch.setattr(race, "RACE_SFT_STEPS", 30)
    # the race's corpus is 8% warm, 4% plain: 32 responses of a 30-step SFT can miss a class, which the class game
    # refuses; an even corpus keeps every class in this small run
    monkeypatch.setattr(race, "RACE_SHARES", {"warm": 1 / 3, "cold": 1 / 3, "plain": 1 / 3})
    monkeypatch.setattr(race, "REFERENCE_SAMPLES", 4)
    monkeypatch.setitem(race.PRESETS, "quick", race.RaceBudget(iterations=1, samples=2, lr=1e-3, lr_decay=0.5, heldout=2,
                                                               eval_samples=3, max_new_tokens=10))
    out = tmp_path / "race"
    # a 30-step SFT cannot promise μ's gap ≥ 0.2; that check has its own test
    monkeypatch.setattr(race, "MIN_REFERENCE_GAP", -1.0)
    report = run_bench_llm(LLMBenchConfig(out=out, methods=("online-ipo",), progress=False))
    results = json.loads((out / "results.json").read_text())
    game = results["class_game"]
    mu = torch.tensor(game["reference"], dtype=torch.float64)
    rebuilt = ClassGame.build(mu, TAU)
    assert results["reference_class_gap"] == pytest.approx(rebuilt.gap(mu), abs=16 * EPS)
    rows = results["runs"]["online-ipo"]["0"]
    assert len(rows) == 1 and {"iteration", "class_gap", "kl", "win_rate_vs_reference", "seconds"} <= set(rows[0])
    row = rows[0]
    assert row["iteration"] == 1 and row["seconds"] > 0 and row["kl"] >= 0 and 0 <= row["win_rate_vs_reference"] <= 1
    shares = torch.tensor(row["class_shares"], dtype=torch.float64)
    assert shares.sum().item() == pytest.approx(1.0, abs=4 * EPS)
    # 2 held-out prompts × 3 responses: every share is a multiple of 1/6
    assert (shares * 6).tolist() == pytest.approx(torch.round(shares * 6).tolist(), abs=1e-12)
    assert row["class_gap"] == pytest.approx(rebuilt.gap(shares), abs=16 * EPS)
    league = results["league"]
    assert league["players"][0] == "online-ipo"
    for i in range(len(league["players"])):       # sᵀ M s = ½ for any s, since M + Mᵀ = 1
        assert league["win_rate"][i][i] == pytest.approx(0.5, abs=16 * EPS)
    assert all((out / name).stat().st_size > 0 for name in ("gap.png", "league.png", "target.png"))
    assert "| online-ipo |" in report.read_text()
    # bad input: one line, exit 2, nothing written
    before = sorted(p.name for p in out.iterdir())
    assert main(["bench", "llm", "--preset", "quick", "--out", str(out), "--size", "small"]) == 2
    assert main(["bench", "llm", "--preset", "full", "--out", str(out), "--sampler", "vllm"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before


def test_lr_decay_sets_each_iterations_rate():
    """--lr-decay: iteration t trains at lr · decay^(t−1), whatever the optimizer's restored state says."""
    from nashpref.lm.backend.single import SingleBackend
    from nashpref.lm.trainer import TrainHooks

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=123.0)
    hooks = TrainHooks(None, None, None, [], None, [], SingleBackend("cpu"))
    hooks.round_start(1)
    assert optimizer.param_groups[0]["lr"] == 123.0            # no decay asked: untouched
    hooks.optimizer, hooks.lr, hooks.lr_decay = optimizer, 2e-3, 0.5
    for t, expected in ((1, 2e-3), (4, 2.5e-4), (2, 1e-3)):
        hooks.round_start(t)
        assert optimizer.param_groups[0]["lr"] == expected     # powers of ½: exact in binary


def test_lr_warmup_ramps_the_first_iterations():
    """--lr-warmup W: iteration t ≤ W trains at lr · t/(W + 1) · decay^(t−1), then lr · decay^(t−1)."""
    from nashpref.lm.backend.single import SingleBackend
    from nashpref.lm.trainer import TrainHooks

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=123.0)
    hooks = TrainHooks(None, None, None, [], None, [], SingleBackend("cpu"))
    hooks.optimizer, hooks.lr, hooks.lr_decay, hooks.lr_warmup = optimizer, 2e-3, 0.5, 3
    # by hand: 2e-3 · {1/4, 2/4 · 1/2, 3/4 · 1/4, 1/8, 1/16}
    for t, expected in ((1, 5e-4), (2, 5e-4), (3, 3.75e-4), (4, 2.5e-4), (5, 1.25e-4)):
        hooks.round_start(t)
        # one product of three float64 factors: at most two roundings
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=4 * EPS, abs=0)


@pytest.mark.parametrize("decay", [0.0, 1.5, float("nan")])
def test_lr_decay_out_of_range_is_bad_input(decay, tmp_path):
    from nashpref.lm.config import TrainConfig

    config = TrainConfig(policy="p", preference="rule:cycle", prompts="x.jsonl", solver="inpo", out=tmp_path / "o",
                         lr_decay=decay)
    with pytest.raises(BadInput, match="--lr-decay"):
        config.validate()


@pytest.mark.parametrize("beta1", [-0.1, 1.0, float("nan")])
def test_adam_beta1_out_of_range_is_bad_input(beta1, tmp_path):
    from nashpref.lm.config import TrainConfig

    config = TrainConfig(policy="p", preference="rule:cycle", prompts="x.jsonl", solver="inpo", out=tmp_path / "o",
                         adam_beta1=beta1)
    with pytest.raises(BadInput, match="--adam-beta1"):
        config.validate()


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_beta1_steps_by_hand(beta1):
    """--adam-beta1: two AdamW steps on one weight with gradients 1 then −2, worked out by hand (β2 0.999, ε 1e-8,
    no weight decay): β1 0 makes the second step use the second gradient only."""
    from nashpref.lm.backend.single import SingleBackend

    weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = SingleBackend("cpu").make_optimizer([weight], lr=0.01, weight_decay=0.0, beta1=beta1)
    lr, b2, eps, expected = 0.01, 0.999, 1e-8, 0.0
    m = v = 0.0
    for t, grad in ((1, 1.0), (2, -2.0)):
        weight.grad = torch.tensor([grad], dtype=torch.float64)
        optimizer.step()
        m, v = beta1 * m + (1 - beta1) * grad, b2 * v + (1 - b2) * grad ** 2
        expected -= lr * (m / (1 - beta1 ** t)) / ((v / (1 - b2 ** t)) ** 0.5 + eps)
        assert weight.item() == pytest.approx(expected, abs=16 * EPS)
    # β1 0: the second step is +lr·2/√v̂₂ (v̂₂ = (0.999·0.001 + 0.004)/(1 − 0.999²)), the first −lr/(1 + ε)
    if beta1 == 0.0:
        v_hat = (0.999 * 0.001 + 0.004) / (1 - 0.999 ** 2)
        assert weight.item() == pytest.approx(-0.01 / (1 + 1e-8) + 0.02 / (v_hat ** 0.5 + 1e-8), abs=16 * EPS)


def test_lr_warmup_below_zero_is_bad_input(tmp_path):
    from nashpref.lm.config import TrainConfig

    config = TrainConfig(policy="p", preference="rule:cycle", prompts="x.jsonl", solver="inpo", out=tmp_path / "o",
                         lr_warmup=-1)
    with pytest.raises(BadInput, match="--lr-warmup"):
        config.validate()


def test_a_run_made_with_another_budget_is_not_reused(tmp_path):
    """runs.stale: a finished run whose options differ from the preset's (another lr, samples, solver option) is
    trained again; more iterations or another device only extend or move the same run."""
    import dataclasses

    from nashpref.benchmarks.llm.runs import stale
    from nashpref.io import write_json
    from nashpref.lm.config import TrainConfig, describe_config, make_solver

    run = TrainConfig(policy="p", preference="rule:cycle", prompts="x.jsonl", solver="onpo", out=tmp_path / "r",
                      lr=2e-3, lr_decay=0.9, samples=4, iterations=16)
    assert not stale(run)                                   # nothing there yet
    run.out.mkdir()
    write_json(run.out / "config.json", describe_config(run, make_solver(run)))
    assert not stale(run)
    assert not stale(dataclasses.replace(run, iterations=32, device="cpu"))
    for change in ({"lr": 1e-3}, {"lr_decay": 0.8}, {"samples": 8}, {"eval_samples": 16}, {"solver": "nash-md"},
                   {"adam_beta1": 0.0}):
        assert stale(dataclasses.replace(run, **change)), change
    # a run written before --adam-beta1 existed (no key in its config.json) trained at AdamW's β1 0.9
    older = describe_config(run, make_solver(run))
    del older["adam_beta1"]
    write_json(run.out / "config.json", older)
    assert not stale(run) and stale(dataclasses.replace(run, adam_beta1=0.0))
