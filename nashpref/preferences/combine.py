"""Oracles built from other oracles: a weighted mixture (``mix:``) and a pessimistic reward-model ensemble
(``ensemble:``).

* ``mix:W1=SPEC1;W2=SPEC2;…`` — P = Σ_k w_k P_k with w normalised to sum 1: a population of raters drawn with
  probabilities w (the bt-mixture of the tabular games). Any P_k satisfying P + Pᵀ = 1 keeps it.
* ``ensemble:AGG:PATH1,PATH2,…`` — K reward models r_k, aggregated per response and then compared as Bradley-Terry,
  P = σ(r̃(x, a) − r̃(x, b)), with AGG ``min`` (r̃ = min_k r_k) or ``mean-std@C`` (r̃ = mean_k r_k − C·std_k r_k,
  unbiased std). Conservative aggregation against reward over-optimisation: Coste et al., arXiv 2310.02743; its
  tabular counterpart (bootstrap ensembles, min) is ``nashpref.theory.pessimism``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from nashpref.errors import BadInput
from nashpref.preferences.base import Prompt, TextOracle, check_lengths, load_text_oracle, register
from nashpref.preferences.reward import RewardOracle


@register
class MixtureOracle(TextOracle):
    """Σ_k w_k P_k(a ≻ b | x)."""

    prefix = "mix"

    def __init__(self, oracles: Sequence[TextOracle], weights: Sequence[float]):
        total = sum(weights)
        self.oracles, self.weights = list(oracles), [w / total for w in weights]

    @classmethod
    def from_spec(cls, arg: str, *, device: str | None = None, dtype: str = "auto") -> "MixtureOracle":
        oracles, weights = [], []
        for part in arg.split(";"):
            weight, sep, spec = part.partition("=")
            try:
                w = float(weight)
            except ValueError:
                w = math.nan
            if not sep or not spec or not math.isfinite(w) or w <= 0:
                raise BadInput(f"--preference mix:{arg}: each part must be WEIGHT=KIND:ARG with a weight > 0, "
                               f"got {part!r}")
            oracles.append(load_text_oracle(spec, device=device, dtype=dtype))
            weights.append(w)
        return cls(oracles, weights)

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        check_lengths("MixtureOracle", prompts, a, b)
        return sum(w * oracle.prefer_texts(prompts, a, b).float() for w, oracle in zip(self.weights, self.oracles))


@register
class EnsembleOracle(TextOracle):
    """σ(r̃(x, a) − r̃(x, b)) for the min or mean − C·std of K reward models."""

    prefix = "ensemble"

    def __init__(self, members: Sequence[RewardOracle], aggregate: str = "min", c: float = 1.0):
        if aggregate not in ("min", "mean-std"):
            raise BadInput(f"ensemble: unknown aggregation {aggregate!r} (known: min, mean-std@C)")
        self.members, self.aggregate, self.c = list(members), aggregate, c

    @classmethod
    def from_spec(cls, arg: str, *, device: str | None = None, dtype: str = "auto") -> "EnsembleOracle":
        agg, sep, paths = arg.partition(":")
        name, at, c_text = agg.partition("@")
        try:
            c = float(c_text) if at else 1.0
        except ValueError:
            c = math.nan
        if not sep or not paths or name not in ("min", "mean-std") or not math.isfinite(c) or c < 0 \
                or (at and name != "mean-std"):
            raise BadInput(f"--preference ensemble:{arg}: expected ensemble:min:PATH1,PATH2,… or "
                           f"ensemble:mean-std@C:PATH1,PATH2,… (C ≥ 0)")
        members = [RewardOracle.from_pretrained(p, device=device, dtype=dtype) for p in paths.split(",")]
        return cls(members, name, c)

    def rewards(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Tensor:
        """(n,) aggregated rewards r̃(x, y)."""
        r = torch.stack([m.rewards(prompts, responses).float() for m in self.members])
        if self.aggregate == "min":
            return r.min(0).values
        spread = r.std(0) if len(self.members) > 1 else torch.zeros_like(r[0])
        return r.mean(0) - self.c * spread

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        n = check_lengths("EnsembleOracle", prompts, a, b)
        r = self.rewards(list(prompts) * 2, list(a) + list(b))
        return torch.sigmoid(r[:n] - r[n:])
