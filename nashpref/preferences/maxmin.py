"""Max-min over user groups on the LM side: ``--preference 'maxmin:SPEC1;SPEC2;…'`` (one oracle per group).

MaxMin-RLHF (Chakraborty et al., arXiv 2402.08925) trains, at each step, on the reward of the group whose utility
under the current policy is lowest. For preferences, group u's utility of π is its win-rate against the reference,
V_u(π) = P_u(π ≻ μ). Every time the solver queries a batch of pairs (a, b) for contexts x, the oracle

1. draws one fresh reference response r(x) ~ μ(·|x) per context and estimates V̂_u = mean P_u(a ≻ r(x)) over the
   batch (the a's are the solver's samples of the current policy);
2. sets the group weights by multiplicative weights on the dual of max_π min_u V_u, w ∝ exp(−η Σ_calls V̂)
   (``maxmin:`` with η = 1, ``maxmin:hedge@ETA:``), or to the argmin of this call's V̂ (``maxmin:argmin:``, the
   paper's rule; ties share);
3. answers P_w(a ≻ b) = Σ_u w_u P_u(a ≻ b): a mixture, so a valid preference (P + Pᵀ = 1) for every solver.

The solver then moves towards the equilibrium π_w of P_w. The rest point with two groups is the w* whose π_{w*} is
equally good for both (V_1 = V_2), i.e. max_w min_u V_u(π_w) when V_1 − V_2 grows with w. Its tabular counterpart
is found exactly by bisection in tests/test_theory_maxmin_lm.py, and the sampled loop with Hedge reaches it. The
argmin rule acts on one batch's noisy V̂: its expected weight is P(V̂_1 < V̂_2), pulled towards ½ when the noise
dominates, so it settles short of w* (measured in that test's instances). The exact τ-regularised max-min over BT
group rewards (the convex dual) is ``nashpref.theory.maxmin``.

The weights need reference samples, so the trainer binds the oracle to the reference (``bind``). Unbound, as in
the held-out evaluation, it answers the equal mixture. The weights are not checkpointed: a resumed run starts
them afresh (Hedge's running sums are lost). Under several ranks, each rank weighs from its
own contexts.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from nashpref.errors import BadInput
from nashpref.preferences.base import Prompt, TextOracle, check_lengths, load_text_oracle, register


def group_weights(values: Tensor, eta: float | None = None) -> Tensor:
    """w on the simplex: softmax(−η·values) (Hedge, on cumulative values), or for η = None the argmin of values
    (ties split equally)."""
    values = values.double()
    if eta is None:
        lowest = values == values.min()
        return lowest.double() / lowest.sum()
    return torch.softmax(-eta * values, dim=0)


@register
class MaxMinOracle(TextOracle):
    """Σ_u w_u P_u(a ≻ b | x) with w from the groups' win-rates of the current policy against μ."""

    prefix = "maxmin"

    def __init__(self, groups: Sequence, eta: float | None = 1.0):
        if len(groups) < 2:
            raise BadInput("maxmin: needs at least two group oracles")
        self.groups, self.eta = list(groups), eta

    @classmethod
    def from_spec(cls, arg: str, *, device: str | None = None, dtype: str = "auto") -> "MaxMinOracle":
        eta, rest = 1.0, arg
        head, _, tail = arg.partition(":")
        if head == "argmin":
            eta, rest = None, tail
        elif head.startswith("hedge@"):
            try:
                eta = float(head[len("hedge@"):])
            except ValueError:
                eta = math.nan
            if not math.isfinite(eta) or eta <= 0:
                raise BadInput(f"--preference maxmin:{arg}: hedge@ETA needs a finite ETA > 0")
            rest = tail
        specs = [s for s in rest.split(";") if s]
        if len(specs) < 2:
            raise BadInput(f"--preference maxmin:{arg}: expected maxmin:[hedge@ETA:|argmin:]SPEC1;SPEC2;… with at "
                           f"least two group oracles")
        return cls([load_text_oracle(s, device=device, dtype=dtype) for s in specs], eta)

    def mixture(self, weights: Tensor, contexts: Tensor, a, b) -> Tensor:
        """(B, M) Σ_u w_u P_u(a ≻ b) through each group's ``prefer`` (in the groups' dtype)."""
        parts = [g.prefer(contexts, a, b) for g in self.groups]
        return sum(float(w) * p.double() for w, p in zip(weights, parts)).to(parts[0].dtype)

    def prefer(self, contexts: Tensor, a, b) -> Tensor:
        weights = torch.full((len(self.groups),), 1.0 / len(self.groups), dtype=torch.float64)
        return self.mixture(weights, contexts, a, b)

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        check_lengths("MaxMinOracle", prompts, a, b)
        parts = [g.prefer_texts(prompts, a, b).double() for g in self.groups]
        return (sum(parts) / len(parts)).float()

    def bind(self, reference, generator: torch.Generator) -> "BoundMaxMin":
        return BoundMaxMin(self, reference, generator)


class BoundMaxMin:
    """The training loop's view of a ``MaxMinOracle``: weights updated at every preference call. ``history`` keeps
    (V̂, w) of each call; ``total`` is Σ V̂ over the calls so far (Hedge's state)."""

    def __init__(self, oracle: MaxMinOracle, reference, generator: torch.Generator):
        self.oracle, self.reference, self.generator = oracle, reference, generator
        self.total = torch.zeros(len(oracle.groups), dtype=torch.float64)
        self.history: list[tuple[Tensor, Tensor]] = []

    def win_rates(self, contexts: Tensor, a) -> Tensor:
        """(U,) V̂_u: mean P_u(a ≻ r(x)) with one fresh r(x) ~ μ per context, compared with each of its a's."""
        with torch.no_grad():
            drawn = self.reference.sample(contexts, 1, self.generator)
        rows, cols = a.shape
        if isinstance(drawn, Tensor):
            against = drawn.expand(rows, cols)
        else:
            against = drawn.take(torch.zeros((rows, cols), dtype=torch.long))
        return torch.stack([g.prefer(contexts, a, against).double().mean() for g in self.oracle.groups])

    def prefer(self, contexts: Tensor, a, b) -> Tensor:
        values = self.win_rates(contexts, a)
        self.total += values
        eta = self.oracle.eta
        weights = group_weights(values) if eta is None else group_weights(self.total, eta)
        self.history.append((values, weights))
        return self.oracle.mixture(weights, contexts, a, b)

    # ---- what the training loop saves and reports --------------------------------------------------------------
    def loop_state(self) -> dict:
        """Hedge's running sums and the reference draws' generator: a resumed run continues both."""
        return {"total": self.total.clone(), "generator": self.generator.get_state()}

    def load_loop_state(self, state: dict) -> None:
        self.total = state["total"].clone()
        self.generator.set_state(state["generator"])

    def loop_metrics(self) -> dict:
        """The group weights of the last preference call, for metrics.jsonl."""
        return {"group_weights": self.history[-1][1].tolist()} if self.history else {}
