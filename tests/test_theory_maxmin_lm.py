"""``maxmin:`` preference spec: the group weights and the mixture by hand, the spec's parsing, and the sampled self-play
loop on a tabular policy reaching the exact max-min point of two Bradley-Terry groups (found by bisection with the
exact equilibrium solver)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import DTYPE, PreferenceGame
from nashpref.core.gamefile import bradley_terry
from nashpref.core.tabular import MatrixOracle, TabularPolicy
from nashpref.errors import NashprefError
from nashpref.preferences import load_text_oracle
from nashpref.preferences.maxmin import MaxMinOracle, group_weights
from nashpref.preferences.payoff import game_oracle
from nashpref.preferences.rule import length_rule, warm_rule
from nashpref.sampled import single_thread
from nashpref.selfplay import Hooks, self_play
from nashpref.solvers import get_solver
from nashpref.tolerance import tolerance
from conftest_lm import tiny_dir  # noqa: F401  (fixture)


def test_group_weights_by_hand():
    v = torch.tensor([0.6, 0.4, 0.5], dtype=DTYPE)
    assert group_weights(v).tolist() == [0.0, 1.0, 0.0]
    assert group_weights(torch.tensor([0.4, 0.4, 0.5], dtype=DTYPE)).tolist() == [0.5, 0.5, 0.0]
    z = math.exp(-1.2) + math.exp(-0.8) + math.exp(-1.0)          # η = 2: exp(−2V)
    expected = torch.tensor([math.exp(-1.2), math.exp(-0.8), math.exp(-1.0)], dtype=DTYPE) / z
    assert torch.allclose(group_weights(v, 2.0), expected, rtol=0, atol=tolerance(DTYPE, length=3))


class FixedReference(TabularPolicy):
    """μ whose draws are fixed in advance."""

    def __init__(self, logits, drawn):
        super().__init__(logits)
        self.drawn = drawn

    def sample(self, contexts, n, generator=None):
        return self.drawn[contexts][:, :n]


def test_bound_oracle_weighs_the_worst_group_by_hand():
    # one context, three actions; group 1 prefers 0 > 1 > 2, group 2 the reverse
    P1 = torch.tensor([[[0.5, 0.7, 0.9], [0.3, 0.5, 0.6], [0.1, 0.4, 0.5]]], dtype=DTYPE)
    P2 = P1.transpose(-1, -2).clone()
    games = [PreferenceGame.create(P, [[1 / 3] * 3], 0.1) for P in (P1, P2)]
    oracle = MaxMinOracle([MatrixOracle(g) for g in games], eta=None)        # argmin
    bound = oracle.bind(FixedReference(torch.zeros(1, 3), torch.tensor([[1]])), torch.Generator())
    ctx, a, b = torch.tensor([0]), torch.tensor([[0, 0, 2]]), torch.tensor([[1, 2, 1]])
    p = bound.prefer(ctx, a, b)
    # V̂_1 = mean P1(a ≻ 1) = (0.7 + 0.7 + 0.4)/3 = 0.6; V̂_2 = (0.3 + 0.3 + 0.6)/3 = 0.4: group 2 is worse
    values, weights = bound.history[-1]
    assert torch.allclose(values, torch.tensor([0.6, 0.4], dtype=DTYPE), rtol=0, atol=tolerance(DTYPE, length=3))
    assert weights.tolist() == [0.0, 1.0]
    assert torch.equal(p, P2[0, a[0], b[0]].unsqueeze(0))
    # Hedge at η = 5 on the running sums of V̂: (0.6, 0.4) → w ∝ (e^−3, e^−2); again → (1.2, 0.8), w ∝ (e^−6, e^−4)
    hedge = MaxMinOracle([MatrixOracle(g) for g in games], eta=5.0).bind(bound.reference, torch.Generator())
    for first in (math.exp(-3) / (math.exp(-3) + math.exp(-2)), math.exp(-6) / (math.exp(-6) + math.exp(-4))):
        expected = first * P1[0, a[0], b[0]] + (1 - first) * P2[0, a[0], b[0]]
        assert torch.allclose(hedge.prefer(ctx, a, b)[0], expected, rtol=0, atol=tolerance(DTYPE, length=8))
    # unbound (the held-out evaluation): the equal mixture
    assert torch.allclose(oracle.prefer(ctx, a, b), (P1 + P2)[0, a[0], b[0]].unsqueeze(0) / 2, rtol=0,
                          atol=tolerance(DTYPE))


def test_spec_of_rules_is_the_equal_mixture_unbound():
    oracle = load_text_oracle("maxmin:rule:length;rule:warm")
    x, a, b = ["say hi"] * 2, ["the warm cat is happy.", "a"], ["the dark cat.", "a long and warm answer"]
    expected = torch.tensor([(length_rule(*t) + warm_rule(*t)) / 2 for t in zip(x, a, b)])
    torch.testing.assert_close(oracle(x, a, b), expected, rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    assert load_text_oracle("maxmin:rule:length;rule:warm").eta == 1.0
    assert load_text_oracle("maxmin:hedge@2.5:rule:length;rule:warm").eta == 2.5
    assert load_text_oracle("maxmin:argmin:rule:length;rule:warm").eta is None


@pytest.mark.parametrize("spec,message", [
    ("maxmin:rule:length", "at least two"), ("maxmin:hedge@0:rule:length;rule:warm", "ETA > 0"),
    ("maxmin:hedge@x:rule:length;rule:warm", "ETA > 0"), ("maxmin:argmin:rule:length", "at least two"), ("maxmin:rule:length;magic:x", "unknown kind"),
])
def test_bad_maxmin_specs(spec, message):
    with pytest.raises(NashprefError, match=message):
        load_text_oracle(spec)


# ---- the sampled loop reaches the exact max-min point ---------------------------------------------------------------
def two_groups(seed: int, tau: float):
    """Two BT groups on two contexts with opposed rewards, r₂ = −r₁ + noise, and a shared random μ."""
    rng = np.random.default_rng(seed)
    mu = rng.dirichlet(np.ones(5), size=2)
    r1 = 2 * rng.standard_normal((2, 5))
    r2 = -r1 + 2 * rng.standard_normal((2, 5))
    games = []
    for r in (r1, r2):
        P = np.stack([bradley_terry(r[c][None], np.ones(1), 1.0) for c in range(2)])
        games.append(PreferenceGame.create(P, mu, tau))
    return games


def win_rates(games, pi: torch.Tensor) -> torch.Tensor:
    """V_u(π) = mean_x πᵀ P_u μ: each group's win-rate of π against the reference."""
    return torch.stack([torch.einsum("ci,cij,cj->c", pi, g.P, g.mu).mean() for g in games])


