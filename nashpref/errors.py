"""The errors a user can fix: the command line prints each as one line ``error: …`` and exits with status 2
(``nashpref.cli.main`` is the one place that does). Anything else is a bug and keeps its traceback.

``NashprefError`` is the base; raise the most specific subclass:

* ``BadInput``: an option, a value or the contents of a file breaks a rule (``GameError``: a game, its matrix or
  its reference; ``UsageError``: the command line itself);
* ``MissingResource``: a file, directory, model or optional package that is not there;
* ``NumericalFailure``: a computation produced what it must not (non-finite numbers, no convergence; a sampling
  engine not running the policy's weights: ``WeightSyncError``; samples from the wrong weights: ``StaleSamplesError``).
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class NashprefError(ValueError):
    """A problem with what the user asked for, stated in one line."""


class BadInput(NashprefError):
    """An option, a value or a file's contents breaks a rule."""


class GameError(BadInput):
    """A preference game, its matrix, its reference policy or τ breaks a rule."""


class UsageError(BadInput):
    """A command-line problem that is not about a game file."""


class MissingResource(NashprefError):
    """A file, directory, model or optional package that is needed is not there."""


class NumericalFailure(NashprefError):
    """A computation produced non-finite numbers or did not converge."""


class WeightSyncError(NumericalFailure):
    """A sampling engine's log-probs disagree with the policy's: it is not running the policy's weights."""


class StaleSamplesError(NumericalFailure):
    """A round's samples came from other weights than the round's policy."""


def one_line(error: BaseException) -> str:
    """The ``error: …`` line for ``error`` (whitespace, newlines included, collapsed to single spaces)."""
    return "error: " + " ".join(str(error).split())
