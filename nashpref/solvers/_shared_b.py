"""Helpers shared by the SPPO, DNO, INPO and iterative-DPO solvers.

* Hedge tuning for the unregularised game (SPPO, DNO). Self-play multiplicative weights π_{t+1} ∝ π_t exp(η Pπ_t)
  started at μ has regret R_T ≤ L/η + ηT/8 against every pure response (payoffs in [0, 1], Hoeffding's lemma),
  with L = log(1/min μ). In self-play ⟨π_t, Pπ_t⟩ = ½, so the unregularised gap of the average iterate is exactly
  2 R_T / T. The step η = √(8L/T) therefore guarantees Gap₀(π̄_T) ≤ √(2L/T).
* The K×K preference matrix of a round's samples, querying each unordered pair once, and the DPO loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nashpref.game import GameError, PreferenceGame


def hedge_log_range(game: PreferenceGame) -> float:
    """L = log(1/min μ), the prior-weight term of the Hedge regret bound (log N for uniform μ); at least log 2,
    so a one-action game still gets a positive horizon."""
    return max(-math.log(game.mu.min().item()), math.log(2.0))


def hedge_horizon(game: PreferenceGame, target_gap: float) -> int:
    """Smallest T whose Hedge bound √(2L/T) on the average iterate's unregularised gap is ≤ ``target_gap``."""
    if not 0.0 < target_gap <= 1.0:
        raise GameError(f"{game.name}: target_gap must lie in (0, 1], got {target_gap!r}")
    return math.ceil(2.0 * hedge_log_range(game) / target_gap ** 2)


def hedge_step(game: PreferenceGame, horizon: int) -> float:
    """The step √(8L/T) that minimises the regret bound L/η + ηT/8 over a horizon of T steps."""
    return math.sqrt(8.0 * hedge_log_range(game) / horizon)


def take(responses: Any, index: Tensor) -> Any:
    """Pick responses along K with a (B, M) index, like ``nashpref.selfplay.take``; that one cannot be imported
    here, since the loop imports the solver package."""
    if isinstance(responses, Tensor):
        return responses.gather(1, index)
    return responses.take(index)


def preference_matrix(round: Any, responses: Any, k: int) -> Tensor:
    """(B, K, K) matrix P̂[b, i, j] = P(y_i ≻ y_j) for a round's K samples per context.

    Each unordered pair is queried once and mirrored (P(b ≻ a) = 1 − P(a ≻ b), which also holds for Bernoulli
    labels); the diagonal is the self term ½ and is never queried.
    """
    batch = round.contexts.shape[0]
    i, j = torch.triu_indices(k, k, offset=1)
    first = take(responses, i.unsqueeze(0).expand(batch, -1))
    second = take(responses, j.unsqueeze(0).expand(batch, -1))
    p = round.prefer(first, second).to(torch.float64)
    matrix = torch.full((batch, k, k), 0.5, dtype=torch.float64)
    matrix[:, i, j] = p
    matrix[:, j, i] = 1.0 - p
    return matrix


def win_rates_against(round: Any, responses: Any, n: int, opponents: Any, k: int) -> Tensor:
    """(B, n) P̂(y ≻ π_t): each of the n responses against every one of the K opponents (n·K queries)."""
    batch = round.contexts.shape[0]
    first = take(responses, torch.arange(n).repeat_interleave(k).unsqueeze(0).expand(batch, -1))
    second = take(opponents, torch.arange(k).repeat(n).unsqueeze(0).expand(batch, -1))
    return round.prefer(first, second).to(torch.float64).reshape(batch, n, k).mean(-1)


def distinct_weights(responses: Any) -> Tensor | None:
    """(B, K) weights 1 on the first copy of each response in its row and 0 on repeats, so each distinct action
    counts once; None for language-model responses, where repeats are negligible."""
    if not isinstance(responses, Tensor):
        return None
    ordered, order = torch.sort(responses, dim=-1, stable=True)
    first = torch.ones_like(ordered, dtype=torch.float64)
    first[:, 1:] = (ordered[:, 1:] != ordered[:, :-1]).to(torch.float64)
    return torch.zeros_like(first).scatter(1, order, first)


def compact(weight: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Drop the columns where ``weight`` is 0 (repeats), padding rows with weight-0 columns to equal width, so
    pairwise losses cost O(distinct²) rather than O(K²)."""
    width = int((weight > 0).sum(-1).max().item())
    index = torch.argsort((weight <= 0).to(torch.int8), dim=-1, stable=True)[:, :width]
    return tuple(value.gather(1, index) for value in (weight, *values))


def require_samples(name: str, k: int, at_least: int = 2) -> None:
    if k < at_least:
        raise GameError(f"{name}: needs at least {at_least} samples per context to compare, got samples={k}")


def dpo_loss(log_ratio_chosen: Tensor, log_ratio_rejected: Tensor, beta: float,
             label_smoothing: float = 0.0) -> Tensor:
    """Per-pair (conservative) DPO loss −(1−ε) log σ(β(ℓ_w−ℓ_l)) − ε log σ(−β(ℓ_w−ℓ_l)), ℓ = log-ratio to the
    reference; ε = 0 is plain DPO."""
    logit = beta * (log_ratio_chosen - log_ratio_rejected)
    return -(1.0 - label_smoothing) * F.logsigmoid(logit) - label_smoothing * F.logsigmoid(-logit)



def reference_entries(round: Any, solver: str, extra: int, responses: Any, k: int, target_key: str) -> dict:
    """Batch entries for ``extra`` responses drawn from μ, each scored by its win-rate against the round's K
    on-policy responses (SPPO's and DNO's coverage option); empty when ``extra`` is 0."""
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise GameError(f"{solver}: reference_samples must be an integer >= 0, got {extra!r}")
    if not extra:
        return {}
    others = round.sample(extra, "reference")
    return {"reference_responses": others,
            f"reference_{target_key}": win_rates_against(round, others, extra, responses, k),
            "reference_log_prob_previous": round.log_prob(others, "previous")}
