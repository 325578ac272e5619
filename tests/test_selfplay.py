"""The self-play loop: rounds, batching, extragradient restore, queries, reproducibility, against hand values."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.errors import NashprefError
from nashpref.core.game import PreferenceGame
from nashpref.core.tabular import TabularPolicy
from nashpref.core.tabular import MatrixOracle
from nashpref.sampled import SampledConfig, run_sampled
from nashpref.rounds import SelfPlayRound, split_batch, take
from nashpref.selfplay import self_play
from nashpref.solvers.base import Solver, SolverConfig
from nashpref.tolerance import assert_close, tolerance

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

F64 = torch.float64


def weighted_rps(tau=0.1, contexts=1):
    a, b, c = 0.2, 0.6, 1.0
    A = torch.tensor([[0, -a, b], [a, 0, -c], [-b, c, 0]], dtype=F64)
    return PreferenceGame.create((0.5 + A / 2).expand(contexts, 3, 3), torch.full((3,), 1 / 3, dtype=F64), tau)


def make_round(game, logits, exact_labels=True, seed=0):
    previous = TabularPolicy(logits).frozen()
    reference = TabularPolicy(game.log_mu).frozen()
    return SelfPlayRound(previous, reference, MatrixOracle(game), torch.arange(game.num_contexts), 4,
                         exact_labels, torch.Generator().manual_seed(seed))


class OnlineIPO(Solver):
    """Online IPO (algorithms.md §8.2), written here so the loop is tested independently of the solver modules:
    y, y' ~ π_t, loss (log π(y)/μ(y) − log π(y')/μ(y') − (P(y ≻ y') − ½)/τ)²."""

    name = "test-online-ipo"
    Config = SolverConfig
    tau = 0.1

    def step(self, game, log_pi, t):
        raise NotImplementedError

    def collect(self, round):
        y, y2 = round.sample(round.samples), round.sample(round.samples)
        return {"contexts": round.contexts, "y": y, "y2": y2, "p": round.prefer(y, y2),
                "ref_y": round.log_prob(y, "reference"), "ref_y2": round.log_prob(y2, "reference")}

    def loss(self, batch, policy):
        h = (policy.log_prob(batch["contexts"], batch["y"]) - batch["ref_y"]
             - policy.log_prob(batch["contexts"], batch["y2"]) + batch["ref_y2"])
        residual = h - (batch["p"] - 0.5) / self.tau
        return (residual ** 2).mean(), {"residual": residual.abs().mean().item()}


class AveragedIPO(OnlineIPO):
    iterate = "average"


# ---- take and split_batch -------------------------------------------------------------------------------------
class Rows:
    """A stand-in for LM response objects: knows how to pick along K (take) and along B (rows)."""

    def __init__(self, data):
        self.data = data

    def take(self, index):
        return Rows(self.data.gather(1, index))

    def rows(self, index):
        return Rows(self.data[index])


def test_take_gathers_along_k_for_tensors_and_objects():
    responses = torch.tensor([[5, 6, 7], [8, 9, 10]])
    index = torch.tensor([[2, 0], [1, 1]])
    assert take(responses, index).tolist() == [[7, 5], [9, 9]]
    assert take(Rows(responses), index).data.tolist() == [[7, 5], [9, 9]]


def test_split_batch_partitions_every_value_along_contexts():
    batch = {"contexts": torch.arange(7), "y": torch.arange(14).view(7, 2), "responses": Rows(torch.arange(7) * 10),
             "texts": [f"t{i}" for i in range(7)], "beta": 0.5}
    parts = split_batch(batch, 3, torch.Generator().manual_seed(0))
    assert [len(p["contexts"]) for p in parts] == [3, 2, 2]
    rows = torch.cat([p["contexts"] for p in parts])
    assert sorted(rows.tolist()) == list(range(7)) and rows.tolist() != list(range(7))   # shuffled partition
    for p in parts:
        assert torch.equal(p["y"], batch["y"][p["contexts"]])
        assert torch.equal(p["responses"].data, p["contexts"] * 10)
        assert p["texts"] == [f"t{i}" for i in p["contexts"].tolist()]
        assert p["beta"] == 0.5


def test_split_batch_rejects_a_value_without_the_batch_dimension():
    with pytest.raises(ValueError, match=r"batch\['y'\] has leading dimension 2, expected 3"):
        split_batch({"contexts": torch.arange(3), "y": torch.zeros(2, 4)}, 2)


# ---- the round ------------------------------------------------------------------------------------------------
def test_round_samples_policy_reference_and_mixture_distributions():
    game = PreferenceGame.create(weighted_rps().P, torch.tensor([0.1, 0.3, 0.6], dtype=F64), 0.1)
    pi = torch.tensor([[0.7, 0.2, 0.1]], dtype=F64)
    round = make_round(game, pi.log(), seed=3)
    beta, n = 0.3, 30_000
    mixture = pi ** (1 - beta) * game.mu ** beta
    mixture /= mixture.sum()
    for source, expected, wrong in [("policy", pi, game.mu), ("reference", game.mu, pi),
                                    ("mixture", mixture, (1 - beta) * pi + beta * game.mu)]:
        draw = round.sample(n, source, beta)
        counts = np.bincount(draw.flatten().numpy(), minlength=3)
        # statistical bounds: a false alarm has probability 1e-3; the wrong law is rejected at 1e-6
        assert chisquare(counts, n * expected[0].numpy()).pvalue > 1e-3, source
        assert chisquare(counts, n * wrong[0].numpy()).pvalue < 1e-6, source     # the check has power
    with pytest.raises(ValueError, match="unknown sample source"):
        round.sample(2, "opponent")


def test_round_prefer_exact_and_bernoulli_labels_count_queries():
    game = weighted_rps()
    a = torch.full((1, 40_000), 0)
    b = torch.full((1, 40_000), 2)                 # P(rock ≻ scissors) = ½ + b/2 = 0.8
    exact = make_round(game, game.log_mu)
    assert torch.equal(exact.prefer(a, b), torch.full((1, 40_000), 0.8, dtype=F64))
    assert exact.queries == 40_000
    noisy = make_round(game, game.log_mu, exact_labels=False)
    labels = noisy.prefer(a, b)
    assert set(labels.unique().tolist()) == {0.0, 1.0}
    # Binomial std of the mean: sqrt(0.8·0.2/40000) = 0.002; 5 std of tolerance.
    assert abs(labels.mean().item() - 0.8) < 5 * 0.002
    noisy.prefer(a[:, :10], b[:, :10])
    assert noisy.queries == 40_010


def test_round_bernoulli_labels_have_mean_p_for_every_pair():
    game = weighted_rps()
    round = make_round(game, game.log_mu, exact_labels=False, seed=5)
    a = torch.tensor([[0, 1, 2, 0, 1]]).repeat_interleave(20_000, dim=1)
    b = torch.tensor([[1, 2, 0, 0, 0]]).repeat_interleave(20_000, dim=1)
    means = round.prefer(a, b).view(5, 20_000).mean(1)
    p = torch.tensor([0.4, 0.0, 0.2, 0.5, 0.6], dtype=F64)
    std = (p * (1 - p) / 20_000).sqrt()
    assert ((means - p).abs() <= 5 * std).all(), (means, p)      # statistical: 5 binomial std


def test_round_log_prob_is_frozen_detached_and_cached():
    game = weighted_rps()
    logits = torch.tensor([[0.3, -0.2, 1.0]], dtype=F64)
    round = make_round(game, logits)
    y = torch.tensor([[0, 2, 2, 1]])
    previous = round.log_prob(y, "previous")
    reference = round.log_prob(y, "reference")
    torch.testing.assert_close(previous, torch.log_softmax(logits, -1)[0, y[0]].unsqueeze(0), rtol=0, atol=0)
    assert_close(reference, torch.full((1, 4), -math.log(3), dtype=F64), length=3)
    assert not previous.requires_grad
    assert round.log_prob(y, "previous") is previous                 # cached for the same responses object
    assert round.log_prob(y.clone(), "previous") is not previous     # a new object is computed afresh
    with pytest.raises(ValueError, match="unknown model"):
        round.log_prob(y, "current")


# ---- the loop -------------------------------------------------------------------------------------------------
class Quadratic(Solver):
    """Loss ½ Σ_c ‖θ_c − 2 log π_t(·|c)‖²: its gradient θ − 2 log softmax(θ_t) depends on the round's
    frozen iterate, so the extragradient half-step visibly changes the second batch."""

    name = "test-quadratic"
    Config = SolverConfig

    def __init__(self, extragradient):
        super().__init__()
        self.extragradient = extragradient

    def step(self, game, log_pi, t):
        raise NotImplementedError

    def collect(self, round):
        actions = torch.arange(3).expand(len(round.contexts), 3)
        return {"contexts": round.contexts, "anchor": round.log_prob(actions, "previous")}

    def loss(self, batch, policy):
        return 0.5 * ((policy.logits[batch["contexts"]] - 2 * batch["anchor"]) ** 2).sum(), {}


def run_quadratic(theta0, optimizer_factory, iterations, extragradient, epochs=1, minibatches=1):
    game = weighted_rps(contexts=theta0.shape[0])
    policy = TabularPolicy(theta0)
    optimizer = optimizer_factory(policy.parameters())
    self_play(Quadratic(extragradient), policy, TabularPolicy(game.log_mu).frozen(), MatrixOracle(game), optimizer,
              num_contexts=game.num_contexts, iterations=iterations, samples=1,
              generator=torch.Generator().manual_seed(0), epochs=epochs, minibatches=minibatches)
    return policy, optimizer


def gradient(theta, anchor_theta):
    return theta - 2 * torch.log_softmax(anchor_theta, -1)


THETA0 = torch.tensor([[0.2, -0.4, 1.1], [1.0, 0.0, -0.5]], dtype=F64)


def test_plain_step_epochs_and_minibatches_by_hand():
    # Per context the loss is ½‖θ_c − a_c‖² with a fixed anchor within an iteration, and each minibatch holds
    # whole contexts, so each epoch takes every context once: θ_c − a_c shrinks by (1 − lr) per epoch.
    lr, epochs = 0.3, 3
    policy, _ = run_quadratic(THETA0, lambda p: torch.optim.SGD(p, lr=lr), 1, False, epochs=epochs, minibatches=2)
    anchor = 2 * torch.log_softmax(THETA0, -1)
    assert_close(policy.logits.detach(), anchor + (1 - lr) ** epochs * (THETA0 - anchor), length=epochs * 2)


def test_extragradient_restores_parameters_and_momentum_by_hand():
    lr, m, iterations = 0.2, 0.9, 3
    policy, optimizer = run_quadratic(THETA0, lambda p: torch.optim.SGD(p, lr=lr, momentum=m), iterations, True)
    theta, buf = THETA0.clone(), None
    stale_theta, stale_buf = THETA0.clone(), None      # what a loop that forgot to restore the momentum would do
    for _ in range(iterations):
        g = gradient(theta, theta)
        half = theta - lr * (g if buf is None else m * buf + g)          # θ_{t+½}
        g2 = gradient(theta, half)                                       # new batch at θ_{t+½}, gradient at θ_t
        buf = g2 if buf is None else m * buf + g2
        theta = theta - lr * buf
        g = gradient(stale_theta, stale_theta)
        stale_buf = g if stale_buf is None else m * stale_buf + g
        stale_half = stale_theta - lr * stale_buf
        stale_buf = m * stale_buf + gradient(stale_theta, stale_half)
        stale_theta = stale_theta - lr * stale_buf
    # two (half-)steps per iteration, each a few roundings of quantities of the size of θ
    assert_close(policy.logits.detach(), theta, scale=THETA0.abs().max().item(), length=2 * iterations)
    assert_close(optimizer.state[policy.logits]["momentum_buffer"], buf, length=2 * iterations)
    assert (policy.logits.detach() - stale_theta).abs().max() > 1e-2


def test_extragradient_restores_parameters_and_adam_state_by_hand():
    lr, b1, b2, eps, iterations = 0.05, 0.9, 0.999, 1e-8, 3
    policy, optimizer = run_quadratic(THETA0, lambda p: torch.optim.Adam(p, lr=lr), iterations, True)

    def adam(theta, g, m, v, k):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        return theta - lr * (m / (1 - b1 ** k)) / ((v / (1 - b2 ** k)).sqrt() + eps), m, v

    theta, m, v = THETA0.clone(), torch.zeros_like(THETA0), torch.zeros_like(THETA0)
    for k in range(1, iterations + 1):
        half, _, _ = adam(theta, gradient(theta, theta), m, v, k)
        theta, m, v = adam(theta, gradient(theta, half), m, v, k)
    state = optimizer.state[policy.logits]
    assert state["step"].item() == iterations            # the half-steps left no trace in the step count
    assert_close(state["exp_avg"], m, length=2 * iterations)
    assert_close(state["exp_avg_sq"], v, length=2 * iterations)
    assert_close(policy.logits.detach(), theta, scale=THETA0.abs().max().item(), length=2 * iterations)


class CountingSolver(OnlineIPO):
    """Records each round's contexts; asks for K pairs per context, so K·B queries per round."""

    def __init__(self, extragradient):
        super().__init__()
        self.extragradient = extragradient
        self.contexts, self.taus = [], []

    def collect(self, round):
        self.contexts.append(round.contexts.clone())
        self.taus.append(round.tau)
        return super().collect(round)


