"""Sampling with transformers: ``generate`` for a policy, and Nash-MD's geometric mixture token by token.

Both draw every random number from a seed taken off the loop's generator, so a run is a deterministic function
of its seed. Per-token log-probs come back at temperature 1 (the model's own distribution, or the mixture's).

The mixture π^β(y_t | x, y_<t) ∝ π(y_t | ·)^(1−β) μ(y_t | ·)^β = softmax((1−β)·logits_π + β·logits_μ) is
sampled with **both KV caches on**: one forward over the prompt per model, then one single-token forward per
model per generated token (TRL switches the cache off and re-runs both models on the whole prefix each token).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nashpref.lm.responses import TokenResponses, responses_from_lists
from nashpref.lm.samplers.base import SamplingConfig, draw_seed

__all__ = ["HFSampler", "MixtureDecoder", "sample_mixture", "generate_texts", "cut_at_eos"]


class HFSampler:
    """``sample(policy, contexts, n, generator)`` with transformers ``generate`` on the policy's own module."""

    backend = "hf"

    def __init__(self, config: SamplingConfig | None = None, batch_size: int = 64):
        self.config = config or SamplingConfig()
        self.batch_size = batch_size
        """Prompts per ``generate`` call (each expands to n sequences)."""

    def sample(self, policy, contexts: Tensor, n: int, generator: torch.Generator | None = None) -> TokenResponses:
        seed = draw_seed(generator)
        rows = [policy.prompt_ids[c] for c in contexts.tolist()]
        sequences, logprobs = [], []
        for start in range(0, len(rows), self.batch_size):
            seqs, lps = _generate(policy.model, rows[start:start + self.batch_size], n, self.config,
                                  seed + start, policy.pad_id, policy.eos_ids)
            sequences += seqs
            logprobs += lps
        return responses_from_lists(sequences, [policy.prompts[c] for c in contexts.tolist()], policy.tokenizer,
                                    logprobs)


@torch.no_grad()
def _generate(model, rows: list[list[int]], n: int, config: SamplingConfig, seed: int, pad_id: int,
              eos_ids: list[int]) -> tuple[list, list]:
    from transformers import GenerationConfig

    from nashpref.lm.responses import left_pad

    device = next(model.parameters()).device
    ids, mask = left_pad(rows, pad_id, device)
    greedy = config.temperature == 0
    options = GenerationConfig(
        do_sample=not greedy, num_return_sequences=1 if greedy else n, max_new_tokens=config.max_new_tokens,
        temperature=1.0 if greedy else config.temperature, top_p=config.top_p, top_k=config.top_k,
        # Explicit neutral values: unset fields would be filled from the checkpoint's generation_config.
        min_p=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, typical_p=1.0,
        pad_token_id=pad_id, eos_token_id=eos_ids, return_dict_in_generate=True, output_logits=True)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=options)
    new = out.sequences[:, ids.shape[1]:]
    logits = torch.stack(out.logits, dim=1).float()                      # (N, T, V) raw, temperature 1
    token_lp = (logits.gather(-1, new.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)).cpu()
    if greedy:
        new, token_lp = new.repeat_interleave(n, 0), token_lp.repeat_interleave(n, 0)
    sequences, logprobs = [], []
    for i in range(len(rows)):
        seqs, lps = [], []
        for j in range(i * n, (i + 1) * n):
            seq = cut_at_eos(new[j].tolist(), eos_ids)
            seqs.append(seq)
            lps.append(token_lp[j, :len(seq)].tolist())
        sequences.append(seqs)
        logprobs.append(lps)
    return sequences, logprobs


