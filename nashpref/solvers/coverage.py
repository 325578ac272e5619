"""Counting each distinct tabular response once (the coverage options of SPPO and DNO)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


COUNTED = 4     # ids below COUNTED × (ids per row) are handled with a table indexed by id, larger ones by sorting


def distinct_weights(responses: Any) -> Tensor | None:
    """(B, K) weights 1 on the first copy of each response in its row and 0 on repeats, so each distinct action
    counts once; None for language-model responses, where repeats are negligible."""
    if not isinstance(responses, Tensor):
        return None
    batch, n = responses.shape
    size = int(responses.max().item()) + 1
    position = torch.arange(n).expand(batch, -1)
    if size <= COUNTED * n:     # each id's first position from a table: O(Bn), where sorting was most of a round
        first = torch.full((batch, size), n, dtype=torch.long).scatter_reduce_(1, responses, position, "amin")
        return (first.gather(1, responses) == position).to(torch.float64)
    ordered, order = torch.sort(responses, dim=-1, stable=True)
    first = torch.ones_like(ordered, dtype=torch.float64)
    first[:, 1:] = (ordered[:, 1:] != ordered[:, :-1]).to(torch.float64)
    return torch.zeros_like(first).scatter(1, order, first)


def compact(weight: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Drop the columns where ``weight`` is 0 (repeats), padding rows with weight-0 columns to equal width, so
    pairwise losses cost O(distinct²) rather than O(K²). Columns keep their order: the kept ones first, then the
    first dropped ones as padding (a stable partition, without sorting)."""
    keep = weight > 0
    width = int(keep.sum(-1).max().item())
    kept = keep.sum(-1, keepdim=True)
    slot = torch.where(keep, keep.long().cumsum(-1) - 1, kept + (~keep).long().cumsum(-1) - 1)
    index = torch.empty_like(slot).scatter_(1, slot, torch.arange(weight.shape[1]).expand_as(slot))[:, :width]
    return tuple(value.gather(1, index) for value in (weight, *values))