@pytest.mark.parametrize("extragradient", [False, True])
def test_queries_contexts_per_round_and_info(extragradient):
    game = PreferenceGame.create(weighted_rps().P.expand(10, 3, 3), torch.full((3,), 1 / 3, dtype=F64), 0.1)
    solver = CountingSolver(extragradient)
    infos = []
    config = SampledConfig(iterations=6, samples=5, contexts_per_round=4)
    run_sampled(game, solver, config, on_iteration=lambda t, row: infos.append((t, row)))
    rounds = 2 if extragradient else 1
    assert [t for t, _ in infos] == list(range(1, 7))
    assert [row["queries"] for _, row in infos] == [t * rounds * 4 * 5 for t in range(1, 7)]
    assert all({"gap", "loss", "residual", "seconds", "queries"} <= row.keys() for _, row in infos)
    assert len(solver.contexts) == 6 * rounds
    assert solver.taus == [0.1] * (6 * rounds)          # the loop hands the game's τ to the solver
    for contexts in solver.contexts:
        assert len(contexts) == 4 and len(set(contexts.tolist())) == 4 and contexts.max() < 10
    if extragradient:       # the half-step round uses the same contexts
        assert all(torch.equal(a, b) for a, b in zip(solver.contexts[::2], solver.contexts[1::2]))
    assert len(set(torch.cat(solver.contexts).tolist())) > 4


