"""What COMAL and MPO share: a KL centre ν (COMAL's prox centre, MPO's magnet) that is moved to the current
policy every so often, so that a sequence of regularised games

    max_π min_π'  P(π ≻ π') − τ KL(π‖ν) + τ KL(π'‖ν)

leads the last iterate to an equilibrium of the unregularised (τ = 0) game.

* Exact dynamics: :func:`anchored_game` is the game with ν in place of μ. It is built from log ν, so actions
  that the iterates drive towards probability 0 keep finite log-probabilities (they fall below −1000 on games
  whose equilibrium has partial support, where exp underflows).
* Sampled training: :class:`Anchor` keeps a snapshot of the policy (``round.snapshot()``, a copy that later
  optimizer steps do not change), refreshes it every ``period`` rounds and is saved with the loop's
  checkpoints, so a resumed run ends where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.errors import BadInput
from nashpref.solvers.base import Solver


def anchored_game(game: PreferenceGame, log_anchor: Tensor, tau: float) -> PreferenceGame:
    """``game`` with reference ν = exp(``log_anchor``) and strength ``tau``; its ``log_mu`` is ``log_anchor``."""
    anchored = dataclasses.replace(game, mu=log_anchor.exp(), tau=float(tau))
    anchored.__dict__["log_mu"] = log_anchor        # seeds the cached property: exp may underflow, log ν may not
    return anchored


def check_count(value, field: str, solver: str) -> int:
    """``value`` as an int >= 1, or BadInput."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(f"{solver}: {field} must be an integer >= 1, got {value!r}")
    return value


class ExactAnchor:
    """log ν for the exact dynamics: set to log π_t at t = 0, period, 2·period, … (and whenever the shape of
    the policy changes, i.e. a new game)."""

    def __init__(self) -> None:
        self.log_anchor: Tensor | None = None

    def reset(self) -> None:
        self.log_anchor = None

    def at(self, log_pi: Tensor, t: int, period: int) -> Tensor:
        if self.log_anchor is None or self.log_anchor.shape != log_pi.shape or t % period == 0:
            self.log_anchor = log_pi.detach().clone()
        return self.log_anchor


class Anchor:
    """ν for sampled training: a snapshot of π_t taken at rounds 0, period, 2·period, … of this solver."""

    def __init__(self) -> None:
        self.policy: Any = None
        self.rounds = 0
        self._saved: dict | None = None

    def reset(self) -> None:
        self.policy, self.rounds, self._saved = None, 0, None

    def update(self, round: Any, period: int) -> None:
        """Called once per round, from ``collect``: refresh ν to π_t when a new outer iteration starts."""
        if self._saved is not None:            # resumed: rebuild ν with the checkpoint's weights
            self.policy = round.snapshot()
            torch.nn.Module.load_state_dict(self.policy, self._saved)
            self._saved = None
        if self.policy is None or self.rounds % period == 0:
            self.policy = round.snapshot()
        self.rounds += 1

    def log_prob(self, contexts: Tensor, responses: Any, normalize: bool = False) -> Tensor:
        """(B, M) log ν(responses), without gradients."""
        with torch.no_grad():
            return self.policy.log_prob(contexts, responses, normalize=normalize)

    def state_dict(self) -> dict:
        weights = None if self.policy is None else \
            {key: value.detach().clone() for key, value in torch.nn.Module.state_dict(self.policy).items()}
        return {"rounds": self.rounds, "policy": weights if self._saved is None else self._saved}

    def load_state_dict(self, state: dict) -> None:
        self.rounds, self._saved, self.policy = state["rounds"], state["policy"], None


class AnchoredSolver(Solver):
    """The shared class settings of COMAL and MPO: the last iterate heads to the τ = 0 equilibrium, and the
    anchor is state that checkpoints must keep."""

    iterate = "last"
    needs_tau = False
    stateful = True
    min_samples = 2
