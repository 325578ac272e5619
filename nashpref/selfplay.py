"""The one self-play loop, shared by tabular sampled runs and language-model training.

Per iteration: freeze π_t (for a language model, ``frozen()`` is also where a sampler holding its own weights gets
the new ones); let the solver collect a batch from a :class:`~nashpref.rounds.SelfPlayRound` (samples,
preferences, frozen log-probs); run ``epochs`` passes of ``minibatches`` optimizer steps on the solver's loss
through the backend; evaluate; report; checkpoint. For extragradient solvers the first pass gives θ_{t+½}, a
second round is collected there, parameters and optimizer state go back to θ_t, and the second batch moves θ_t
to θ_{t+1}.

The loop only sees protocols: a policy (``log_prob``, ``sample``, ``sample_mixture``, ``frozen``,
``state_dict``), a reference policy, a preference oracle (``prefer(contexts, a, b)``), an optimizer, a solver and
a :class:`~nashpref.lm.backend.base.Backend`. It knows no solver, policy or oracle by name. What a driver adds
(records, evaluation, progress) comes in through :class:`Hooks`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from nashpref.lm.backend.base import Backend
from nashpref.lm.backend.single import SingleBackend
from nashpref.lm.checkpoints import latest_checkpoint, save_checkpoint
from nashpref.rounds import SelfPlayRound, split_batch
from nashpref.solvers.base import Batch, Solver

__all__ = ["Hooks", "Iteration", "self_play", "accumulated_loss"]


@dataclasses.dataclass
class Iteration:
    """What one iteration did, as the hooks' ``round_end`` sees it."""

    iteration: int
    """t: θ_t has just been made (counts from 1, across resumptions)."""
    metrics: dict[str, float]
    """``loss`` and the solver's metrics: means over the optimizer steps that made θ_t, reduced over ranks."""
    queries: int
    """Preference queries so far, all iterations."""
    seconds: float
    """Seconds of training and evaluation so far, all iterations (checkpoint writes not counted)."""
    round_seconds: float
    """This iteration's seconds from freezing π_t to the last optimizer step."""
    rounds: list[SelfPlayRound]
    """The rounds collected (two for extragradient solvers), with their accounts."""
    evaluation: dict[str, float]
    """What ``Hooks.evaluate`` returned for θ_t."""

    @property
    def info(self) -> dict:
        """``metrics`` with ``queries`` and ``seconds``."""
        return self.metrics | {"queries": self.queries, "seconds": self.seconds}


class Hooks:
    """What a driver adds around the loop. Every method is a no-op here; override the ones needed."""

    record_queries = False
    """Keep every preference query of a round (``SelfPlayRound.queried``) for ``round_end``."""

    def round_start(self, iteration: int) -> None:
        """Before iteration ``iteration`` freezes π_{t−1} and samples."""

    def evaluate(self, iteration: int) -> dict[str, float]:
        """Metrics of the new iterate θ_t, after its last optimizer step (counted in ``seconds``)."""
        return {}

    def round_end(self, report: Iteration) -> None:
        """Record the iteration (metrics, datasets, progress); called before its checkpoint is written."""

    def state_dict(self) -> dict:
        """What the hooks need to continue after a resumption; saved with every checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned, when the loop resumes from a checkpoint."""


def self_play(solver: Solver, policy, reference, oracle, optimizer: torch.optim.Optimizer, *,
              num_contexts: int, iterations: int, samples: int, generator: torch.Generator,
              tau: float | None = None, exact_labels: bool = True, epochs: int = 1, minibatches: int = 1,
              contexts_per_round: int | None = None, grad_accumulation: int = 1,
              max_grad_norm: float | None = None, backend: Backend | None = None, hooks: Hooks | None = None,
              checkpoints: str | Path | None = None, resume: bool = False, checkpoint_every: int = 1) -> dict:
    """Run self-play until ``iterations`` iterations are done, training ``policy`` in place.

    ``tau`` is the KL strength handed to the solver as ``round.tau``. Every random draw goes through
    ``generator`` (seed it, and torch's global RNG, for bit-for-bit reproducibility). Each minibatch's loss is
    back-propagated in ``grad_accumulation`` micro-batches (see :func:`accumulated_loss`), and the gradient's norm
    is clipped to ``max_grad_norm`` before each step. With ``checkpoints`` (a directory) the loop writes a
    checkpoint every ``checkpoint_every`` iterations and at the end (``nashpref.lm.checkpoints``); with
    ``resume`` it continues from the last one there and ends exactly where an uninterrupted run would. Returns
    the final loop state (``iteration``, ``queries``, ``seconds``).
    """
    backend = backend if backend is not None else SingleBackend("cpu")
    hooks = hooks if hooks is not None else Hooks()
    state = {"iteration": 0, "queries": 0, "seconds": 0.0}
    found = latest_checkpoint(checkpoints) if resume and checkpoints is not None else None
    if found is not None:
        saved = backend.load(found, policy, optimizer)
        _restore_rngs(saved, generator)
        hooks.load_state_dict(saved["hooks"])
        if solver.stateful:                     # an anchor policy (COMAL, MPO)
            solver.load_state_dict(saved["solver"])
        state = {key: saved[key] for key in state}

    def new_round(contexts: Tensor) -> SelfPlayRound:
        return SelfPlayRound(policy.frozen(), reference, oracle, contexts, samples, exact_labels, generator, tau,
                             record=hooks.record_queries, keyed=backend.keyed)

    def train(batch: Batch) -> dict:
        return _train(solver, policy, optimizer, batch, epochs, minibatches, generator, grad_accumulation,
                      max_grad_norm, backend)

    for t in range(state["iteration"], iterations):
        start = time.perf_counter()
        hooks.round_start(t + 1)
        contexts = backend.shard(_round_contexts(num_contexts, contexts_per_round, generator))
        rounds = [new_round(contexts)]
        batch = solver.collect(rounds[0])
        if solver.extragradient:
            params, opt = copy.deepcopy(policy.state_dict()), copy.deepcopy(optimizer.state_dict())
            train(batch)                                   # θ_t → θ_{t+½}
            rounds.append(new_round(contexts))
            batch = solver.collect(rounds[1])
            policy.load_state_dict(params)
            optimizer.load_state_dict(opt)
        metrics = backend.reduce(train(batch))
        round_seconds = time.perf_counter() - start
        evaluation = hooks.evaluate(t + 1)
        state["iteration"] = t + 1
        asked = backend.reduce({"queries": sum(r.queries for r in rounds)})["queries"] * backend.world_size
        state["queries"] += round(asked)            # every rank's queries
        state["seconds"] += time.perf_counter() - start
        hooks.round_end(Iteration(t + 1, metrics, state["queries"], state["seconds"], round_seconds, rounds,
                                  evaluation))
        if checkpoints is not None and ((t + 1) % checkpoint_every == 0 or t + 1 == iterations):
            snapshot = state | _rng_state(generator) | {"hooks": hooks.state_dict()}
            if solver.stateful:
                snapshot["solver"] = solver.state_dict()
            save_checkpoint(checkpoints, t + 1, lambda directory: backend.save(directory, policy, optimizer,
                                                                              snapshot), backend)
    return state


def accumulated_loss(solver: Solver, batch: Batch, policy, parts: int,
                     backward: Callable[[Tensor], None] = Tensor.backward) -> tuple[Tensor, dict[str, float]]:
    """The solver's loss of ``batch`` back-propagated in ``parts`` micro-batches, so that only one part's
    activations are in memory.

    Every micro-batch but the last is back-propagated here (weighted by its share of the prompts); the last one's
    weighted loss is returned plus the earlier losses as a constant, so the caller's backward completes the
    gradient of the whole batch's loss and the returned value is that loss. Exact for losses that are means over
    prompts (all solvers but iterative DPO / DNO-Prct, whose mean over kept pairs is then taken per part).
    """
    if parts == 1:
        return solver.loss(batch, policy)
    size = batch["contexts"].shape[0]
    pieces = split_batch(batch, parts)
    done, metrics = 0.0, {}
    for index, piece in enumerate(pieces):
        weight = piece["contexts"].shape[0] / size
        loss, piece_metrics = solver.loss(piece, policy)
        for key, value in piece_metrics.items():
            metrics[key] = metrics.get(key, 0.0) + weight * float(value)
        if index < len(pieces) - 1:
            backward(loss * weight)
            done += weight * loss.item()
        else:
            return loss * weight + done, metrics
    raise AssertionError("unreachable: split_batch returns at least one part")


def _train(solver: Solver, policy, optimizer, batch: Batch, epochs: int, minibatches: int,
           generator: torch.Generator, parts: int, max_grad_norm: float | None, backend: Backend) -> dict:
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(epochs):
        if backend.keyed:       # one draw whatever this rank's share: every rank's generator stays in step
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        for part in split_batch(batch, minibatches, generator):
            # Each rank's loss weighted by its share of the batch: the mean of the ranks' gradients (what the
            # backend's step applies) is then the gradient of the whole batch's loss, and so is the mean loss.
            scale = backend.loss_scale(solver.loss_count(part))

            def backward(loss: Tensor) -> None:
                backend.backward(loss * scale)

            loss, metrics = accumulated_loss(solver, part, policy, parts, backward)
            backward(loss)
            backend.step(optimizer, max_grad_norm)
            for key, value in ({"loss": loss.item() * scale} | metrics).items():
                totals[key] = totals.get(key, 0.0) + float(value)
            steps += 1
    return {key: value / steps for key, value in totals.items()}


def _round_contexts(num_contexts: int, per_round: int | None, generator: torch.Generator) -> Tensor:
    if per_round is None or per_round >= num_contexts:
        return torch.arange(num_contexts)
    return torch.randperm(num_contexts, generator=generator)[:per_round].sort().values


def _rng_state(generator: torch.Generator) -> dict:
    return {"generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _restore_rngs(saved: dict, generator: torch.Generator) -> None:
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if torch.cuda.is_available() and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
