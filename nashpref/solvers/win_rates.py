"""Win-rates of a round's samples: the K×K preference matrix (each unordered pair queried once), win-rates
against a set of opponents, and the extra μ-samples that SPPO and DNO score for coverage.

On action ids (tabular policies) the ``distinct`` forms ask the oracle once per context for each distinct
unordered pair of different actions and weight the answer by how often the pair occurs. With exact labels that
is the same estimate as querying every copy; with Bernoulli labels it stays unbiased (each copy's label is
replaced by one label of the same mean). Language-model responses are never deduplicated (they rarely repeat):
there the plain estimators run unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nashpref.errors import BadInput
from nashpref.solvers.base import take
from nashpref.solvers.coverage import compact, distinct_weights


def preference_matrix(round: Any, responses: Any, k: int, distinct: bool = False) -> Tensor:
    """(B, K, K) matrix P̂[b, i, j] = P(y_i ≻ y_j) for a round's K samples per context.

    Each unordered pair is queried once and mirrored (P(b ≻ a) = 1 − P(a ≻ b), which also holds for Bernoulli
    labels); the diagonal is the self term ½ and is never queried. With ``distinct`` on action ids, each distinct
    pair of different actions is queried once (``distinct_prefer``).
    """
    batch = round.contexts.shape[0]
    i, j = torch.triu_indices(k, k, offset=1)
    first = take(responses, i.unsqueeze(0).expand(batch, -1))
    second = take(responses, j.unsqueeze(0).expand(batch, -1))
    if distinct and isinstance(responses, Tensor):
        p = distinct_prefer(round, first, second)
    else:
        p = round.prefer(first, second).to(torch.float64)
    matrix = torch.full((batch, k, k), 0.5, dtype=torch.float64)
    matrix[:, i, j] = p
    matrix[:, j, i] = 1.0 - p
    return matrix


def distinct_actions(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For each row of (B, n) ids: its distinct ids in increasing order (B, U), how often each occurs (B, U), and
    each entry's column among them (B, n). Rows with fewer than U distinct ids are padded with their smallest
    id and count 0."""
    ordered, order = torch.sort(ids, dim=-1)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = first.long().cumsum(-1) - 1
    width = int(group[:, -1].max().item()) + 1
    values = ordered[:, :1].expand(-1, width).clone().scatter_(1, group, ordered)
    counts = torch.zeros(ids.shape[0], width, dtype=torch.float64).scatter_add_(
        1, group, torch.ones_like(ordered, dtype=torch.float64))
    return values, counts, torch.empty_like(group).scatter_(1, order, group)


