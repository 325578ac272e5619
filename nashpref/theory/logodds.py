"""The log-odds payoff: play the game on R(x, a, b) = log(P/(1 − P)) instead of P (Azar et al., arXiv 2310.12036,
§4, on the Ψ transform of the preference; Munos et al., arXiv 2312.00886, on the regularised game).

R is skew-symmetric (logit(1 − p) = −logit(p)), so the τ-game  max_π min_π' πᵀRπ' − τKL(π‖μ) + τKL(π'‖μ)  is
symmetric with value 0 and its equilibrium satisfies π* ∝ μ exp(Rπ*/τ).

**Bradley-Terry.** If P = σ(s(r_a − r_b)) then R = s(r_a − r_b), and πᵀRπ' = s·E_π r − s·E_π' r splits: each
player maximises s·E_π r − τKL(π‖μ), so π* = μ exp(s·r/τ)/Z — the RLHF (Gibbs) policy, with scale exactly s/τ
(the probability payoff of a linear-reward game ½ + (r_a − r_b)/2 gives r/(2τ) instead).

**Solving it exactly.** The equilibrium depends on R/τ only, so with c = 1/(2 max|R|) the probability game
P' = ½ + cR (entries in [0, 1], P' + P'ᵀ = 1) at strength cτ has the same equilibrium, and every duality gap
is scaled by c: f'(π, π') = ½ + c·f_R(π, π'). That reuses the exact solver (``nashpref.core.equilibrium``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nashpref.core.equilibrium import solve_equilibrium
from nashpref.core.game import DTYPE, PreferenceGame, kl_divergence
from nashpref.errors import GameError


def log_odds(P: Tensor) -> Tensor:
    """R = log P − log(1 − P), made exactly skew ((L − Lᵀ)/2); P must lie in (0, 1)."""
    if (P <= 0).any() or (P >= 1).any():
        raise GameError("the log-odds payoff needs every preference strictly inside (0, 1): a certain "
                        "preference has infinite log-odds")
    L = torch.log(P) - torch.log1p(-P)
    return (L - L.transpose(-1, -2)) / 2


def equivalent_game(game: PreferenceGame) -> tuple[PreferenceGame, float]:
    """(P' = ½ + cR at strength cτ, c): a probability game with the log-odds game's equilibrium."""
    R = log_odds(game.P)
    top = R.abs().max().item()
    c = 1.0 if top == 0 else 1.0 / (2 * top)
    note = (f"Log-odds payoff R = log(P/(1 − P)), played as the probability game ½ + cR at τ' = cτ with "
            f"c = {c!r} (τ = {game.tau!r}): same equilibrium; every gap is c × the log-odds gap.")
    return PreferenceGame.create(0.5 + c * R, game.mu, c * game.tau, name=f"{game.name} (log-odds)",
                                 actions=game.actions, description=f"{game.description} {note}".strip()), c


def log_odds_gap(game: PreferenceGame, pi: Tensor) -> Tensor:
    """Exact duality gap of the log-odds τ-game per context: 2[τ log Σ_y μ(y) exp((Rπ)(y)/τ) + τ KL(π‖μ)]
    (value 0; the best response to π is softmax(log μ + Rπ/τ))."""
    scores = torch.einsum("cij,cj->ci", log_odds(game.P), pi)
    lse = torch.logsumexp(game.log_mu + scores / game.tau, dim=-1)
    return 2.0 * (game.tau * lse + game.tau * kl_divergence(pi, game.mu))


def solve_log_odds(game: PreferenceGame) -> tuple[Tensor, Tensor]:
    """(π*, its exact log-odds gap per context) for τ > 0."""
    if not game.tau > 0:
        raise GameError(f"{game.name}: the log-odds equilibrium is solved for τ > 0 only")
    equivalent, _ = equivalent_game(game)
    pi = solve_equilibrium(equivalent).policy
    return pi, log_odds_gap(game, pi)


def bradley_terry_gibbs(mu: Tensor, rewards: Tensor, scale: float, tau: float) -> Tensor:
    """μ exp(scale·r/τ)/Z: the log-odds equilibrium of P = σ(scale·(r_a − r_b))."""
    return torch.softmax(torch.log(mu) + scale * rewards.to(DTYPE) / tau, dim=-1)
