"""What every solver provides, and the registry the loop and the CLI build their choices from.

A solver has two faces that must agree:

* **exact dynamics** on a tabular game — ``init`` / ``step`` act on the (C, N) log-policy with exact win-rates;
  this is where convergence to the exact equilibrium is proven and tested;
* **sampled training** — ``collect`` asks a :class:`Round` for samples, preferences and frozen log-probs and
  returns a batch; ``loss`` turns a batch and the trainable policy into a scalar through the solver's pure loss
  function. The same two methods train a tabular policy or a language model: they only see the protocols.
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal, Protocol

from torch import Tensor

from nashpref.checks import integer
from nashpref.core.game import PreferenceGame
from nashpref.errors import BadInput
from nashpref.solvers.checks import check_choice, check_number

Iterate = Literal["last", "average"]
Source = Literal["policy", "reference", "mixture"]
Batch = dict[str, Any]


class Responses(Protocol):
    """Responses grouped per context, leading shape (B, K). A tabular policy uses a LongTensor of action ids;
    a language model a padded token tensor (B, K, T) with a mask. ``take`` picks along K with a (B, M) index."""

    def take(self, index: Tensor) -> "Responses": ...


def take(responses: Any, index: Tensor) -> Any:
    """Pick responses along K with a (B, M) index: ``gather`` for action-id tensors, ``.take`` for LM objects."""
    if isinstance(responses, Tensor):      # Tensor.take exists but indexes the flattened tensor: never use it
        return responses.gather(1, index)
    return responses.take(index)


class Policy(Protocol):
    """The one policy protocol: tabular logits and transformers causal LMs both implement it."""

    def log_prob(self, contexts: Tensor, responses: Any, normalize: bool = False) -> Tensor:
        """(B, K) sequence log-probs with gradients; ``normalize`` divides by response length (LMs)."""
        ...

    def sample(self, contexts: Tensor, n: int, generator: Any = None) -> Any:
        """(B, n) responses drawn from the policy; ``generator`` (a torch.Generator) makes the draw reproducible."""
        ...

    def sample_mixture(self, contexts: Tensor, n: int, reference: "Policy", beta: float, generator: Any = None) -> Any:
        """(B, n) responses from the geometric mixture π^(1−β) μ^β (exact for tables; token by token for LMs)."""
        ...

    def frozen(self) -> "Policy":
        """A detached snapshot π_t for one round (an LM also syncs its sampler's weights here)."""
        ...

    def snapshot(self) -> "Policy":
        """A frozen copy of the current weights that outlives the round (anchors: COMAL, MPO)."""
        ...


class Round(Protocol):
    """One self-play round as a solver sees it; built by the loop around the frozen iterate π_t."""

    contexts: Tensor            # (B,) context ids of this round
    samples: int                # K, the samples-per-context the user asked for
    exact_labels: bool          # False: ``prefer`` returns Bernoulli(P) labels in {0, 1}
    tau: float | None           # the KL strength τ of the game / training run (set by the loop)

    def sample(self, n: int, source: Source = "policy", beta: float = 0.0) -> Any:
        """(B, n) responses from π_t, from μ, or from the geometric mixture π_t^(1−β) μ^β."""
        ...

    def prefer(self, a: Any, b: Any) -> Tensor:
        """(B, M) preference P(a ≻ b | x) (or a sampled label) for responses a, b of equal shape (B, M)."""
        ...

    def log_prob(self, responses: Any, model: Literal["previous", "reference"], normalize: bool = False) -> Tensor:
        """(B, M) log-probs under the frozen π_t ("previous") or μ ("reference"), without gradients."""
        ...

    def snapshot(self) -> Policy:
        """A copy of π_t that later optimizer steps do not change (for solvers that keep an anchor policy)."""
        ...


@dataclasses.dataclass
class SolverConfig:
    """Options shared by every solver; each solver extends it with its own fields (their docstrings are the
    commands' help) and checks them in ``validate``."""

    # What ``validate`` checks, declared by each Config (plain class attributes, not annotated: so they are no
    # dataclass fields and no command-line options).
    positive = ()       # fields that must be finite numbers > 0 (or None: the solver's own default)
    choices = {}        # field -> the few values it may take
    bounded = {}        # field -> bound: a finite number in [0, bound]
    counts = ()         # fields that must be integers ≥ 0

    def validate(self, solver: str) -> None:
        """Raise BadInput (one line naming ``solver`` and the field) for a value no game could accept."""
        for name in self.positive:
            check_number(getattr(self, name), name, solver, allow_none=True)
        for name, allowed in self.choices.items():
            check_choice(getattr(self, name), name, solver, allowed)
        for name, bound in self.bounded.items():
            check_number(getattr(self, name), name, solver, high=bound, low_open=False)
        for name in self.counts:
            integer(getattr(self, name), f"{solver}: {name}", 0)


class Solver(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[SolverConfig]]
    # A solver declares these only where it differs from the defaults.
    iterate: ClassVar[Iterate] = "last"     # which iterate carries the convergence guarantee
    needs_tau: ClassVar[bool] = True        # False for solvers of the unregularised game (SPPO, DNO)
    extragradient: ClassVar[bool] = False   # the loop runs the half-step / restore dance when True
    stateful: ClassVar[bool] = False        # True: the loop checkpoints the solver's state_dict / load_state_dict
    # Tuned settings for sampled training of a tabular policy (`nashpref solve --mode sampled --recommended`):
    # SampledConfig fields, and this solver's own Config fields. What they reach: bench/solvers.md.
    sampled_defaults: ClassVar[dict] = {}
    sampled_options: ClassVar[dict] = {}

    # Responses per context that the sampled loss needs (pair-comparing solvers need two).
    min_samples: ClassVar[int] = 1

    def __init__(self, config: SolverConfig | None = None):
        self.config = config if config is not None else self.Config()
        self.config.validate(self.name)

    def check_sampled(self, samples: int, tau: float | None) -> None:
        """Raise BadInput when sampled training with K = ``samples`` responses per context at KL strength ``tau``
        cannot run: too few samples, or τ ≤ 0 for a solver of the regularised game."""
        if samples < self.min_samples:
            raise BadInput(f"{self.name}: needs at least {self.min_samples} samples per context to compare, "
                           f"got samples={samples}")
        if self.needs_tau and (tau is None or not tau > 0):
            raise BadInput(f"{self.name}: sampled training needs the round's KL strength tau > 0, got {tau!r}")

    # ---- exact tabular dynamics -----------------------------------------------------------------------------
    def default_iterations(self, game: PreferenceGame) -> int:
        return 1000

    def init(self, game: PreferenceGame) -> Tensor:
        """The starting log-policy (C, N); μ by default."""
        return game.log_mu.clone()

    @abstractmethod
    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        """log π_{t+1} from log π_t with exact win-rates (t counts from 0)."""

    # ---- sampled training -----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        raise NotImplementedError(f"{self.name} has no sampled training yet")

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError(f"{self.name} has no sampled training yet")

    def loss_count(self, batch: Batch) -> float | None:
        """What ``loss`` divides its sum over prompt groups by: the number of groups (a mean, the default), the
        number of kept pairs, or None for a plain sum. Data-parallel training weights each rank's loss by its
        share of this count, so the update is that of the whole batch's loss."""
        return float(batch["contexts"].shape[0])


REGISTRY: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: the solver becomes a choice of every command (``--solver NAME``)."""
    REGISTRY[cls.name] = cls
    return cls


def option_field(solver_name: str) -> str:
    """The attribute (and, with '-', the flag prefix) holding a solver's options in a command: 'nash-md' → nash_md."""
    return re.sub(r"\W", "_", solver_name)
