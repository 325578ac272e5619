"""``mix:`` and ``ensemble:`` preference specs against values computed by hand from their members."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest_lm import PROMPTS, tiny_dir  # noqa: F401  (fixtures)
from nashpref.errors import NashprefError
from nashpref.preferences import load_text_oracle
from nashpref.preferences.combine import EnsembleOracle
from nashpref.preferences.rule import length_rule, warm_rule

A = ["the warm cat is happy.", "the cold robot waits.", "a river", "the gentle star is bright and kind."]
B = ["the dark cat is grim.", "the cold robot waits.", "the tall river is small and red.", "a gray star"]
X = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3]]
F32 = torch.finfo(torch.float32).eps


def test_mixture_of_rules_by_hand():
    oracle = load_text_oracle("mix:3=rule:length;1=rule:warm")
    got = oracle(X, A, B)
    expected = torch.tensor([0.75 * length_rule(x, a, b) + 0.25 * warm_rule(x, a, b) for x, a, b in zip(X, A, B)])
    torch.testing.assert_close(got, expected, rtol=0, atol=4 * F32)
    assert torch.allclose(got + oracle(X, B, A), torch.ones(4), rtol=0, atol=4 * F32)   # P + Pᵀ = 1 survives


def test_ensemble_min_and_mean_std_by_hand(tiny_dir):
    base = load_text_oracle(f"reward:{tiny_dir / 'reward'}", device="cpu")
    doubled = copy.deepcopy(base)
    with torch.no_grad():                       # a second member r₂ = 2·r₁ − bias: not a constant shift of r₁
        doubled.model.score.weight.mul_(2.0)
    r1 = base.rewards(X + X, A + B)
    r2 = doubled.rewards(X + X, A + B)
    assert not torch.allclose(r2 - r1, (r2 - r1)[:1].expand(8))
    for aggregate, c, r in [("min", 1.0, torch.minimum(r1, r2)),
                            ("mean-std", 1.5, (r1 + r2) / 2 - 1.5 * (r1 - r2).abs() / math.sqrt(2))]:
        oracle = EnsembleOracle([base, doubled], aggregate, c)
        scale = max(r1.abs().max().item(), r2.abs().max().item())
        torch.testing.assert_close(oracle.rewards(X + X, A + B), r, rtol=0, atol=16 * F32 * scale)
        torch.testing.assert_close(oracle(X, A, B), torch.sigmoid(r[:4] - r[4:]), rtol=0, atol=16 * F32 * scale)
    single = load_text_oracle(f"ensemble:mean-std@2:{tiny_dir / 'reward'}", device="cpu")
    torch.testing.assert_close(single(X, A, B), base(X, A, B), rtol=0, atol=0)   # one member: no spread


@pytest.mark.parametrize("spec,message", [
    ("mix:rule:length", "WEIGHT=KIND:ARG"), ("mix:0=rule:length", "weight > 0"),
    ("mix:1=magic:x", "unknown kind 'magic'"), ("ensemble:max:/x", "expected ensemble:min"),
    ("ensemble:min@2:/x", "expected ensemble:min"), ("ensemble:mean-std@-1:/x", "C ≥ 0"),
    ("ensemble:min:/no/such/model", "does not exist"),
])
def test_bad_combined_specs(spec, message):
    with pytest.raises(NashprefError, match=message):
        load_text_oracle(spec)
