"""One process on one device: the Backend every run uses unless it is launched with several processes."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import torch
from torch import Tensor, nn

from nashpref.lm.checkpoints import load_state, restore_weights, save_state, write_model
from nashpref.io import atomic_write

T = TypeVar("T")
OPTIMIZER = "optimizer.pt"
POLICY = "policy.pt"


class SingleBackend:
    """Rank 0 of 1: no wrapping, no communication; ``reduce``, ``gather`` and ``shard`` return what they get."""

    rank = 0
    world_size = 1
    keyed = False           # random draws per call, batched over the round's prompts

    def loss_scale(self, count: float | None) -> float:
        return 1.0

    def __init__(self, device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def is_main(self) -> bool:
        return True

    def prepare(self, policy: nn.Module, reference: nn.Module | None) -> None:
        for model in (policy, reference):
            if model is not None:
                model.to(self.device)

    def make_optimizer(self, params, lr: float, weight_decay: float, beta1: float = 0.9) -> torch.optim.Optimizer:
        return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, betas=(beta1, 0.999))

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self, optimizer, max_grad_norm: float | None) -> dict[str, float]:
        metrics = {}
        if max_grad_norm is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return metrics

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        return items

    def reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        return dict(metrics)

    def gather(self, rows: list) -> list:
        return list(rows)

    def full_weights(self, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        state = model.full_state() if hasattr(model, "full_state") else model.state_dict()
        yield from state.items()

    def save(self, directory: Path, model, optimizer, state: dict) -> None:
        """A language model as ``model/`` (+ the LoRA adapter), any other policy as ``policy.pt``; the optimizer
        as ``optimizer.pt``; ``state`` as ``checkpoint.pt``."""
        if hasattr(model, "save_pretrained"):
            write_model(directory, model)
        else:
            atomic_write(directory / POLICY, lambda handle: torch.save(model.state_dict(), handle))
        atomic_write(directory / OPTIMIZER, lambda handle: torch.save(optimizer.state_dict(), handle))
        save_state(directory, state)

    def load(self, directory: Path, model, optimizer) -> dict:
        if hasattr(model, "save_pretrained"):
            restore_weights(model, directory)
        else:
            model.load_state_dict(torch.load(directory / POLICY, weights_only=True))
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER, weights_only=True))
        return load_state(directory)

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass
