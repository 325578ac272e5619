"""TabularPolicy and MatrixOracle against hand-computed values and exact distributions."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from nashpref.core.game import PreferenceGame
from nashpref.core.tabular import TabularPolicy
from nashpref.core.tabular import MatrixOracle
from nashpref.tolerance import assert_close

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

LOGITS = [[1.0, 2.0, 3.0], [0.5, -1.0, math.log(2.0)]]


def hand_log_softmax(row):
    total = sum(math.exp(x) for x in row)
    return [math.log(math.exp(x) / total) for x in row]


def test_log_prob_equals_log_softmax_by_hand():
    policy = TabularPolicy(torch.tensor(LOGITS, dtype=torch.float64))
    contexts = torch.tensor([1, 0, 1])
    responses = torch.tensor([[2, 0], [1, 1], [0, 2]])
    expected = [[hand_log_softmax(LOGITS[c])[a] for a in row] for c, row in zip(contexts.tolist(),
                                                                              responses.tolist())]
    got = policy.log_prob(contexts, responses)
    assert got.dtype == torch.float64 and got.shape == (3, 2)
    assert_close(got, torch.tensor(expected, dtype=torch.float64), length=3)   # a 3-term log-sum-exp
    # normalize is a no-op: a tabular response is one token.
    torch.testing.assert_close(policy.log_prob(contexts, responses, normalize=True), got, rtol=0, atol=0)


def test_log_prob_gradient_is_onehot_minus_pi():
    policy = TabularPolicy(torch.tensor(LOGITS, dtype=torch.float64))
    policy.log_prob(torch.tensor([0]), torch.tensor([[1]])).sum().backward()
    pi = [math.exp(x) for x in hand_log_softmax(LOGITS[0])]
    expected = [[-pi[0], 1 - pi[1], -pi[2]], [0.0, 0.0, 0.0]]
    assert_close(policy.logits.grad, torch.tensor(expected, dtype=torch.float64), scale=1.0, length=3)


def test_initialised_at_reference_policy():
    mu = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)
    policy = TabularPolicy(mu.log())
    assert_close(policy.probabilities(), mu, scale=1.0, length=3)


def sample_counts(draw, n_actions):
    return np.bincount(draw.flatten().numpy(), minlength=n_actions)


def test_sample_frequencies_match_policy_chi_square():
    policy = TabularPolicy(torch.tensor(LOGITS, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    draw = policy.sample(torch.tensor([0, 1]), 20_000, generator=generator)
    assert draw.shape == (2, 20_000) and draw.dtype == torch.long
    for c in range(2):
        pi = np.exp(hand_log_softmax(LOGITS[c]))
        counts = sample_counts(draw[c], 3)
        # p-value thresholds are statistical bounds: a false alarm has probability 1e-3
        assert chisquare(counts, 20_000 * pi).pvalue > 1e-3
        # The same test has power: the other context's distribution is rejected outright.
        other = np.exp(hand_log_softmax(LOGITS[1 - c]))
        assert chisquare(counts, 20_000 * other).pvalue < 1e-12


def test_sample_mixture_is_geometric_mixture():
    pi = np.array([0.7, 0.2, 0.1])
    mu = np.array([0.1, 0.3, 0.6])
    beta = 0.4
    mixture = pi ** (1 - beta) * mu ** beta
    mixture /= mixture.sum()
    policy = TabularPolicy(torch.tensor(np.log([pi])))
    reference = TabularPolicy(torch.tensor(np.log([mu]))).frozen()
    draw = policy.sample_mixture(torch.tensor([0]), 30_000, reference, beta, generator=torch.Generator().manual_seed(1))
    counts = sample_counts(draw, 3)
    assert chisquare(counts, 30_000 * mixture).pvalue > 1e-3
    # The arithmetic mixture (1−β)π + βμ is a different distribution, and the test tells them apart.
    assert chisquare(counts, 30_000 * ((1 - beta) * pi + beta * mu)).pvalue < 1e-6


def test_sampling_is_reproducible_with_a_generator():
    policy = TabularPolicy(torch.tensor(LOGITS, dtype=torch.float64))
    first = policy.sample(torch.tensor([0, 1]), 50, generator=torch.Generator().manual_seed(7))
    second = policy.sample(torch.tensor([0, 1]), 50, generator=torch.Generator().manual_seed(7))
    other = policy.sample(torch.tensor([0, 1]), 50, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_frozen_copy_is_detached_and_unaffected_by_training():
    policy = TabularPolicy(torch.tensor(LOGITS, dtype=torch.float64))
    frozen = policy.frozen()
    assert not frozen.logits.requires_grad
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    policy.log_prob(torch.tensor([0]), torch.tensor([[0]])).sum().backward()
    optimizer.step()
    assert not torch.equal(policy.logits.detach(), frozen.logits)
    torch.testing.assert_close(frozen.logits, torch.tensor(LOGITS, dtype=torch.float64), rtol=0, atol=0)


def test_state_dict_round_trip():
    policy = TabularPolicy(torch.tensor(LOGITS, dtype=torch.float64))
    other = TabularPolicy(torch.zeros(2, 3))
    other.load_state_dict(policy.state_dict())
    assert torch.equal(other.logits, policy.logits)


def test_bad_logits_shape():
    with pytest.raises(ValueError, match="contexts, actions"):
        TabularPolicy(torch.zeros(3))


def weighted_rps():
    a, b, c = 0.2, 0.6, 1.0
    A = torch.tensor([[0, -a, b], [a, 0, -c], [-b, c, 0]], dtype=torch.float64)
    P = torch.stack([0.5 + A / 2, 0.5 - A / 2])          # two contexts: the game and its transpose
    return PreferenceGame.create(P, torch.full((3,), 1 / 3, dtype=torch.float64), 0.1)


def test_matrix_oracle_reads_entries():
    oracle = MatrixOracle(weighted_rps())
    a, b = torch.tensor([[0, 1, 2], [0, 2, 1]]), torch.tensor([[1, 2, 0], [2, 0, 1]])
    got = oracle.prefer(torch.tensor([0, 1]), a, b)
    # Context 0: P(r≻p) = ½ − a/2, P(p≻s) = ½ − c/2, P(s≻r) = ½ − b/2.
    # Context 1 is the transpose: P(r≻s) = ½ − b/2, P(s≻r) = ½ + b/2, and P(p≻p) = ½.
    expected = [[0.4, 0.0, 0.2], [0.2, 0.8, 0.5]]
    assert_close(got, torch.tensor(expected, dtype=torch.float64), scale=1.0)    # ½ ± x/2: one rounding


def test_matrix_oracle_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal"):
        MatrixOracle(weighted_rps()).prefer(torch.tensor([0]), torch.tensor([[0, 1]]), torch.tensor([[0]]))
