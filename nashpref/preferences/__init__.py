"""Preference oracles: ``prefer(contexts, a, b) -> P(a ≻ b | x)`` for batches of response pairs."""

from nashpref.preferences.matrix import MatrixOracle

__all__ = ["MatrixOracle"]
