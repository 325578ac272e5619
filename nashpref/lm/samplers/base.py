"""What every sampler shares: the sampling options, the seed it draws from the loop's generator, and the protocol.

Samplers implement ``sample(policy, contexts, n, generator) -> TokenResponses``:

* ``nashpref.lm.samplers.hf.HFSampler``: transformers ``generate`` on the policy's own module (always available);
  ``nashpref.lm.samplers.hf.sample_mixture`` samples Nash-MD's geometric mixture π^(1−β) μ^β token by token;
* ``nashpref.lm.samplers.vllm.VLLMSampler``: an in-process vLLM engine that receives the policy's weights after
  every iteration (``sync_weights``) and checks them (``verify_sync``).

Nothing here imports transformers or vLLM.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["SamplingConfig", "Sampler", "draw_seed"]


class Sampler(Protocol):
    """Draws (B, n) responses of ``policy`` to the prompts ``contexts`` (indices into the policy's prompt list)."""

    config: "SamplingConfig"

    def sample(self, policy: Any, contexts: Tensor, n: int, generator: torch.Generator | None = None) -> Any: ...


@dataclasses.dataclass
class SamplingConfig:
    """How responses are drawn (the same options for every sampler)."""

    max_new_tokens: int = 64
    """Maximum response length in tokens (a response that hits it has no end-of-turn token)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding (the n samples of a prompt are then identical)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with total probability ≥ top_p (1 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0, got {self.top_k}")


def draw_seed(generator: torch.Generator | None) -> int:
    """A 31-bit seed drawn from ``generator`` (or torch's global RNG): samplers that keep their own random
    state (transformers ``generate``, vLLM) are made a deterministic function of the loop's generator."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())


def in_step(group, items: list, run) -> list:
    """``run(items)`` (a list with one result per item). With ``group`` (the ranks sharing one engine, see
    ``nashpref.lm.samplers.vllm.EngineGroup``) every rank runs the group's union of items and keeps its own
    results, so that all of them send the engine the same requests."""
    if group is None:
        return run(items)
    union, start = group.union(items)
    return run(union)[start:start + len(items)]
