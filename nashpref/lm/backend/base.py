"""The Backend protocol: everything that changes with the number of processes.

Solvers, oracles and the self-play loop never ask how many processes there are. The loop calls ``backward``,
``step``, ``shard`` (this rank's prompt groups of a round), ``reduce`` (the metrics of a round) and ``save`` /
``load`` (checkpoints); the trainer calls ``prepare``, ``make_optimizer``, ``gather``, ``full_weights`` (weights
for a sampler or the final model), ``is_main`` (only rank 0 writes files), ``barrier`` and ``close``.
``nashpref.lm.backend.single.SingleBackend`` is the one-process implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol, Sequence, TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")


class Backend(Protocol):
    """Everything that changes with the number of processes; solvers, oracles and the loop never ask."""

    rank: int
    world_size: int
    device: torch.device
    keyed: bool
    """Sampling and labels drawn per (round, prompt), so that a run's draws do not depend on the ranks' shares
    (see ``nashpref.lm.backend.keyed``); True for the data-parallel backends at any world size."""

    def loss_scale(self, count: float | None) -> float:
        """Factor on this rank's loss so that the mean of the ranks' gradients is the gradient of the whole
        batch's loss: N·count/Σcount when the loss is a mean over ``count`` items, N when it is a sum (None)."""
        ...

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        ...

    def prepare(self, policy: nn.Module, reference: nn.Module | None) -> None:
        """Place the models on ``device`` and wrap them (none / DDP / fully_shard)."""
        ...

    def make_optimizer(self, params, lr: float, weight_decay: float, beta1: float = 0.9) -> torch.optim.Optimizer: ...

    def backward(self, loss: Tensor) -> None: ...

    def step(self, optimizer, max_grad_norm: float | None) -> dict[str, float]:
        """Clip the gradient's global norm (when ``max_grad_norm`` is set), step, zero the gradients."""
        ...

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's contiguous share of a round's prompt groups (a group never crosses ranks)."""
        ...

    def reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean over ranks (weighted by count if given)."""
        ...

    def gather(self, rows: list) -> list:
        """Every rank's rows in rank order (rank 0 writes them)."""
        ...

    def full_weights(self, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        """The model's weights under their Hugging Face names, one full tensor at a time."""
        ...

    def save(self, directory: Path, model, optimizer, state: dict) -> None:
        """Write model, optimizer and ``state`` into ``directory``; complete when it returns."""
        ...

    def load(self, directory: Path, model, optimizer) -> dict:
        """Restore model and optimizer from ``directory``; returns the ``state`` saved with them."""
        ...

    def barrier(self) -> None: ...

    def close(self) -> None: ...
