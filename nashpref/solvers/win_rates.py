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
from nashpref.solvers.coverage import COUNTED, compact, distinct_weights


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
    id and count 0.

    Ids below ``COUNTED`` × n are counted in a (B, max id + 1) table (a few O(Bn) passes); larger ones are sorted
    (a covered round's 1024 draws per context: sorting them was most of its time on many-context games)."""
    size = int(ids.max().item()) + 1
    if size > COUNTED * ids.shape[1]:
        return sorted_distinct(ids)
    table = id_counts(ids, size)
    values, slot, rank = table_columns(table > 0, ids.min(-1, keepdim=True).values)
    return values, by_column(table, slot, values.shape[1]), rank.gather(1, ids)


def id_counts(ids: Tensor, size: int) -> Tensor:
    """(B, size) how often each id occurs in each row of ``ids``."""
    ones = torch.ones(1, dtype=torch.float64).expand(ids.shape)
    return torch.zeros(ids.shape[0], size, dtype=torch.float64).scatter_add_(1, ids, ones)


def table_columns(present: Tensor, smallest: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For a (B, size) mask of the ids present in each row: the present ids in increasing order (B, U), padded
    with ``smallest``; each id's column (U, a spare column, for the absent); each id's rank among the present."""
    rank = present.long().cumsum(-1) - 1
    width = int(rank[:, -1].max().item()) + 1
    slot = torch.where(present, rank, width)            # absent ids go to a spare column, dropped below
    values = smallest.expand(-1, width + 1).clone().scatter_(
        1, slot, torch.arange(present.shape[1]).expand_as(slot))[:, :width]
    return values, slot, rank


def by_column(table: Tensor, slot: Tensor, width: int) -> Tensor:
    """(B, width) the entries of a (B, size) id table in ``table_columns``' columns (0 in padding columns)."""
    return torch.zeros(table.shape[0], width + 1, dtype=table.dtype).scatter_(1, slot, table)[:, :width]


def sorted_distinct(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``distinct_actions`` by sorting each row (for ids too large to count in a table)."""
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
    if distinct and isinstance(responses, Tensor) and isinstance(opponents, Tensor):
        return win_rates_against_each(round, responses, n, [opponents], [k], distinct=True)[0]
    batch = round.contexts.shape[0]
    first = take(responses, torch.arange(n).repeat_interleave(k).unsqueeze(0).expand(batch, -1))
    second = take(opponents, torch.arange(k).repeat(n).unsqueeze(0).expand(batch, -1))
    return round.prefer(first, second).to(torch.float64).reshape(batch, n, k).mean(-1)


def win_rates_against_each(round: Any, responses: Any, n: int, groups: list, sizes: list[int],
                           distinct: bool = False) -> list[Tensor]:
    """[(B, n) P̂(y ≻ group) for each group of ``sizes[i]`` opponents per context] (COMAL's optimistic rounds:
    this round's opponents and the previous round's). With ``distinct`` on action ids all groups share one query
    per distinct pair of different actions (each group weighs the answers by its own counts); else each group is
    queried apart."""
    if not (distinct and isinstance(responses, Tensor) and all(isinstance(g, Tensor) for g in groups)):
        return [win_rates_against(round, responses, n, g, size) for g, size in zip(groups, sizes)]
    batch = round.contexts.shape[0]
    mine, _, where = distinct_actions(responses)
    ids = int(max(g.max().item() for g in groups)) + 1
    if ids > COUNTED * max(g.shape[1] for g in groups):        # large id spaces: sort the groups together
        theirs, _, column = sorted_distinct(torch.cat(groups, dim=-1))
        edges = torch.tensor([0, *sizes]).cumsum(0).tolist()
        counts = [id_counts(column[:, lo:hi], theirs.shape[1]) for lo, hi in zip(edges, edges[1:])]
    else:       # one id table per group (O(B·M) each): no concatenated copy of the opponents, no sort
        tables = [id_counts(g, ids) for g in groups]
        smallest = torch.stack([g.min(-1).values for g in groups], -1).min(-1, keepdim=True).values
        theirs, slot, _ = table_columns(sum(tables) > 0, smallest)
        counts = [by_column(table, slot, theirs.shape[1]) for table in tables]
    shape = (batch, mine.shape[1], theirs.shape[1])
    p = distinct_prefer(round, mine.unsqueeze(2).expand(shape).reshape(batch, -1),
                        theirs.unsqueeze(1).expand(shape).reshape(batch, -1)).reshape(shape)
    return [((p * count.unsqueeze(1)).sum(-1) / size).gather(1, where) for count, size in zip(counts, sizes)]


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


def optimistic(scores: Tensor, previous: Tensor | None, eta: float, tau: float) -> Tensor:
    """ONPO's predicted win-rates (1 + c) g_t − c g_{t−1}, c = 1 − ητ (``nashpref.solvers.onpo``); with no
    previous scores (the first step) g_{t−1} := g_t."""
    c = 1.0 - eta * tau
    return (1.0 + c) * scores - c * (scores if previous is None else previous)


def optimistic_samples(round: Any, solver: str, key: str, opponents: int, extra: int, distinct: bool,
                       memory: tuple | None, eta: float, tau: float) -> tuple[dict, tuple]:
    """``scored_samples``'s batch with ONPO's optimistic target (1 + c) r̂_t − c r̂_{t−1} under ``key``: r̂_t
    against this round's opponents, r̂_{t−1} against the previous round's (``memory``, returned updated; on action
    ids both share one query per distinct pair). Without memory (first round, other contexts) it is r̂_t."""
    k, extra = round.samples, check_count(extra, "reference_samples", solver)
    responses = round.sample(k)
    rivals, m = (round.sample(check_count(opponents, "opponents", solver)), opponents) if opponents else \
        (responses, k)
    others = round.sample(extra, "reference") if extra else None
    usable = memory is not None and torch.equal(memory[0], round.contexts)
    groups, sizes = [rivals] + ([memory[1]] if usable else []), [m] + ([memory[2]] if usable else [])

    def rates_of(scored: Any, n: int) -> list[Tensor]:
        return win_rates_against_each(round, scored, n, groups, sizes, distinct)

    if others is None:
        rates = rates_of(responses, k)
    elif isinstance(responses, Tensor):     # action ids: one deduplicated query for both
        rates = rates_of(torch.cat([responses, others], dim=-1), k + extra)
    else:
        rates = [torch.cat(pair, dim=-1) for pair in zip(rates_of(responses, k), rates_of(others, extra))]
    target = optimistic(rates[0], rates[1], eta, tau) if usable else rates[0]
    batch = {"contexts": round.contexts, "responses": responses, key: target[:, :k],
             "log_prob_previous": round.log_prob(responses, "previous")}
    if others is not None:
        batch |= {"reference_responses": others, f"reference_{key}": target[:, k:],
                  "reference_log_prob_previous": round.log_prob(others, "previous")}
    return batch, (round.contexts.clone(), rivals, m)


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
