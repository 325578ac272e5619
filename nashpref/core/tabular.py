"""The tabular side of the loop's protocols: a table of logits per context (the policy on which every sampled
loss is checked against the exact game) and the game's exact preference as an oracle.

A response is a single action id, so responses are LongTensors of shape (B, K) and a response's sequence
log-prob is just the log-probability of its action (``normalize`` has nothing to divide by).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nashpref.core.game import DTYPE, PreferenceGame, as_tensor


class TabularPolicy(torch.nn.Module):
    """π(· | x_c) = softmax(logits[c]); ``logits`` is a (C, N) float64 parameter."""

    def __init__(self, logits: Tensor):
        super().__init__()
        logits = as_tensor(logits, DTYPE)
        if logits.dim() != 2:
            raise ValueError(f"TabularPolicy: logits must be (contexts, actions), got shape {tuple(logits.shape)}")
        self.logits = torch.nn.Parameter(logits.detach().clone())

    @property
    def num_actions(self) -> int:
        return self.logits.shape[-1]

    def log_table(self, contexts: Tensor | None = None) -> Tensor:
        """(B, N) log π(· | x) for the given contexts (all contexts if None), with gradients."""
        logits = self.logits if contexts is None else self.logits[contexts]
        return torch.log_softmax(logits, dim=-1)

    def probabilities(self) -> Tensor:
        """(C, N) π, detached."""
        return torch.softmax(self.logits.detach(), dim=-1)

    def log_prob(self, contexts: Tensor, responses: Tensor, normalize: bool = False) -> Tensor:
        """(B, K) log π(responses | contexts) with gradients; ``normalize`` is a no-op (one token each)."""
        return self.log_table(contexts).gather(1, responses)

    def sample(self, contexts: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, n) action ids drawn i.i.d. from π(· | x) for each context."""
        return _draw(self.log_table(contexts).detach(), n, generator)

    def sample_mixture(self, contexts: Tensor, n: int, reference, beta: float,
                       generator: torch.Generator | None = None) -> Tensor:
        """(B, n) action ids from the geometric mixture π^(1−β) μ^β, renormalised (exact for a table)."""
        actions = torch.arange(self.num_actions).expand(contexts.shape[0], -1)
        with torch.no_grad():
            log_mu = reference.log_prob(contexts, actions)
            mixed = (1.0 - beta) * self.log_table(contexts) + beta * log_mu
        return _draw(torch.log_softmax(mixed, dim=-1), n, generator)

    def frozen(self) -> "TabularPolicy":
        """A detached copy that later optimizer steps on ``self`` do not touch (π_t of a round)."""
        copy = TabularPolicy(self.logits.detach())
        copy.requires_grad_(False)
        return copy

    def snapshot(self) -> "TabularPolicy":
        """A frozen copy that outlives the round (an anchor such as COMAL's prox centre); the same as ``frozen``."""
        return self.frozen()


def _draw(log_probs: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    return torch.multinomial(log_probs.exp(), n, replacement=True, generator=generator)


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
