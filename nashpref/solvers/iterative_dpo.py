"""Iterative DPO: the RLHF baseline (Dong et al., *RLHF Workflow*, arXiv 2405.07863; theory: Xiong et al., arXiv
2312.11456). It targets a **Gibbs policy of a Bradley-Terry reward, not the Nash equilibrium** of the preference
game.

Exact dynamics: each round fits Bradley-Terry scores to the preference by maximum likelihood on on-policy pairs and
takes the KL-regularised reward maximiser, anchored to μ (``reference="initial"``) or to π_t (``"previous"``).
Sampled training: best against worst of K samples (ties dropped), trained with the conservative DPO loss at β = τ.

The update, the loss, the sampling scheme, the options and the sources: docs/algorithms.md#iterative-dpo. What it
does on tabular games: bench/solvers.md.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from nashpref.core.game import PreferenceGame
from nashpref.solvers.base import Batch, Policy, Round, Solver, SolverConfig, register, take
from nashpref.solvers.checks import require_samples, require_tau, round_tau
from nashpref.solvers.losses import dpo_loss
from nashpref.solvers.win_rates import preference_matrix

TINY_WEIGHT = 1e-150     # floor on π: keeps the fit defined where π underflowed, and w·D clear of denormals (slow)
MAX_NEWTON_STEP = 0.5   # sup-norm cap of one Newton step on the scores
DEFAULT_ITERATIONS = 50  # BT and linear-reward games reach their fixed point in < 10 rounds; cycles never settle
CHUNK = 32               # contexts fitted together: their (chunk, N, N) temporaries stay in cache (N = 64: 1 MB)
START_CLAMP = 1e-9       # P is clamped to [this, 1 − this] for the starting logits: deterministic P gives ±20.7


def fit_bradley_terry(P: Tensor, weights: Tensor, ridge: float, tol: float = 1e-11,
                      max_steps: int = 500) -> Tensor:
    """Scores s (C, N) maximising Σ_ij w_i w_j P_ij log σ(s_i − s_j) − (ridge/2) Σ_i w_i s_i², batched.

    The ridge is weighted like the data: w_i is action i's share of the pairs. It therefore shrinks every score
    by the same relative amount (≈ ridge/σ'), however rare the action, and deterministic preferences still get
    finite scores. The objective is strictly concave and logistic, so its curvature changes by at most a factor
    e^(2|Δ|) over a step of sup-norm |Δ|. Capping Newton steps at sup-norm ½ keeps each step where the quadratic
    model holds to a factor e. Near the optimum the cap is inactive and convergence is quadratic. No objective
    values are compared: they cannot resolve the scores of actions whose weights are ~1e-9 or less. The Newton
    system is Jacobi-scaled because the weights can span hundreds of orders of magnitude.

    Newton starts from s_i = Σ_j w_j logit P_ij, exact (up to a constant) on a Bradley-Terry game, which saves
    steps (bench/solvers.md counts them); deterministic preferences take the most, as their scores climb to
    ≈ log(1/ridge). Contexts are fitted CHUNK at a time, so that the (chunk, N, N) temporaries stay in cache.
    """
    w = weights.clamp(min=TINY_WEIGHT)
    scores = torch.empty_like(w)
    for lo in range(0, w.shape[0], CHUNK):
        part = slice(lo, lo + CHUNK)
        scores[part] = _newton(P[part], w[part], ridge, tol, max_steps)
    return scores


def _newton(P: Tensor, w: Tensor, ridge: float, tol: float, max_steps: int) -> Tensor:
    """Damped Newton for ``fit_bradley_terry`` on one chunk of contexts; w is already floored. Each context stops
    when its own step has converged, not when the chunk's slowest has."""
    # both laid out so that every product below reads σ(s_i − s_j) in order, never transposed
    P_t_w = (P.transpose(-1, -2) * w.unsqueeze(-2)).contiguous()       # [i, j] = w_j P_ji
    P_w_t = (P * w.unsqueeze(-2)).transpose(-1, -2).contiguous()       # [j, i] = w_j P_ij
    clamped = P.clamp(START_CLAMP, 1.0 - START_CLAMP)
    s = (torch.logit(clamped) * w.unsqueeze(-2)).sum(-1) / w.sum(-1, keepdim=True)
    fitted, active = s.clone(), torch.arange(s.shape[0])
    # (chunk, N, N) work buffers, reused every step: fresh ones cost page faults that dominate the arithmetic
    buffers = torch.empty_like(P), torch.empty_like(P), torch.empty_like(P)
    for _ in range(max_steps):
        win, product, curvature = (buffer[:s.shape[0]] for buffer in buffers)
        torch.sub(s.unsqueeze(-1), s.unsqueeze(-2), out=win).sigmoid_()   # σ(s_i − s_j); transposed: σ(s_j − s_i)
        # the gradient divided by w_i, Σ_j w_j (P_ij σ(s_j − s_i) − P_ji σ(s_i − s_j)) − ridge·s_i: P − σ(d)
        # written this way has no cancellation when P ∈ {0, 1} and σ(d) ≈ P
        grad = torch.mul(P_w_t, win, out=product).sum(-2)
        grad -= torch.mul(P_t_w, win, out=product).sum(-1)
        grad -= ridge * s
        # minus the Hessian is diag(w)·(diag(D) − K·diag(w)), K_ij = σ'(s_i − s_j) off the diagonal,
        # D = K w + ridge; Jacobi-scaled: I − diag(u) K diag(u), u = √(w/D)
        torch.mul(win, win.transpose(-1, -2), out=curvature).diagonal(dim1=-2, dim2=-1).zero_()
        diagonal = torch.mul(curvature, w.unsqueeze(-2), out=product).sum(-1) + ridge
        u = (w / diagonal).sqrt()
        scaled = curvature.mul_(u.unsqueeze(-1)).mul_(u.unsqueeze(-2)).neg_()
        scaled.diagonal(dim1=-2, dim2=-1).fill_(1.0)
        solved = _solve_positive_definite(scaled, u * grad)
        delta = solved * (w * diagonal).rsqrt()
        size = delta.abs().amax(-1, keepdim=True)
        s = s + delta * (MAX_NEWTON_STEP / size).clamp(max=1.0)
        # A common shift of all scores is pinned only by the ridge (curvature ~ridge), so rounding noise ~1e-17/ridge
        # lives there; it changes no probability, so convergence is judged on score differences.
        going = (delta - delta.mean(-1, keepdim=True)).abs().amax(-1) > tol
        if not going.all():
            fitted[active] = s
            if not going.any():
                return fitted
            active, s, w, P_t_w, P_w_t = active[going], s[going], w[going], P_t_w[going], P_w_t[going]
    fitted[active] = s
    return fitted


def _solve_positive_definite(matrix: Tensor, rhs: Tensor) -> Tensor:
    """x with matrix·x = rhs, batched: Cholesky (faster than LU here); LU where rounding breaks it."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if bool(info.any()):
        return torch.linalg.solve(matrix, rhs.unsqueeze(-1)).squeeze(-1)
    half = torch.linalg.solve_triangular(factor, rhs.unsqueeze(-1), upper=False)
    return torch.linalg.solve_triangular(factor.transpose(-1, -2), half, upper=True).squeeze(-1)


@dataclasses.dataclass
class Config(SolverConfig):
    positive = ("ridge",)
    choices = {"reference": ("initial", "previous")}
    bounded = {"label_smoothing": 0.5}

    reference: Literal["initial", "previous"] = "initial"
    """KL anchor of each round: 'initial' = μ (online iterative RLHF; its fixed point is a Gibbs policy),
    'previous' = π_t (the RLHF-Workflow recipe; the iterates drift to the argmax of the BT scores)."""
    ridge: float = 1e-10
    """Exact dynamics: relative ridge on the BT scores, weighted by each action's share of the pairs. It keeps
    deterministic preferences finite and biases every score by about this fraction."""
    label_smoothing: float = 0.1
    """Sampled training: cDPO label smoothing ε (RLHFlow uses 0.1; 0 is plain DPO)."""


@register
class IterativeDPO(Solver):
    name = "iterative-dpo"
    Config = Config
    min_samples = 2

    def default_iterations(self, game: PreferenceGame) -> int:
        return DEFAULT_ITERATIONS

    def scores(self, game: PreferenceGame, pi: Tensor) -> Tensor:
        """BT maximum-likelihood scores of the game's preference under on-policy pair weights π⊗π."""
        return fit_bradley_terry(game.P, pi, self.config.ridge)

    def step(self, game: PreferenceGame, log_pi: Tensor, t: int) -> Tensor:
        tau = require_tau(game, self.name)
        scores = self.scores(game, log_pi.exp())
        anchor = game.log_mu if self.anchor() == "reference" else log_pi
        return torch.log_softmax(anchor + scores / tau, dim=-1)      # log Gibbs(anchor, s/τ)

    def anchor(self) -> str:
        """The round's model each update is anchored to: μ ("reference") or π_t ("previous")."""
        return "reference" if self.config.reference == "initial" else "previous"

    # ---- sampled training ----------------------------------------------------------------------------------
    def collect(self, round: Round) -> Batch:
        k = round.samples
        require_samples(self.name, k)
        responses = round.sample(k)
        matrix = preference_matrix(round, responses, k)
        score = (matrix.sum(-1) - 0.5) / (k - 1)            # mean preference against the *other* samples
        best, worst = score.argmax(-1), score.argmin(-1)
        pair = take(responses, torch.stack([best, worst], dim=-1))
        keep = score.gather(1, best[:, None]) > score.gather(1, worst[:, None])
        return {"contexts": round.contexts, "responses": pair, "keep": keep.squeeze(-1).to(torch.float64),
                "log_prob_anchor": round.log_prob(pair, self.anchor()), "tau": round_tau(round, self.name)}

    def loss(self, batch: Batch, policy: Policy) -> tuple[Tensor, dict[str, float]]:
        log_prob = policy.log_prob(batch["contexts"], batch["responses"])
        log_ratio = log_prob - batch["log_prob_anchor"].to(log_prob)
        keep = batch["keep"].to(log_prob)
        per_pair = dpo_loss(log_ratio[:, 0], log_ratio[:, 1], batch["tau"], self.config.label_smoothing)
        loss = (per_pair * keep).sum() / keep.sum().clamp(min=1.0)
        return loss, {"kept": keep.mean().item()}

    def loss_count(self, batch: Batch) -> float | None:
        return float(batch["keep"].sum())