# ---- run_sampled ----------------------------------------------------------------------------------------------
def config(**overrides):
    base = dict(iterations=25, samples=4, labels="bernoulli", lr=0.05, optimizer="adam", minibatches=2, epochs=2,
                contexts_per_round=3, seed=11)
    return SampledConfig(**(base | overrides))


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_seeded_runs_are_reproducible_bit_for_bit():
    game = weighted_rps(contexts=4)
    first = run_sampled(game, OnlineIPO(), config())
    second = run_sampled(game, OnlineIPO(), config())
    other = run_sampled(game, OnlineIPO(), config(seed=12))
    assert torch.equal(first.policies, second.policies)
    assert without_seconds(first.metrics) == without_seconds(second.metrics)
    assert not torch.equal(first.policies, other.policies)


def test_average_iterate_is_the_mean_of_the_last_iterates():
    # Runs are reproducible, so the run of length t passes through the same π_t as the longer runs.
    game = weighted_rps(contexts=2)
    lasts = [run_sampled(game, AveragedIPO(), config(iterations=t)).last_policies for t in (1, 2, 3)]
    run = run_sampled(game, AveragedIPO(), config(iterations=3))
    assert_close(run.policies, sum(lasts) / 3, scale=1.0, length=3)
    assert torch.equal(run.last_policies, lasts[-1])
    # the same gap function on the same iterate: equal up to the rounding of the running average (3 terms)
    slack = tolerance(F64, length=3)
    assert run.metrics[-1]["gap"] == pytest.approx(game.gap(run.policies).max().item(), abs=slack)
    assert run.metrics[-1]["gap_last"] == pytest.approx(game.gap(run.last_policies).max().item(), abs=slack)


