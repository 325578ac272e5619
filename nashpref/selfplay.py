"""The one self-play loop, shared by tabular-sampled runs and language-model training.

Per iteration: freeze π_t (for a language model, ``frozen()`` is also where the sampler gets the new weights);
let the solver collect a batch from a :class:`SelfPlayRound` (samples, preferences, frozen log-probs); run
``epochs`` passes of ``minibatches`` optimizer steps on the solver's loss; report; checkpoint. For
extragradient solvers the first pass gives θ_{t+½}, a second round is collected there, parameters and optimizer
state go back to θ_t, and the second batch moves θ_t to θ_{t+1}.

The loop only sees protocols: a policy (``log_prob``, ``sample``, ``sample_mixture``, ``frozen``,
``state_dict``), a reference policy, a preference oracle (``prefer(contexts, a, b)``), a torch optimizer and a
solver. It knows no solver, policy or oracle by name.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from nashpref.checkpoint import load_checkpoint, save_checkpoint
from nashpref.solvers.base import Batch, Solver

__all__ = ["SelfPlayRound", "take", "split_batch", "select_rows", "self_play"]


def take(responses: Any, index: Tensor) -> Any:
    """Pick responses along K with a (B, M) index: ``gather`` for action-id tensors, ``.take`` for LM objects."""
    if isinstance(responses, Tensor):      # Tensor.take exists but indexes the flattened tensor: never use it
        return responses.gather(1, index)
    return responses.take(index)


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
                 generator: torch.Generator, tau: float | None = None):
        self.previous = previous
        self.reference = reference
        self.oracle = oracle
        self.contexts = contexts
        self.samples = samples
        self.exact_labels = exact_labels
        self.generator = generator
        self.tau = tau                  # the KL strength τ the solver's loss is regularised with
        self.queries = 0
        self._log_probs: dict[tuple, tuple[Any, Tensor]] = {}

    def sample(self, n: int, source: str = "policy", beta: float = 0.0) -> Any:
        """(B, n) responses from π_t ("policy"), μ ("reference") or π_t^(1−β) μ^β ("mixture")."""
        if source == "policy":
            return self.previous.sample(self.contexts, n, generator=self.generator)
        if source == "reference":
            return self.reference.sample(self.contexts, n, generator=self.generator)
        if source == "mixture":
            return self.previous.sample_mixture(self.contexts, n, self.reference, beta, generator=self.generator)
        raise ValueError(f"unknown sample source {source!r}; use 'policy', 'reference' or 'mixture'")

    def prefer(self, a: Any, b: Any) -> Tensor:
        """(B, M) P(a ≻ b | x), or Bernoulli labels in {0., 1.}; every pair counts as one query."""
        p = self.oracle.prefer(self.contexts, a, b)
        self.queries += p.numel()
        if self.exact_labels:
            return p
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


def self_play(solver: Solver, policy, reference, oracle, optimizer: torch.optim.Optimizer, *,
              num_contexts: int, iterations: int, samples: int, generator: torch.Generator,
              tau: float | None = None, exact_labels: bool = True, epochs: int = 1, minibatches: int = 1,
              contexts_per_round: int | None = None,
              on_iteration: Callable[[int, dict], None] | None = None,
              extra_state: dict[str, Any] | None = None,
              checkpoint_dir: str | Path | None = None, resume: bool = False,
              checkpoint_every: int = 1) -> dict:
    """Run ``iterations`` rounds of self-play, training ``policy`` in place.

    ``tau`` is the KL strength handed to the solver as ``round.tau``. Every random draw goes through
    ``generator`` (seed it, and torch's global RNG, for bit-for-bit reproducibility). ``on_iteration(t, info)``
    is called after iteration t = 1, 2, … with ``loss`` and the solver's metrics (means over the optimizer steps
    that produced θ_t), ``queries`` (total so far) and ``seconds``. Objects in ``extra_state`` (``state_dict`` /
    ``load_state_dict``) are checkpointed with the policy, optimizer and RNGs; with ``resume`` the loop continues
    from ``checkpoint_dir`` and ends exactly where an uninterrupted run would. Returns the final loop state
    (``iteration``, ``queries``, ``seconds``).
    """
    extra_state = extra_state or {}
    state = {"iteration": 0, "queries": 0, "seconds": 0.0}
    if resume and checkpoint_dir is not None:
        saved = load_checkpoint(checkpoint_dir)
        if saved is not None:
            _restore(saved, policy, optimizer, generator, extra_state)
            state = {key: saved[key] for key in state}
    start = time.perf_counter() - state["seconds"]

    def new_round() -> SelfPlayRound:
        return SelfPlayRound(policy.frozen(), reference, oracle, contexts, samples, exact_labels, generator, tau)

    def train(batch: Batch) -> dict:
        return _train(solver, policy, optimizer, batch, epochs, minibatches, generator)

    for t in range(state["iteration"], iterations):
        contexts = _round_contexts(num_contexts, contexts_per_round, generator)
        round_t = new_round()
        batch = solver.collect(round_t)
        state["queries"] += round_t.queries
        if solver.extragradient:
            params, opt = copy.deepcopy(policy.state_dict()), copy.deepcopy(optimizer.state_dict())
            train(batch)                                   # θ_t → θ_{t+½}
            round_half = new_round()
            batch = solver.collect(round_half)
            state["queries"] += round_half.queries
            policy.load_state_dict(params)
            optimizer.load_state_dict(opt)
        metrics = train(batch)
        state["iteration"] = t + 1
        state["seconds"] = time.perf_counter() - start
        if on_iteration is not None:
            on_iteration(t + 1, metrics | {"queries": state["queries"], "seconds": state["seconds"]})
        if checkpoint_dir is not None and ((t + 1) % checkpoint_every == 0 or t + 1 == iterations):
            save_checkpoint(checkpoint_dir, _snapshot(state, policy, optimizer, generator, extra_state))
    return state


def _train(solver: Solver, policy, optimizer, batch: Batch, epochs: int, minibatches: int,
           generator: torch.Generator) -> dict:
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(epochs):
        for part in split_batch(batch, minibatches, generator):
            optimizer.zero_grad(set_to_none=True)
            loss, metrics = solver.loss(part, policy)
            loss.backward()
            optimizer.step()
            for key, value in ({"loss": loss.item()} | metrics).items():
                totals[key] = totals.get(key, 0.0) + float(value)
            steps += 1
    return {key: value / steps for key, value in totals.items()}


def _round_contexts(num_contexts: int, per_round: int | None, generator: torch.Generator) -> Tensor:
    if per_round is None or per_round >= num_contexts:
        return torch.arange(num_contexts)
    return torch.randperm(num_contexts, generator=generator)[:per_round].sort().values


def _snapshot(state: dict, policy, optimizer, generator: torch.Generator, extra_state: dict) -> dict:
    return state | {"policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "extra": {name: obj.state_dict() for name, obj in extra_state.items()}}


def _restore(saved: dict, policy, optimizer, generator: torch.Generator, extra_state: dict) -> None:
    policy.load_state_dict(saved["policy"])
    optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    for name, obj in extra_state.items():
        obj.load_state_dict(saved["extra"][name])
