"""The exact preference of a tabular game, read from its matrices."""

from __future__ import annotations

from torch import Tensor

from nashpref.game import PreferenceGame


class MatrixOracle:
    """P(a ≻ b | x_c) = P[c, a, b] for action ids; labels (if any) are drawn by the round, not here."""

    def __init__(self, game: PreferenceGame):
        self.P = game.P

    def prefer(self, contexts: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """(B, M) exact probabilities for (B,) contexts and (B, M) action ids ``a``, ``b``."""
        if a.shape != b.shape or a.shape[0] != contexts.shape[0]:
            raise ValueError(f"MatrixOracle: responses of shapes {tuple(a.shape)} and {tuple(b.shape)} "
                             f"for {contexts.shape[0]} contexts; expected equal (B, M) shapes")
        return self.P[contexts.unsqueeze(-1), a, b]