def test_loop_with_online_ipo_loss_reaches_the_exact_equilibrium():
    game = weighted_rps()
    run = run_sampled(game, OnlineIPO(), SampledConfig(iterations=600, samples=16, lr=0.01, optimizer="adam"))
    star = solve_equilibrium(game).policy
    assert run.metrics[0]["gap"] > 0.05
    # Sampling noise keeps the iterates in a band around π*: over the last 100 iterates the gap stayed ≤ 8e-4.
    # (statistical bounds from seeded runs, not rounding)
    assert max(row["gap"] for row in run.metrics[-100:]) < 2e-3
    assert (run.policies - star).abs().max() < 0.03


@pytest.mark.parametrize("field, value, message", [
    ("samples", 0, "samples must be an integer >= 1"), ("lr", -1.0, "lr must be a finite number > 0"),
    ("labels", "soft", "labels must be 'exact' or 'bernoulli'"), ("optimizer", "rmsprop", "optimizer must be"),
    ("iterations", -1, "iterations must be an integer >= 0"), ("contexts_per_round", 0, "contexts_per_round")])
def test_bad_config_is_a_game_error(field, value, message):
    with pytest.raises(NashprefError, match=message):
        run_sampled(weighted_rps(), OnlineIPO(), SampledConfig(**{field: value}))


