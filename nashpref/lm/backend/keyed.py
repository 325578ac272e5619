"""Randomness keyed by (round, prompt), so that a run's samples do not depend on how prompts are split over ranks.

A sampler batched over a rank's prompts draws its random numbers in an order that depends on which prompts
share the batch; so does ``torch.bernoulli`` over a (B, M) matrix of preferences. Under data parallelism the
same global round must give the same responses and labels on 1 rank or N. Here every call takes exactly one
seed from the loop's generator (so all ranks' generators stay in step whatever their share), and each prompt
gets its own generator seeded from (that seed, the prompt's global index). Each prompt is then sampled on its
own, so the computation for a prompt is the same whatever else a rank holds.

A tensor-parallel vLLM engine shared by a group of ranks (its sampler's ``group``) must get the same requests from
each of them: there every rank of the group samples the group's union of prompts, one at a time in rank order,
and keeps its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["prompt_seed", "KeyedPolicy", "keyed_bernoulli"]

_MASK = (1 << 63) - 1


def prompt_seed(seed: int, context: int) -> int:
    """A 63-bit seed for prompt ``context`` from a round's ``seed`` (splitmix64 of the pair)."""
    x = (seed * 0x9E3779B97F4A7C15 + (context + 1) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (x ^ (x >> 31)) & _MASK


def _draw(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def _per_prompt(contexts: Tensor, generator, draw, group=None) -> Any:
    from nashpref.lm.samplers.base import in_step

    seed = _draw(generator)
    parts = in_step(group, contexts.tolist(), lambda rows: [
        draw(contexts.new_tensor([c]), torch.Generator().manual_seed(prompt_seed(seed, int(c)))) for c in rows])
    if isinstance(parts[0], Tensor):
        return torch.cat(parts, dim=0)
    return type(parts[0]).cat(parts, dim=0)


class KeyedPolicy:
    """A policy (live, frozen or the reference) whose ``sample`` and ``sample_mixture`` draw each prompt's
    responses from its own (round, prompt) generator; everything else is forwarded."""

    def __init__(self, inner):
        self.inner = inner

    def sample(self, contexts: Tensor, n: int, generator: torch.Generator | None = None):
        return _per_prompt(contexts, generator, lambda rows, g: self.inner.sample(rows, n, g), self._group())

    def sample_mixture(self, contexts: Tensor, n: int, reference, beta: float,
                       generator: torch.Generator | None = None):
        reference = reference.inner if isinstance(reference, KeyedPolicy) else reference
        return _per_prompt(contexts, generator,
                           lambda rows, g: self.inner.sample_mixture(rows, n, reference, beta, g), self._group())

    def _group(self):
        """The ranks sharing this policy's engine (a tensor-parallel vLLM engine under torchrun), or None."""
        return getattr(getattr(self.inner, "sampler", None), "group", None)

    def frozen(self) -> "KeyedPolicy":
        return KeyedPolicy(self.inner.frozen())

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def keyed_bernoulli(p: Tensor, contexts: Tensor, generator: torch.Generator | None) -> Tensor:
    """Bernoulli(p) labels, row b drawn from the generator of (one seed from ``generator``, contexts[b])."""
    seed = _draw(generator)
    rows = [torch.bernoulli(p[i:i + 1], generator=torch.Generator(device=p.device).manual_seed(
        prompt_seed(seed, int(c)))) for i, c in enumerate(contexts.tolist())]
    return torch.cat(rows, dim=0) if rows else p.clone()
