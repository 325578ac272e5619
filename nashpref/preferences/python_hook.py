"""``python:FILE.py:NAME`` — a user's own preference function, loaded from a file (API judges, custom raters).

The function is called as ``NAME(prompts, responses_a, responses_b)`` with three lists of equal length n
(prompts as the dataset holds them: text, or a list of chat messages) and must return n probabilities
P(a ≻ b | x) in [0, 1] (a list, tuple, numpy array or tensor of numbers). Anything else is a BadInput that
names the function and the rule broken.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from nashpref.errors import BadInput, MissingResource
from nashpref.preferences.base import Prompt, TextOracle, check_lengths, register

def load_function(spec: str):
    """The callable NAME from FILE.py (``spec`` is "FILE.py:NAME")."""
    file, sep, name = spec.rpartition(":")
    if not sep or not file or not name:
        raise BadInput(f"python:{spec}: expected python:FILE.py:NAME")
    path = Path(file)
    if not path.is_file():
        raise MissingResource(f"python:{spec}: file {file} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"nashpref_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise BadInput(f"python:{spec}: {file} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: any error must become one line naming it
        raise BadInput(f"python:{spec}: importing {file} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise BadInput(f"python:{spec}: {file} defines no {name!r}")
    if not callable(fn):
        raise BadInput(f"python:{spec}: {name!r} is not callable")
    return fn


@register
class PythonOracle(TextOracle):
    """Calls the user's function and checks what it returns."""

    prefix = "python"

    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_function(spec)

    @classmethod
    def from_spec(cls, arg: str, *, device: str | None = None, dtype: str = "auto") -> "PythonOracle":
        return cls(arg)

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        n = check_lengths(f"python:{self.spec}", prompts, a, b)
        try:
            result = self.fn(list(prompts), list(a), list(b))
        except Exception as exc:    # user code: its failure is one line naming it, at any point of a run
            raise BadInput(f"python:{self.spec}: raised {type(exc).__name__}: {exc}") from None
        return validate_probabilities(result, n, f"python:{self.spec}")


def validate_probabilities(result, n: int, where: str) -> Tensor:
    """(n,) float32 tensor from a user's return value, or a BadInput saying what is wrong with it."""
    if isinstance(result, Tensor):
        result = result.detach().cpu().reshape(-1).tolist() if result.dim() <= 1 else result
    elif hasattr(result, "tolist") and getattr(result, "ndim", 1) <= 1:       # numpy arrays and scalars
        result = result.tolist()
    if not isinstance(result, (list, tuple)):
        raise BadInput(f"{where}: must return a list of {n} probabilities, got {type(result).__name__}")
    if len(result) != n:
        raise BadInput(f"{where}: returned {len(result)} values for {n} pairs")
    values = []
    for i, value in enumerate(result):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise BadInput(f"{where}: value {i} is {value!r} ({type(value).__name__}), not a number")
        value = float(value)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise BadInput(f"{where}: value {i} is {value!r}, outside [0, 1]")
        values.append(float(value))
    return torch.tensor(values, dtype=torch.float32)
