"""SPPO: Self-Play Preference Optimization (Wu, Sun, Yuan, Ji, Yang, Gu; arXiv 2405.00675, ICLR 2025).

**Exact dynamics.** Multiplicative weights (Hedge) on the *unregularised* game, started at μ:

    π_{t+1}(y) ∝ π_t(y) exp(η P(y ≻ π_t)).

SPPO has no KL term to μ, so it ignores τ and solves the τ = 0 game. The guarantee is on the **average iterate**
π̄_T = (1/T) Σ_t π_t. Its unregularised gap equals 2·regret/T exactly (see ``nashpref.solvers.hedge``), and Hedge's regret bound
gives Gap₀(π̄_T) ≤ √(2L/T) = O(1/√T) for the step η = √(8L/T), with L = log(1/min μ). By default the horizon is
chosen so that this bound is ``target_gap``. The **last iterate does not converge**: around an interior
equilibrium it cycles outward (tests/test_sppo.py measures this).

**Sampled training** (paper §4, code ``uclaml/SPPO``). Draw K responses per prompt from π_t and query the K×K
preference matrix. The self term ½ is included, not queried. Estimate P̂(y ≻ π_t) as the row mean, then
regress every chosen response onto the multiplicative-weights target:

    ℓ(y) = (log π_θ(y)/π_t(y) − η(P̂(y ≻ π_t) − ½))².

The paper replaces log Z by η/2 (E_{π_t} P(y ≻ π_t) = ½), so the population minimiser is close to the MW step
but not equal to it. The L1 bias at η = 2 is 2e-3 to 1e-2 and grows 5–7× per doubling of η.

On tabular policies (tests/test_sppo.py), with Adam and one step per round, η only rescales the gradient, and
Adam's normalisation removes that scale. SAMPLED_ETA = 1 is therefore a neutral default: set η explicitly for
SGD or several epochs. The paper's η = 1000 is for language-model sequence log-probs.
* weighted-rps (K = 8, Adam lr 1e-3, 6000 rounds): Gap₀(π̄) = 0.010–0.018 over 5 seeds.
* egpo-random: 0.57 in the worst context (mean 0.27; μ itself: 0.60 / 0.37). Exact MW reaches 0.018 in 4351
  steps. The on-policy loss moves only sampled actions, so an action with π(y) ≪ 1/K is almost never drawn again
  and cannot recover, while MW's cycles pass close to the boundary.

**Coverage fix (recommended for tabular runs: ``SPPO.sampled_defaults`` and ``SPPO.sampled_options``).** The
regression is pointwise, so its minimiser does not depend on which distribution the regressed responses come
from. ``reference_samples`` adds responses drawn from μ, scored against the K on-policy opponents. Once every
action is regressed, only the normaliser remains: the paper's η/2 is biased (Jensen), and with μ-distributed
responses the least-squares compromise lands on the wrong actions. ``log_partition='fit'`` fits log Z by least
squares instead, so a fully covered round's minimiser is exactly π_t exp(η P̂)/Z. ``distinct`` counts each
action once; the round's loss is then a quadratic in the logits, which one SGD step of lr ½ minimises exactly.
Coverage must be near-complete: fitted log Z moves an uncovered action like the covered ones' average. In a
simulation of the exact per-round minimiser with 32 μ-samples (egpo-random, 1000 rounds), that raised the worst
gap to 0.37, against 0.022 when uncovered actions keep their logits.
With η = 0.5, K = 8, 1024 μ-samples, SGD lr ½, one epoch, seed 0:
* egpo-random: worst / mean context 0.024 / 0.016 after 1000 rounds, 0.016 / 0.010 after 2000 (exact MW at
  η = 0.5, worst context: 0.026 after 1000, 0.013 after 2000).
* weighted-rps: 0.0018 after 1000 rounds, 0.013 after 2000 (the recommended settings).
* EGPO random games with 3 contexts (tests/test_sppo.py), 2000 rounds, 6 seeds: 0.011–0.020.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.errors import BadInput
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register, take
from nashpref.solvers.checks import check_number, require_samples
from nashpref.solvers.coverage import compact, distinct_weights
from nashpref.solvers.hedge import hedge_horizon, hedge_step
from nashpref.solvers.win_rates import preference_matrix, reference_entries

SAMPLED_ETA = 1.0


def sppo_loss(log_prob: Tensor, log_prob_previous: Tensor, win_rate: Tensor, eta: float) -> Tensor:
    """Per-response SPPO loss (log π_θ(y) − log π_t(y) − η(P̂(y ≻ π_t) − ½))², same shape as the inputs."""
    return (log_prob - log_prob_previous - eta * (win_rate - 0.5)) ** 2


def sppo_context_loss(log_prob: Tensor, log_prob_previous: Tensor, win_rate: Tensor, eta: float,
                      weight: Tensor | None = None, fit_log_partition: bool = False) -> Tensor:
    """(B,) per-context SPPO loss over K responses: the mean of ``sppo_loss``, or with ``weight`` (B, K) the sum
    Σ w·ℓ. ``fit_log_partition`` replaces the paper's log Z ≈ η/2 by its least-squares value, i.e. the
    (weighted) mean residual is subtracted first."""
    residual = log_prob - log_prob_previous - eta * (win_rate - 0.5)
    w = torch.full_like(residual, 1.0 / residual.shape[-1]) if weight is None else weight.to(residual)
    if fit_log_partition:
        residual = residual - (w * residual).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)
    return (w * residual ** 2).sum(-1)


@dataclasses.dataclass
class Config(SolverConfig):
    eta: float | None = None
    """Step size η of π_{t+1} ∝ π_t exp(η P(y ≻ π_t)) (the SPPO code's beta is 1/η). None: exact dynamics use
    the Hedge step √(8 log(1/min μ)/T) for the default horizon T. Sampled training uses 1.0, which is neutral
    under Adam with one step per round. The paper's η = 1000 is for language-model sequence log-probs: pass it
    explicitly there."""
    target_gap: float = 0.05
    """The default horizon is the smallest T whose Hedge bound √(2 log(1/min μ)/T) on the average iterate's
    unregularised gap is at most this."""
    pairs: Literal["all", "best-worst"] = "all"
    """Sampled training: regress all K samples ('all', the paper's population loss E_{y~π_t}, whose minimiser is
    the MW step up to the log Z bias), or only the best and worst by P̂ ('best-worst', what the paper's code trains
    on; mid-ranked actions get no target). Tabular, Adam lr 1e-3, 6000 rounds: weighted-rps 0.012 vs 0.011 (a tie
    at N = 3), egpo-random worst context 0.57 vs 0.61."""
    reference_samples: int = 0
    """Sampled training: also regress this many responses per context drawn from μ, each scored against the K
    on-policy samples (the opponents stay π_t). The regression's pointwise minimiser does not depend on where the
    regressed responses come from, so this only adds coverage: actions that π_t has nearly dropped still get
    targets. 0 (the paper) regresses the on-policy samples only."""
    log_partition: Literal["half", "fit"] = "half"
    """Sampled training: 'half' is the paper's target, which replaces log Z by η/2. 'fit' fits log Z per context
    by least squares (the residuals are centred), so a fully covered round's minimiser is the MW step exactly."""
    distinct: bool = False
    """Sampled training on action ids: each distinct response counts once, and the loss is summed over distinct
    responses and contexts, so SGD with lr ½ solves a 'fit' round in one step. Ignored for language-model
    responses (never repeated)."""


@register
class SPPO(Solver):
    name = "sppo"
    Config = Config
    iterate = "average"
    needs_tau = False
    # Recommended tabular sampled training (see the module docstring): SampledConfig fields, and the solver
    # options that go with them. One SGD step of lr ½ solves a round's 'fit' + 'distinct' regression exactly.
    sampled_defaults: ClassVar[dict] = {"lr": 0.5, "optimizer": "sgd", "samples": 8, "iterations": 2000,
                                        "epochs": 1}
    sampled_options: ClassVar[dict] = {"eta": 0.5, "reference_samples": 1024, "log_partition": "fit",
                                       "distinct": True}

    def default_iterations(self, game: PreferenceGame) -> int:
        return hedge_horizon(game, self.config.target_gap)

    def step_size(self, game: PreferenceGame) -> float:
        if self.config.eta is None:
            return hedge_step(game, self.default_iterations(game))
        return check_number(self.config.eta, "eta", self.name)

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        return torch.log_softmax(log_pi + self.step_size(game) * game.win_rates(log_pi.exp()), dim=-1)

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        k = round.samples
        require_samples(self.name, k)
        responses = round.sample(k)
        if self.config.pairs not in ("all", "best-worst"):
            raise BadInput(f"{self.name}: pairs must be 'all' or 'best-worst', got {self.config.pairs!r}")
        win_rate = preference_matrix(round, responses, k).mean(-1)   # row mean incl. the self term ½
        if self.config.pairs == "best-worst":
            index = torch.stack([win_rate.argmax(-1), win_rate.argmin(-1)], dim=-1)
            responses, win_rate = take(responses, index), win_rate.gather(1, index)
        batch = {"contexts": round.contexts, "responses": responses, "win_rate": win_rate,
                 "log_prob_previous": round.log_prob(responses, "previous")}
        return batch | reference_entries(round, self.name, self.config.reference_samples, responses, k,
                                         "win_rate")

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        contexts = batch["contexts"]
        log_prob = policy.log_prob(contexts, batch["responses"])
        previous, win_rate = batch["log_prob_previous"], batch["win_rate"]
        weight = distinct_weights(batch["responses"]) if self.config.distinct else None
        if "reference_responses" in batch:
            others = batch["reference_responses"]
            log_prob = torch.cat([log_prob, policy.log_prob(contexts, others)], dim=-1)
            previous = torch.cat([previous, batch["reference_log_prob_previous"]], dim=-1)
            win_rate = torch.cat([win_rate, batch["reference_win_rate"]], dim=-1)
            if self.config.distinct:
                weight = distinct_weights(torch.cat([batch["responses"], others], dim=-1)
                                          if isinstance(others, Tensor) else others)
        previous, win_rate = previous.to(log_prob), win_rate.to(log_prob)
        if weight is not None:
            weight, log_prob, previous, win_rate = compact(weight, log_prob, previous, win_rate)
        eta = SAMPLED_ETA if self.config.eta is None else check_number(self.config.eta, "eta", self.name)
        if self.config.log_partition not in ("half", "fit"):
            raise BadInput(f"{self.name}: log_partition must be 'half' or 'fit', got {self.config.log_partition!r}")
        fit = self.config.log_partition == "fit"
        per_context = sppo_context_loss(log_prob, previous, win_rate, eta, weight, fit)
        # distinct: summed over contexts too, so lr ½ stays one exact step whatever the batch size
        loss = per_context.sum() if weight is not None else per_context.mean()
        return loss, {"log_ratio": (log_prob - previous).mean().item()}