def cut_at_eos(tokens: list[int], eos_ids) -> list[int]:
    """Tokens up to and including the first end-of-turn token (everything after it is padding)."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:i + 1]
    return tokens


class MixtureDecoder:
    """Incremental log-probs of the geometric mixture of two causal LMs, each with its own KV cache.

    ``start(prompt_rows)`` runs both models once over the left-padded prompts and returns the mixture's
    log-distribution of the first response token, (N, V); each ``step(tokens)`` feeds one token per row to both
    models (one cached forward each) and returns the next log-distribution.
    """

    def __init__(self, policy_model, reference_model, beta: float, pad_id: int):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"mixture beta must be in [0, 1], got {beta}")
        self.models = (policy_model, reference_model)
        self.beta = beta
        self.pad_id = pad_id

    @torch.no_grad()
    def start(self, prompt_rows: list[list[int]]) -> Tensor:
        from nashpref.lm.responses import left_pad

        device = next(self.models[0].parameters()).device
        ids, mask = left_pad(prompt_rows, self.pad_id, device)
        self.attention = mask.long()
        positions = (self.attention.cumsum(-1) - 1).clamp(min=0)
        self.next_position = positions[:, -1] + 1
        self.caches = []
        logits = []
        for model in self.models:
            out = model(input_ids=ids, attention_mask=self.attention, position_ids=positions, use_cache=True,
                        logits_to_keep=1)
            self.caches.append(out.past_key_values)
            logits.append(out.logits[:, -1].float())
        return self._mix(*logits)

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        self.attention = torch.cat([self.attention, self.attention.new_ones((tokens.shape[0], 1))], dim=1)
        positions = self.next_position.unsqueeze(1)
        self.next_position = self.next_position + 1
        logits = []
        for i, model in enumerate(self.models):
            out = model(input_ids=tokens.unsqueeze(1), attention_mask=self.attention, position_ids=positions,
                        past_key_values=self.caches[i], use_cache=True)
            self.caches[i] = out.past_key_values
            logits.append(out.logits[:, -1].float())
        return self._mix(*logits)

    def _mix(self, policy_logits: Tensor, reference_logits: Tensor) -> Tensor:
        return torch.log_softmax((1.0 - self.beta) * policy_logits + self.beta * reference_logits, dim=-1)


def filter_logits(log_probs: Tensor, config: SamplingConfig) -> Tensor:
    """Temperature, then top-k, then top-p (nucleus), as transformers and vLLM apply them; -inf outside."""
    logits = log_probs / config.temperature
    if config.top_k > 0 and config.top_k < logits.shape[-1]:
        kth = logits.topk(config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= config.top_p     # keep until mass reaches top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample_mixture(policy, reference, contexts: Tensor, n: int, beta: float, config: SamplingConfig,
                   generator: torch.Generator | None = None) -> TokenResponses:
    """(B, n) responses from π^(1−β) μ^β (token-level, renormalised each token); ``logprobs`` are the
    mixture's per-token log-probs at temperature 1."""
    if len(policy.tokenizer) != len(reference.tokenizer):
        raise ValueError("sample_mixture: policy and reference must share one tokenizer "
                         f"({len(policy.tokenizer)} vs {len(reference.tokenizer)} tokens)")
    rows = [policy.prompt_ids[c] for c in contexts.tolist() for _ in range(n)]
    decoder = MixtureDecoder(policy.model, reference.model, beta, policy.pad_id)
    device = next(policy.model.parameters()).device
    eos = torch.tensor(policy.eos_ids, device=device)
    draw = torch.Generator(device=device)
    draw.manual_seed(draw_seed(generator))
    log_dist = decoder.start(rows)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    tokens, logprobs, masks = [], [], []
    for t in range(config.max_new_tokens):
        if config.temperature == 0:
            choice = log_dist.argmax(-1)
        else:
            probs = filter_logits(log_dist, config).softmax(-1)
            choice = torch.multinomial(probs, 1, generator=draw).squeeze(-1)
        choice = choice.masked_fill(done, decoder.pad_id)
        tokens.append(choice)
        logprobs.append(log_dist.gather(-1, choice.unsqueeze(-1)).squeeze(-1).masked_fill(done, 0.0))
        masks.append(~done)
        done = done | torch.isin(choice, eos)
        if bool(done.all()) or t + 1 == config.max_new_tokens:
            break
        log_dist = decoder.step(choice)
    batch = contexts.shape[0]
    tokens = torch.stack(tokens, 1).reshape(batch, n, -1)
    mask = torch.stack(masks, 1).reshape(batch, n, -1)
    values = torch.stack(logprobs, 1).reshape(batch, n, -1)
    prompts = tuple(policy.prompts[c] for c in contexts.tolist())
    return TokenResponses(tokens, mask, prompts, policy.tokenizer, values)


@torch.no_grad()
def generate_texts(model, tokenizer, prompt_rows: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of token-id prompts, decoded without special tokens (for LLM judges)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)
    sequences, _ = _generate(model, prompt_rows, 1, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0),
                             0, pad, eos)
    return [tokenizer.decode(row[0], skip_special_tokens=True) for row in sequences]