def mixture_equilibrium(games, w: float) -> torch.Tensor:
    g1, g2 = games
    return solve_equilibrium(PreferenceGame.create(w * g1.P + (1 - w) * g2.P, g1.mu, g1.tau)).policy


def exact_maxmin_point(games) -> tuple[float, float]:
    """(w*, V*): the weight on group 1 whose mixture equilibrium is equally good for both groups, by bisection on
    V_1 − V_2 (increasing in w on these instances: checked at the ends), and that common value. Then V* is
    max_w min_u V_u(π_w) over the mixtures' equilibria."""
    def f(w):
        return (lambda v: (v[0] - v[1]).item())(win_rates(games, mixture_equilibrium(games, w)))

    lo, hi = 0.0, 1.0
    assert f(lo) < 0 < f(hi)
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    w = (lo + hi) / 2
    return w, win_rates(games, mixture_equilibrium(games, w)).min().item()


class Iterates(Hooks):
    def __init__(self, policy):
        self.policy, self.policies = policy, []

    def round_end(self, report) -> None:
        self.policies.append(self.policy.probabilities())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_maxmin_reaches_the_exact_max_min_point(seed):
    """Hedge (η = 1) with online IPO: the averaged late iterate's worse group is within a statistical margin of V*
    (measured deficits 0.005, 0.013, 0.011 for seeds 0–2) and beats the equal mixture's equilibrium; the late
    weights average to w* (measured |Δ| 0.023, 0.015, 0.002)."""
    tau, iterations = 0.05, 600
    games = two_groups(seed, tau)
    w_star, v_star = exact_maxmin_point(games)
    v_equal = win_rates(games, mixture_equilibrium(games, 0.5)).min().item()
    cls = get_solver("online-ipo")
    torch.manual_seed(seed)
    policy = TabularPolicy(games[0].log_mu)
    reference = TabularPolicy(games[0].log_mu).frozen()
    played, tau = game_oracle(MaxMinOracle([MatrixOracle(g) for g in games]), "probability", tau, reference, seed)
    hooks = Iterates(policy)
    with single_thread():
        self_play(cls(cls.Config()), policy, reference, played, torch.optim.SGD(policy.parameters(), lr=0.02),
                  num_contexts=2, iterations=iterations, samples=64, generator=torch.Generator().manual_seed(seed),
                  tau=tau, hooks=hooks)
    late = iterations // 2
    v = win_rates(games, torch.stack(hooks.policies[late:]).mean(0))
    mean_weight = torch.stack([w for _, w in played.history[late:]]).mean(0)[0].item()
    assert v.min().item() >= v_star - 0.025 and v.min().item() > v_equal
    assert abs(mean_weight - w_star) <= 0.05


