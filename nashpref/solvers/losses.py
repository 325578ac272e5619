"""Loss pieces shared by several solvers: the squared log-ratio regression and the (conservative) DPO loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def log_ratio_regression(log_prob: Tensor, log_prob_other: Tensor, ref: Tensor, ref_other: Tensor,
                         target: Tensor) -> Tensor:
    """Per-pair (h − target)², h = log π_θ(y)/μ(y) − log π_θ(y')/μ(y'): the squared loss behind online IPO,
    IPO-MD and EGPO; only the target differs between them."""
    margin = (log_prob - ref) - (log_prob_other - ref_other)
    return (margin - target) ** 2


def dpo_loss(log_ratio_chosen: Tensor, log_ratio_rejected: Tensor, beta: float,
             label_smoothing: float = 0.0) -> Tensor:
    """Per-pair (conservative) DPO loss −(1−ε) log σ(β(ℓ_w−ℓ_l)) − ε log σ(−β(ℓ_w−ℓ_l)), ℓ = log-ratio to the
    reference; ε = 0 is plain DPO."""
    logit = beta * (log_ratio_chosen - log_ratio_rejected)
    return -(1.0 - label_smoothing) * F.logsigmoid(logit) - label_smoothing * F.logsigmoid(-logit)
