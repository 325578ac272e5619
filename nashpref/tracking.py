"""Experiment tracking: every number of a metrics row, per iteration, to TensorBoard or Weights & Biases.

``--report-to tensorboard`` writes event files to ``OUT/tensorboard`` through ``torch.utils.tensorboard`` (needs
the ``tensorboard`` package); ``--report-to wandb`` logs to a Weights & Biases run in offline mode under
``OUT/wandb`` (needs the ``wandb`` package, the ``track`` extra; ``wandb sync`` uploads it later). Non-numeric
values (texts, lists) are left to metrics.jsonl.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Protocol

from nashpref.errors import MissingResource


class Tracker(Protocol):
    def log(self, row: dict, step: int, prefix: str = "") -> None: ...
    def close(self) -> None: ...


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``row`` (nested dicts flattened with '/'), keyed ``prefix/key``."""
    out = {}
    for key, value in row.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out |= scalars(value, name)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


class NoTracker:
    def log(self, row: dict, step: int, prefix: str = "") -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    def __init__(self, directory: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingResource("--report-to tensorboard needs the tensorboard package (pip install tensorboard)"
                                  ) from None
        self.writer = SummaryWriter(log_dir=str(directory))

    def log(self, row: dict, step: int, prefix: str = "") -> None:
        for name, value in scalars(row, prefix).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """Offline: nothing leaves the machine while the run lasts."""

    def __init__(self, directory: Path, config: dict | None, name: str | None):
        try:
            import wandb
        except ImportError:
            raise MissingResource("--report-to wandb needs the wandb package (pip install 'nashpref[track]')"
                                  ) from None
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(directory), config=config or {}, name=name,
                              project="nashpref", reinit=True)

    def log(self, row: dict, step: int, prefix: str = "") -> None:
        self.run.log(scalars(row, prefix), step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(kind: str, out: Path, config: dict | None = None, name: str | None = None) -> Tracker:
    """The tracker ``--report-to`` names, writing under ``out`` (which it creates)."""
    if kind == "none":
        return NoTracker()
    Path(out).mkdir(parents=True, exist_ok=True)
    if kind == "tensorboard":
        return TensorBoardTracker(Path(out) / "tensorboard")
    if kind == "wandb":
        return WandbTracker(Path(out), config, name)
    raise ValueError(f"unknown tracker {kind!r}")


def check_available(kind: str) -> None:
    """MissingResource now (before any work) when the tracker's package is not installed."""
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
    if package and importlib.util.find_spec(package) is None:
        extra = "pip install tensorboard" if kind == "tensorboard" else "pip install 'nashpref[track]'"
        raise MissingResource(f"--report-to {kind} needs the {package} package ({extra})")
