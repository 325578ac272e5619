"""Sampled training of a tabular policy: a solver's per-sample loss, run by the self-play loop on a
``TabularPolicy`` against the exact preference matrix, with every iterate measured against the exact game."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import Tensor

from nashpref.checks import integer, number
from nashpref.core.exact import ExactRun, iterate_metrics
from nashpref.core.game import PreferenceGame
from nashpref.core.tabular import MatrixOracle, TabularPolicy
from nashpref.errors import BadInput
from nashpref.lm.backend.single import SingleBackend
from nashpref.selfplay import Hooks, Iteration, self_play
from nashpref.solvers.base import Solver


@dataclass
class SampledConfig:
    """Sampled (per-sample loss) training of a tabular policy."""

    iterations: int = 500
    """Self-play iterations (rounds); each freezes π_t, samples, queries preferences and trains."""
    samples: int = 8
    """K: responses sampled per context per round (solvers that need pairs use K of them, or K pairs)."""
    labels: Literal["exact", "bernoulli"] = "exact"
    """Preference signal: 'exact' returns P(a ≻ b); 'bernoulli' one sampled 0/1 label per queried pair."""
    lr: float = 0.01
    """Learning rate of the optimizer on the policy logits; with SGD, the step on each context's logits whatever
    the number of contexts (a round's loss is summed over its contexts, not averaged)."""
    optimizer: Literal["sgd", "adam"] = "adam"
    """Optimizer on the policy logits: Adam (torch defaults besides lr; the more robust choice across solvers
    and games) or plain SGD without momentum (the form in which one online-IPO step is a mirror step)."""
    epochs: int = 1
    """Passes over each round's batch."""
    minibatches: int = 1
    """Optimizer steps per epoch: the batch is shuffled and split into this many parts along the contexts."""
    seed: int = 0
    """Seed of the one generator behind every sample and label (and of torch's global RNG)."""
    contexts_per_round: int | None = None
    """Contexts drawn (without replacement) per round; None uses every context of the game."""


def validate_config(config: SampledConfig) -> None:
    """Raise BadInput (one line, naming the option) when a field is out of range."""
    integer(config.iterations, "sampled config: iterations", 0)
    for name in ("samples", "epochs", "minibatches", "contexts_per_round"):
        integer(getattr(config, name), f"sampled config: {name}", 1, allow_none=name == "contexts_per_round")
    if config.labels not in ("exact", "bernoulli"):
        raise BadInput(f"sampled config: labels must be 'exact' or 'bernoulli', got {config.labels!r}")
    if config.optimizer not in ("sgd", "adam"):
        raise BadInput(f"sampled config: optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")
    number(config.lr, "sampled config: lr")


def recommended_values(solver: Solver, values: dict) -> dict:
    """``values`` (SampledConfig fields) with the solver's tuned ``sampled_defaults`` wherever a value still
    holds SampledConfig's generic default (`solve --recommended`, `bench tabular`)."""
    generic = SampledConfig()
    return values | {key: tuned for key, tuned in solver.sampled_defaults.items()
                     if key in values and values[key] == getattr(generic, key)}


def recommended_options(cls: type[Solver], config):
    """``config`` with the solver's tuned sampled options wherever it still holds the Config's defaults."""
    default = cls.Config()
    changes = {key: value for key, value in cls.sampled_options.items()
               if getattr(config, key) == getattr(default, key)}
    return replace(config, **changes)


class IterateLog(Hooks):
    """The loop's hooks for a tabular run: exact metrics of each iterate and the running sum behind the average
    iterate (both checkpointed with the loop)."""

    def __init__(self, game: PreferenceGame, policy: TabularPolicy, averaged: bool,
                 on_iteration: Callable[[int, dict], None] | None = None):
        self.game, self.policy, self.averaged, self.on_iteration = game, policy, averaged, on_iteration
        self.total = torch.zeros_like(game.mu)
        self.rows: list[dict] = []

    def current(self, iterations: int) -> tuple[Tensor, Tensor]:
        """(the iterate the guarantee is about, the last iterate) after ``iterations`` iterations."""
        last = self.policy.probabilities()
        if self.averaged and iterations > 0:
            return self.total / iterations, last
        return last, last

    def round_end(self, report: Iteration) -> None:
        iteration, info = report.iteration, report.info
        if self.averaged:
            self.total += self.policy.probabilities()
        policy, last = self.current(iteration)
        row = iterate_metrics(self.game, policy, last, iteration)
        for key, value in info.items():        # the exact metrics win any name clash with solver metrics
            row.setdefault(key, value)
        self.rows.append(row)
        if self.on_iteration is not None:
            self.on_iteration(iteration, row)

    def state_dict(self) -> dict:
        return {"total": self.total.clone(), "rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.total = state["total"].clone()
        self.rows = [dict(row) for row in state["rows"]]


def run_sampled(game: PreferenceGame, solver: Solver, config: SampledConfig,
                on_iteration: Callable[[int, dict], None] | None = None, *,
                checkpoint_dir: str | Path | None = None, resume: bool = False) -> ExactRun:
    """Train a tabular policy (initialised at ``solver.init(game)``) with ``solver``'s sampled loss.

    ``on_iteration(t, row)`` receives each iteration's metrics row (exact ``gap`` etc. plus ``queries``,
    ``loss`` and the solver's metrics). Seeded runs are reproducible bit for bit, also across a resume.
    """
    validate_config(config)
    with single_thread():
        return _run_sampled(game, solver, config, on_iteration, checkpoint_dir, resume)


@contextmanager
def single_thread():
    """Tabular tensors are tiny: intra-op threads only add wake-ups, which cost up to ~15 ms per op (seen with
    F.logsigmoid) when the cores are busy. One thread also keeps results independent of the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ContextSumBackend(SingleBackend):
    """One process, with a loss that is a mean over prompts (or pairs) turned into their sum.

    Each context's logits of a tabular policy see only that context's loss terms, so under SGD a mean over B
    contexts shrinks every context's step B-fold and ties a tuned lr to the number of contexts (defaults tuned on
    one-context games under-stepped 10-fold on the 10-context egpo-random game). Summing makes lr the per-context
    step, as the covered rounds' losses (``loss_count`` None) already are. Adam is left on means: its step does
    not depend on the gradient's scale."""

    def loss_scale(self, count: float | None) -> float:
        return 1.0 if count is None else max(count, 1.0)


def _run_sampled(game, solver, config, on_iteration, checkpoint_dir, resume) -> ExactRun:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    policy = TabularPolicy(solver.init(game))
    reference = TabularPolicy(game.log_mu).frozen()
    optimizer = (torch.optim.SGD if config.optimizer == "sgd" else torch.optim.Adam)(policy.parameters(),
                                                                                       lr=config.lr)
    log = IterateLog(game, policy, solver.iterate == "average", on_iteration)
    state = self_play(solver, policy, reference, MatrixOracle(game), optimizer,
                      num_contexts=game.num_contexts, iterations=config.iterations, samples=config.samples,
                      generator=generator, tau=game.tau, exact_labels=config.labels == "exact",
                      epochs=config.epochs, minibatches=config.minibatches,
                      contexts_per_round=config.contexts_per_round, hooks=log, checkpoints=checkpoint_dir,
                      resume=resume, backend=ContextSumBackend("cpu") if config.optimizer == "sgd" else None)
    policies, last = log.current(state["iteration"])
    return ExactRun(policies=policies, last_policies=last, iterations=state["iteration"],
                    seconds=state["seconds"], metrics=log.rows)
