"""Held-out evaluation of each iterate: win-rates under the oracle against π_t and μ with common random numbers,
and the exact per-token KL(π‖μ) summed along held-out samples of π."""

from __future__ import annotations

import torch
from torch import Tensor

from nashpref.lm.responses import left_pad


class HeldOutEvaluator:
    """Win-rates and KL(π‖μ) on held-out prompts; every policy answers with the same seed (common random
    numbers), so equal weights give equal responses and the all-pairs win-rate between them is exactly ½."""

    def __init__(self, policy, reference, oracle, contexts: Tensor, samples: int, seed: int, score=None):
        self.policy, self.reference, self.oracle, self.score = policy, reference, oracle, score
        self.contexts, self.samples, self.seed = contexts, samples, seed
        self.previous = None            # responses of π_t
        self.baseline = None            # responses of μ

    def draw(self, model):
        return model.sample(self.contexts, self.samples, torch.Generator().manual_seed(self.seed))

    def start(self) -> None:
        """Responses of the current policy (π_t) and of μ, before the next iteration trains."""
        self.previous = self.draw(self.policy)
        self.baseline = self.draw(self.reference)

    def win_rate(self, a, b) -> float:
        """Mean P(a_i ≻ b_j) over all pairs (i, j) of the two policies' responses to each held-out prompt."""
        n = self.samples
        rows = self.contexts.shape[0]
        first = torch.arange(n).repeat_interleave(n).expand(rows, -1)
        second = torch.arange(n).repeat(n).expand(rows, -1)
        return self.oracle.prefer(self.contexts, a.take(first), b.take(second)).double().mean().item()

    def __call__(self) -> dict[str, float]:
        current = self.draw(self.policy)
        kl = sequence_kl(self.policy, self.reference, self.contexts, current)
        row = {"win_rate_vs_previous": self.win_rate(current, self.previous),
               "win_rate_vs_reference": self.win_rate(current, self.baseline),
               "kl_to_reference": kl.double().mean().item(),
               "eval_response_tokens": current.lengths.double().mean().item()}
        if self.score is not None:          # a caller's own metrics of the same responses (benchmarks)
            row |= self.score(current)
        self.previous = current
        return row


@torch.no_grad()
def sequence_kl(policy, reference, contexts: Tensor, responses, rows_per_pass: int = 4) -> Tensor:
    """(B, K) Σ_t KL(π(·|x, y_<t) ‖ μ(·|x, y_<t)) along each response y: the exact per-token KL summed over the
    response's tokens. Its mean over y ~ π is KL(π‖μ) of whole responses (the sum of conditional KLs is the
    chain rule), with far less variance than the mean of log π(y)/μ(y), and it is never negative. Both models
    must share one tokenizer; full next-token distributions are formed ``rows_per_pass`` responses at a time."""
    batch, samples, width = responses.tokens.shape
    tokens = responses.tokens.reshape(batch * samples, width)
    mask = responses.mask.reshape(batch * samples, width)
    prompt_rows = [policy.prompt_ids[c] for c in contexts.repeat_interleave(samples).tolist()]
    out = torch.zeros(batch * samples, dtype=torch.float64)
    for start in range(0, batch * samples, rows_per_pass):
        stop = min(start + rows_per_pass, batch * samples)
        part, part_mask = tokens[start:stop], mask[start:stop]
        log_p, log_q = (_next_token_log_probs(model, prompt_rows[start:stop], part, part_mask, policy.pad_id)
                        for model in (policy.model, reference.model))
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
        out[start:stop] = (per_token * part_mask.to(per_token)).sum(-1).double().cpu()
    return out.reshape(batch, samples)


def _next_token_log_probs(model, prompt_rows, tokens: Tensor, mask: Tensor, pad_id: int) -> Tensor:
    """(N, T, V) log-distributions of the response tokens' positions, inputs laid out as LMPolicy.log_prob does
    (prompts left-padded, responses right-padded, positions from the attention mask)."""
    device = next(model.parameters()).device
    prompts, prompt_mask = left_pad(prompt_rows, pad_id, device)
    input_ids = torch.cat([prompts, tokens.to(device)], dim=1)
    attention = torch.cat([prompt_mask, mask.to(device)], dim=1).long()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                   logits_to_keep=tokens.shape[1] + 1, use_cache=False).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1)
