"""A round of self-play as a solver's ``collect`` sees it, and how the loop cuts a batch into minibatches.

``SelfPlayRound`` implements the ``Round`` protocol of ``nashpref.solvers.base`` around the frozen iterate π_t:
it draws samples, asks the oracle and caches frozen log-probs. It also keeps the round's accounts, which the
loop hands to its hooks: responses drawn, seconds spent sampling and judging, and (with ``record``) every
preference query as ``(contexts, a, b, P(a ≻ b))``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from nashpref.solvers.base import Batch, take

__all__ = ["SelfPlayRound", "take", "split_batch", "select_rows"]


def select_rows(value: Any, rows: Tensor, size: int, key: str = "value") -> Any:
    """``value`` restricted to the given rows of its leading (batch) dimension of length ``size``.

    Tensors are indexed, lists and tuples picked, response objects asked through ``.rows(index)``; Python
    scalars, strings, None and 0-d tensors are shared by every minibatch.
    """
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return value
        if value.shape[0] != size:
            raise ValueError(f"batch[{key!r}] has leading dimension {value.shape[0]}, expected {size} (contexts)")
        return value[rows]
    if isinstance(value, (list, tuple)):
        if len(value) != size:
            raise ValueError(f"batch[{key!r}] has length {len(value)}, expected {size} (contexts)")
        return type(value)(value[i] for i in rows.tolist())
    if hasattr(value, "rows"):
        return value.rows(rows)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"batch[{key!r}] of type {type(value).__name__} cannot be split into minibatches "
                     "(give it a .rows(index) method)")


def split_batch(batch: Batch, minibatches: int, generator: torch.Generator | None = None) -> list[Batch]:
    """Split every batch value along dim 0 into ``minibatches`` near-equal parts (rows shuffled first when a
    generator is given and there is more than one part)."""
    size = batch["contexts"].shape[0]
    parts = max(1, min(minibatches, size))
    order = torch.randperm(size, generator=generator) if parts > 1 and generator is not None else torch.arange(size)
    return [{key: select_rows(value, rows, size, key) for key, value in batch.items()}
            for rows in order.tensor_split(parts)]


class SelfPlayRound:
    """One round around the frozen π_t, as a solver's ``collect`` sees it (the ``Round`` protocol)."""

    def __init__(self, previous, reference, oracle, contexts: Tensor, samples: int, exact_labels: bool,
                 generator: torch.Generator, tau: float | None = None, record: bool = False,
                 keyed: bool = False):
        if keyed:       # data parallel: draws depend on (round, prompt), never on a rank's share
            from nashpref.lm.backend.keyed import KeyedPolicy

            previous, reference = KeyedPolicy(previous), KeyedPolicy(reference)
        self.keyed = keyed
        self.previous = previous
        self.reference = reference
        self.oracle = oracle
        self.contexts = contexts
        self.samples = samples
        self.exact_labels = exact_labels
        self.generator = generator
        self.tau = tau                  # the KL strength τ the solver's loss is regularised with
        self.queries = 0
        self.drawn = 0                  # responses sampled in this round
        self.seconds = {"sampling": 0.0, "judging": 0.0}
        self.record = record
        self.queried: list[tuple[Tensor, Any, Any, Tensor]] = []     # with ``record``: (contexts, a, b, P)
        self._log_probs: dict[tuple, tuple[Any, Tensor]] = {}

    def sample(self, n: int, source: str = "policy", beta: float = 0.0) -> Any:
        """(B, n) responses from π_t ("policy"), μ ("reference") or π_t^(1−β) μ^β ("mixture")."""
        start = time.perf_counter()
        if source == "policy":
            out = self.previous.sample(self.contexts, n, generator=self.generator)
        elif source == "reference":
            out = self.reference.sample(self.contexts, n, generator=self.generator)
        elif source == "mixture":
            out = self.previous.sample_mixture(self.contexts, n, self.reference, beta, generator=self.generator)
        else:
            raise ValueError(f"unknown sample source {source!r}; use 'policy', 'reference' or 'mixture'")
        self.seconds["sampling"] += time.perf_counter() - start
        self.drawn += out.shape[0] * out.shape[1]
        return out

    def prefer(self, a: Any, b: Any) -> Tensor:
        """(B, M) P(a ≻ b | x), or Bernoulli labels in {0., 1.}; every pair counts as one query."""
        start = time.perf_counter()
        p = self.oracle.prefer(self.contexts, a, b)
        self.seconds["judging"] += time.perf_counter() - start
        self.queries += p.numel()
        if self.record:
            self.queried.append((self.contexts, a, b, p))
        if self.exact_labels:
            return p
        if self.keyed:
            from nashpref.lm.backend.keyed import keyed_bernoulli

            return keyed_bernoulli(p, self.contexts, self.generator)
        return torch.bernoulli(p, generator=self.generator)

    def log_prob(self, responses: Any, model: str, normalize: bool = False) -> Tensor:
        """(B, M) log-probs under π_t ("previous") or μ ("reference"), without gradients; cached per object."""
        if model == "previous":
            policy = self.previous
        elif model == "reference":
            policy = self.reference
        else:
            raise ValueError(f"unknown model {model!r}; use 'previous' or 'reference'")
        key = (id(responses), model, normalize)
        hit = self._log_probs.get(key)
        if hit is not None and hit[0] is responses:
            return hit[1]
        with torch.no_grad():
            value = policy.log_prob(self.contexts, responses, normalize=normalize)
        self._log_probs[key] = (responses, value)    # holding the object keeps its id from being reused
        return value

    def snapshot(self) -> Any:
        """A copy of π_t that later optimizer steps do not change (for solvers that keep an anchor policy)."""
        return self.previous.snapshot()
