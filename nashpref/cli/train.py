"""`nashpref train` and `nashpref fit-preference`: the language-model commands."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Annotated, Literal

import tyro

from nashpref.lm.config import TrainConfig
from nashpref.solvers import REGISTRY, option_field


def build_train_command() -> type:
    """TrainConfig with ``solver`` a choice over the registry and one nested Config per registered solver
    (``--<solver>.<option>``), built like the ``solve`` command of nashpref.cli."""
    listing = ", ".join(f"{name} ({cls.iterate} iterate)" for name, cls in REGISTRY.items())
    choice = Annotated[Literal[tuple(REGISTRY)], tyro.conf.arg(help=f"Solver: {listing}.")]  # type: ignore[misc]
    fields = [("solver", choice)]       # a redefined field keeps its place among TrainConfig's fields
    fields += [(option_field(name), cls.Config, dataclasses.field(default_factory=cls.Config))
               for name, cls in REGISTRY.items()]
    train = dataclasses.make_dataclass("Train", fields, bases=(TrainConfig,))
    train.__doc__ = TrainConfig.__doc__
    return train


def quiet_library_progress() -> None:
    """For the command line: its own progress bar is the only one; transformers' loading / saving bars and
    datasets' bars are switched off."""
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        datasets.disable_progress_bars()


def run_train_command(cmd, report_to: str = "none") -> int:
    from nashpref.lm.startup import import_libraries

    import_libraries()
    quiet_library_progress()
    from nashpref.lm.trainer import run_train

    result = run_train(cmd, report_to=report_to)
    if int(os.environ.get("RANK", "0")) != 0:      # under torchrun, rank 0 speaks for the job
        return 0
    last = result.rows[-1] if result.rows else {}
    shown = ", ".join(f"{key} {last[key]:.4g}" for key in ("loss", "win_rate_vs_reference", "kl_to_reference")
                      if isinstance(last.get(key), (int, float)))
    print(f"trained {result.iterations} iterations in {result.seconds:.1f} s{': ' + shown if shown else ''}; "
          f"wrote {result.final}")
    return 0


def run_fit_preference_command(cmd) -> int:
    from nashpref.lm.startup import import_libraries

    import_libraries()
    quiet_library_progress()
    from nashpref.preferences.fit import run_fit_preference

    result = run_fit_preference(cmd)
    last = result.rows[-1]
    shown = ", ".join(f"{key} {last[key]:.4g}" for key in ("train_loss_after", "validation_loss",
                                                           "validation_accuracy") if key in last)
    print(f"fitted {len(result.rows) - 1} epochs: {shown}; wrote {result.out}")
    return 0