class BatchRecorder(OnlineIPO):
    """Keeps every batch its loss is called with, and the logits it is called at."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def loss(self, batch, policy):
        self.steps.append((batch, policy.logits.detach().clone()))
        return super().loss(batch, policy)


@pytest.mark.parametrize("minibatches", [1, 2])
def test_sgd_steps_each_context_by_lr_times_its_own_loss_gradient(random_game, minibatches):
    # A tabular policy's logits of one context see only that context's loss terms: under SGD the step on context c
    # must be −lr · ∇ℓ_c (its own loss on its own rows) whatever the number of contexts in the step, so that a lr
    # tuned on one-context games carries to many. Checked against that gradient computed on context c's rows alone.
    game, lr = random_game(5, 3, 0.1, contexts=4), 0.3
    solver = BatchRecorder()
    run = run_sampled(game, solver, SampledConfig(iterations=1, samples=6, lr=lr, optimizer="sgd",
                                                  minibatches=minibatches))
    assert len(solver.steps) == minibatches
    expected = game.log_mu.clone()
    for batch, before in solver.steps:
        for row, context in enumerate(batch["contexts"].tolist()):
            own_rows = {key: value[row:row + 1] for key, value in batch.items()}
            policy = TabularPolicy(before)
            loss, _ = OnlineIPO.loss(solver, own_rows, policy)
            loss.backward()
            expected[context] = before[context] - lr * policy.logits.grad[context]
    # the mean over 4 contexts would have stepped each by lr/4 (or lr/2 per minibatch): far outside the tolerance
    assert_close(run.last_policies, torch.softmax(expected, -1), length=game.num_actions)
