"""Counting each distinct tabular response once (the coverage options of SPPO and DNO)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


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
