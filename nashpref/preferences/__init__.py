"""Preference oracles: ``prefer(contexts, a, b) -> P(a ≻ b | x)`` for batches of response pairs.

Text oracles are registered by the KIND of their ``--preference KIND:ARG`` spec. To add one, write a module with a
``TextOracle`` subclass decorated with ``@register`` (its ``prefix`` is the KIND) and import it below. The
tabular game's exact oracle is ``nashpref.core.tabular.MatrixOracle``.
"""

from nashpref.preferences.base import REGISTRY, TextOracle, load_text_oracle, register
from nashpref.preferences import reward, pairwise, judge, rule, python_hook  # noqa: F401,E402  (registers)
from nashpref.preferences import combine, linear, maxmin  # noqa: F401,E402  (mix:, ensemble:, linear:, maxmin:)

__all__ = ["REGISTRY", "TextOracle", "register", "load_text_oracle"]
