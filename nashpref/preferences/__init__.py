"""Preference oracles: ``prefer(contexts, a, b) -> P(a ≻ b | x)`` for batches of response pairs.

Text oracles are registered by the KIND of their ``--preference KIND:ARG`` spec. To add one, write a module with a
``TextOracle`` subclass decorated with ``@register`` (its ``prefix`` is the KIND) and import it below. The
tabular game's exact oracle is ``nashpref.core.tabular.MatrixOracle``.
"""

from nashpref.errors import BadInput
from nashpref.preferences.base import REGISTRY, TextOracle, register
from nashpref.preferences import reward, pairwise, judge, rule, python_hook  # noqa: F401,E402  (registers)
from nashpref.preferences import combine  # noqa: F401,E402  (registers mix:, ensemble:)

__all__ = ["REGISTRY", "TextOracle", "register", "load_text_oracle"]


def load_text_oracle(spec: str, *, device: str | None = None, dtype: str = "auto") -> TextOracle:
    """An oracle from ``reward:PATH``, ``pairwise:PATH``, ``judge:PATH``, ``rule:NAME``, ``python:FILE.py:NAME``,
    ``mix:W=SPEC;…``, ``ensemble:AGG:PATH,…`` (or any other registered KIND)."""
    kind, sep, arg = spec.partition(":")
    kinds = ", ".join(REGISTRY)
    if not sep or not arg:
        raise BadInput(f"--preference {spec!r}: expected KIND:ARG with KIND one of {kinds}")
    if kind not in REGISTRY:
        raise BadInput(f"--preference {spec!r}: unknown kind {kind!r}; use one of {kinds}")
    return REGISTRY[kind].from_spec(arg, device=device, dtype=dtype)