def distinct_prefer(round: Any, a: Tensor, b: Tensor) -> Tensor:
    """(B, M) P(a ≻ b) for action ids, asking once per context for each distinct unordered pair of different
    actions: P(a ≻ a) = ½ and P(b ≻ a) = 1 − P(a ≻ b) (the symmetry ``preference_matrix`` relies on too).

    The oracle takes one rectangular (B, W) query, so a context with fewer distinct pairs than the widest pads with
    a repeat of its first pair (those answers are discarded, but they are asked, and counted)."""
    low, high = torch.minimum(a, b), torch.maximum(a, b)
    size = int(high.max().item()) + 1
    unasked = size * size                               # sorts after every pair code
    code = torch.where(a == b, torch.full_like(a, unasked), low * size + high)
    values, counts, column = distinct_actions(code)
    asked = ((values < unasked) & (counts > 0)).sum(-1)  # pairs to ask per context: the first columns
    width = int(asked.max().item())
    if width == 0:
        return torch.full(a.shape, 0.5, dtype=torch.float64)
    values = values[:, :width]
    pad = torch.arange(width).unsqueeze(0) >= asked.unsqueeze(1)
    values = torch.where(pad, torch.where(asked > 0, values[:, 0], 0).unsqueeze(1), values)
    p = round.prefer(values // size, values % size).to(torch.float64)
    answer = p.gather(1, column.clamp(max=width - 1))
    return torch.where(a == b, 0.5, torch.where(a < b, answer, 1.0 - answer))


def win_rates_against(round: Any, responses: Any, n: int, opponents: Any, k: int, distinct: bool = False) -> Tensor:
    """(B, n) P̂(y ≻ π_t): each of the n responses against every one of the k opponents (n·k queries; with
    ``distinct`` on action ids, one query per distinct pair of different actions, weighted by its count)."""
    batch = round.contexts.shape[0]
    if distinct and isinstance(responses, Tensor) and isinstance(opponents, Tensor):
        mine, _, where = distinct_actions(responses)
        theirs, counts, _ = distinct_actions(opponents)
        shape = (batch, mine.shape[1], theirs.shape[1])
        p = distinct_prefer(round, mine.unsqueeze(2).expand(shape).reshape(batch, -1),
                            theirs.unsqueeze(1).expand(shape).reshape(batch, -1)).reshape(shape)
        return ((p * counts.unsqueeze(1)).sum(-1) / k).gather(1, where)
    first = take(responses, torch.arange(n).repeat_interleave(k).unsqueeze(0).expand(batch, -1))
    second = take(opponents, torch.arange(k).repeat(n).unsqueeze(0).expand(batch, -1))
    return round.prefer(first, second).to(torch.float64).reshape(batch, n, k).mean(-1)


def check_count(value: Any, name: str, solver: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadInput(f"{solver}: {name} must be an integer >= 0, got {value!r}")
    return value


def scored_samples(round: Any, solver: str, key: str, opponents: int = 0, extra: int = 0,
                   distinct: bool = False) -> dict:
    """SPPO's and DNO's batch: K responses from π_t with their win-rates under ``key``, and with ``extra`` > 0
    that many responses from μ with theirs (the coverage option; keys ``reference_*``).

    The win-rates are against ``opponents`` fresh draws from π_t, or with 0 against the K responses themselves
    (self term ½ included, as in the papers). With ``distinct`` on action ids every scored response meets every
    opponent in one deduplicated query (``win_rates_against``); else the queries are made as without it.
    """
    k, extra = round.samples, check_count(extra, "reference_samples", solver)
    responses = round.sample(k)
    rivals, m = (round.sample(check_count(opponents, "opponents", solver)), opponents) if opponents else \
        (responses, k)
    batch = {"contexts": round.contexts, "responses": responses,
             "log_prob_previous": round.log_prob(responses, "previous")}
    if distinct and isinstance(responses, Tensor):
        others = round.sample(extra, "reference") if extra else None
        scored = responses if others is None else torch.cat([responses, others], dim=-1)
        rates = win_rates_against(round, scored, scored.shape[1], rivals, m, distinct=True)
        batch[key] = rates[:, :k]
    else:
        batch[key] = win_rates_against(round, responses, k, rivals, m) if opponents else \
            preference_matrix(round, responses, k).mean(-1)
        others = round.sample(extra, "reference") if extra else None
        rates = None if others is None else torch.cat([batch[key], win_rates_against(round, others, extra,
                                                                                      rivals, m)], dim=-1)
    if others is not None:
        batch |= {"reference_responses": others, f"reference_{key}": rates[:, k:],
                  "reference_log_prob_previous": round.log_prob(others, "previous")}
    return batch


def reference_entries(round: Any, solver: str, extra: int, opponents: Any, k: int, target_key: str) -> dict:
    """Batch entries for ``extra`` responses drawn from μ, each scored by its win-rate against the k draws
    ``opponents`` from π_t (SPPO's coverage option with ``pairs="best-worst"``); empty when ``extra`` is 0."""
    if not check_count(extra, "reference_samples", solver):
        return {}
    others = round.sample(extra, "reference")
    return {"reference_responses": others,
            f"reference_{target_key}": win_rates_against(round, others, extra, opponents, k),
            "reference_log_prob_previous": round.log_prob(others, "previous")}


def joined(batch: dict, policy: Any, key: str, distinct: bool, *also: str) -> tuple:
    """A ``scored_samples`` batch's K responses and μ-draws side by side: (policy log-probs with gradients, π_t's
    log-probs, the targets under ``key``, distinct weights or None, then the entries ``also`` name), repeats
    dropped by ``compact`` when ``distinct`` applies (action ids)."""
    contexts, responses = batch["contexts"], batch["responses"]
    log_prob = policy.log_prob(contexts, responses)
    values = [batch[name] for name in ("log_prob_previous", key) + also]
    if "reference_responses" in batch:
        others = batch["reference_responses"]
        log_prob = torch.cat([log_prob, policy.log_prob(contexts, others)], dim=-1)
        values = [torch.cat([value, batch[f"reference_{name}"]], dim=-1)
                  for value, name in zip(values, ("log_prob_previous", key) + also)]
        responses = torch.cat([responses, others], dim=-1) if isinstance(others, Tensor) else others
    values = [value.to(log_prob) for value in values]
    weight = distinct_weights(responses) if distinct else None
    if weight is not None:
        weight, log_prob, *values = compact(weight, log_prob, *values)
    return (log_prob, values[0], values[1], weight, *values[2:])
