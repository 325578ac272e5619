"""Win-rates of a round's samples: the K×K preference matrix (each unordered pair queried once), win-rates
against a set of opponents, and the extra μ-samples that SPPO and DNO score for coverage."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nashpref.errors import BadInput
from nashpref.solvers.base import take


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


def reference_entries(round: Any, solver: str, extra: int, responses: Any, k: int, target_key: str) -> dict:
    """Batch entries for ``extra`` responses drawn from μ, each scored by its win-rate against the round's K
    on-policy responses (SPPO's and DNO's coverage option); empty when ``extra`` is 0."""
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise BadInput(f"{solver}: reference_samples must be an integer >= 0, got {extra!r}")
    if not extra:
        return {}
    others = round.sample(extra, "reference")
    return {"reference_responses": others,
            f"reference_{target_key}": win_rates_against(round, others, extra, responses, k),
            "reference_log_prob_previous": round.log_prob(others, "previous")}