# ---- `nashpref train` with a max-min preference on the tiny model ---------------------------------------------------
def test_train_with_a_maxmin_preference(tiny_dir, tmp_path):
    """With the argmin rule every preference call is answered by one group: each saved round must be the length
    rule's preferences throughout, or the reward model's throughout (online IPO makes one call per round)."""
    import json

    from nashpref.io import read_jsonl
    from nashpref.lm.config import TrainConfig
    from nashpref.lm.trainer import run_train

    prompts = tmp_path / "prompts.jsonl"
    texts = ["describe the red cat", "tell me about a robot", "what is the river like?", "describe the golden ship",
             "tell me about a bird", "what is the city like?"]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts), encoding="utf-8")
    reward = load_text_oracle(f"reward:{tiny_dir / 'reward'}", device="cpu", dtype="float32")
    out = tmp_path / "run"
    config = TrainConfig(policy=str(tiny_dir / "policy"), preference=f"maxmin:argmin:reward:{tiny_dir / 'reward'};"
                         "rule:length", prompts=str(prompts), solver="online-ipo", out=out, sampler="hf",
                         iterations=2, heldout=2, samples=2, eval_samples=2, max_new_tokens=8, lr=1e-3, tau=0.1)
    run_train(config, progress=False)
    assert len(read_jsonl(out / "metrics.jsonl")) == 2
    for iteration in (1, 2):
        pairs = read_jsonl(out / "rounds" / f"iteration-{iteration:04d}.jsonl")
        x, a, b = ([r[k] for r in pairs] for k in ("prompt", "a", "b"))
        saved = torch.tensor([r["preference"] for r in pairs])
        by_rule = torch.tensor([length_rule(*t) for t in zip(x, a, b)], dtype=torch.float32)
        by_model = reward(x, a, b)
        # the reward model scored these texts in other batches: float32 rounding of one forward (see test_train)
        slack = tolerance("float32", length=660)
        assert torch.equal(saved, by_rule) or torch.allclose(saved, by_model, rtol=0, atol=slack)


def test_a_resumed_maxmin_run_continues_the_group_weights(tiny_dir, tmp_path):
    """Hedge's running sums and the reference draws are checkpoint state: stopping after iteration 1 and resuming
    ends with the weights, metrics (group weights included) and rounds of an uninterrupted run, bit for bit."""
    import json

    from safetensors.torch import load_file

    from nashpref.io import read_jsonl
    from nashpref.lm.config import TrainConfig
    from nashpref.lm.trainer import run_train

    prompts = tmp_path / "prompts.jsonl"
    texts = ["describe the red cat", "tell me about a robot", "what is the river like?", "describe the golden ship",
             "tell me about a bird", "what is the city like?"]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts), encoding="utf-8")

    def config(out, **options):
        return TrainConfig(**{"policy": str(tiny_dir / "policy"), "preference": f"maxmin:reward:{tiny_dir / 'reward'};"
                              "rule:length", "prompts": str(prompts), "solver": "online-ipo", "out": out,
                              "sampler": "hf", "iterations": 3, "heldout": 2, "samples": 2, "eval_samples": 2,
                              "max_new_tokens": 8, "lr": 1e-3, "tau": 0.1} | options)

    run_train(config(tmp_path / "whole"), progress=False)
    run_train(config(tmp_path / "resumed", iterations=1), progress=False)
    run_train(config(tmp_path / "resumed", resume=True), progress=False)

    def comparable(out):
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in read_jsonl(out / "metrics.jsonl")]

    whole, resumed = comparable(tmp_path / "whole"), comparable(tmp_path / "resumed")
    assert resumed == whole
    weights = [row["group_weights"] for row in whole]
    assert all(len(w) == 2 and abs(sum(w) - 1.0) <= tolerance("float64", length=2) for w in weights)
    assert weights[0] != weights[-1]                      # the weights moved, so the resumed run had state to keep
    for iteration in (1, 2, 3):
        name = f"rounds/iteration-{iteration:04d}.jsonl"
        assert read_jsonl(tmp_path / "resumed" / name) == read_jsonl(tmp_path / "whole" / name)
    final = [load_file(next((tmp_path / run / "final").glob("*.safetensors"))) for run in ("whole", "resumed")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
