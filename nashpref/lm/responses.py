"""The responses of a language-model policy: K token sequences per prompt (``TokenResponses``), packed from lists,
and left padding of prompts. Nothing here imports transformers or vLLM."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["TokenResponses", "responses_from_lists", "left_pad"]


@dataclasses.dataclass(frozen=True, eq=False)
class TokenResponses:
    """K token responses for each of B prompts: the LM implementation of the ``Responses`` protocol.

    ``tokens`` (B, K, T) holds response token ids right-padded with ``pad_id``; ``mask`` (B, K, T) is True on
    response tokens, including the end-of-turn token when the response has one (its probability is the
    probability of stopping there). ``prompts`` holds the B prompts (text or chat messages) that the rows answer,
    so preference oracles need nothing else. ``logprobs`` (B, K, T), when present, are the per-token log-probs
    under the distribution that drew the tokens at temperature 1 (the sampling model, or the mixture), 0 on
    padding.
    """

    tokens: Tensor
    mask: Tensor
    prompts: tuple
    tokenizer: Any = dataclasses.field(repr=False)
    logprobs: Tensor | None = None

    def __post_init__(self):
        if self.tokens.dim() != 3 or self.mask.shape != self.tokens.shape:
            raise ValueError(f"TokenResponses: tokens {tuple(self.tokens.shape)} and mask {tuple(self.mask.shape)} "
                             "must both be (B, K, T)")
        if len(self.prompts) != self.tokens.shape[0]:
            raise ValueError(f"TokenResponses: {len(self.prompts)} prompts for {self.tokens.shape[0]} rows")
        if self.logprobs is not None and self.logprobs.shape != self.tokens.shape:
            raise ValueError(f"TokenResponses: logprobs {tuple(self.logprobs.shape)} must match tokens "
                             f"{tuple(self.tokens.shape)}")

    # ---- shape ------------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(B, K)."""
        return tuple(self.tokens.shape[:2])

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def lengths(self) -> Tensor:
        """(B, K) number of response tokens."""
        return self.mask.sum(-1)

    @property
    def pad_id(self) -> int:
        return _pad_id(self.tokenizer)

    # ---- selection --------------------------------------------------------------------------------------------
    def take(self, index: Tensor) -> "TokenResponses":
        """Pick along K with a (B, M) index (``selfplay.take`` calls this)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.tokens.device)
        if index.dim() != 2 or index.shape[0] != self.tokens.shape[0]:
            raise ValueError(f"TokenResponses.take: index of shape {tuple(index.shape)}; expected "
                             f"({self.tokens.shape[0]}, M)")
        full = index.unsqueeze(-1).expand(-1, -1, self.tokens.shape[-1])
        return self._replace(self.tokens.gather(1, full), self.mask.gather(1, full), self.prompts,
                             None if self.logprobs is None else self.logprobs.gather(1, full))

    def rows(self, index: Tensor | Sequence[int] | slice) -> "TokenResponses":
        """Rows (prompts) along B: a slice, or a 1-D index (the loop splits batches into minibatches with this)."""
        if isinstance(index, slice):
            prompts = tuple(self.prompts[index])
        else:
            index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
            prompts = tuple(self.prompts[i] for i in index.tolist())
            index = index.to(self.tokens.device)
        return self._replace(self.tokens[index], self.mask[index], prompts,
                             None if self.logprobs is None else self.logprobs[index])

    __getitem__ = rows

    @classmethod
    def cat(cls, parts: Sequence["TokenResponses"], dim: int = 1) -> "TokenResponses":
        """Concatenate along K (``dim=1``: same prompts) or B (``dim=0``), padding to the longest response."""
        if dim not in (0, 1) or not parts:
            raise ValueError("TokenResponses.cat: give a non-empty list and dim 0 (rows) or 1 (samples)")
        width = max(p.tokens.shape[-1] for p in parts)
        first = parts[0]
        if dim == 1 and any(p.prompts != first.prompts for p in parts):
            raise ValueError("TokenResponses.cat(dim=1): parts answer different prompts")
        tokens = torch.cat([_pad_last(p.tokens, width, p.pad_id) for p in parts], dim)
        mask = torch.cat([_pad_last(p.mask, width, False) for p in parts], dim)
        logprobs = None
        if all(p.logprobs is not None for p in parts):
            logprobs = torch.cat([_pad_last(p.logprobs, width, 0.0) for p in parts], dim)
        prompts = first.prompts if dim == 1 else tuple(q for p in parts for q in p.prompts)
        return cls(tokens, mask, prompts, first.tokenizer, logprobs)

    def to(self, device) -> "TokenResponses":
        return self._replace(self.tokens.to(device), self.mask.to(device), self.prompts,
                             None if self.logprobs is None else self.logprobs.to(device))

    # ---- text -------------------------------------------------------------------------------------------------
    def token_lists(self) -> list[list[list[int]]]:
        """(B, K) nested lists of the response token ids (padding removed)."""
        tokens, mask = self.tokens.cpu(), self.mask.cpu()
        return [[tokens[b, k][mask[b, k]].tolist() for k in range(tokens.shape[1])] for b in range(tokens.shape[0])]

    @property
    def texts(self) -> list[list[str]]:
        """(B, K) decoded responses, special tokens (end-of-turn, padding) removed."""
        return [self.tokenizer.batch_decode(row, skip_special_tokens=True) for row in self.token_lists()]

    def _replace(self, tokens, mask, prompts, logprobs) -> "TokenResponses":
        return TokenResponses(tokens, mask, tuple(prompts), self.tokenizer, logprobs)


def responses_from_lists(sequences: Sequence[Sequence[Sequence[int]]], prompts: Sequence, tokenizer,
                         logprobs: Sequence[Sequence[Sequence[float]]] | None = None,
                         device=None) -> TokenResponses:
    """Pack (B, K) nested lists of token ids (already cut after the end-of-turn token) into TokenResponses."""
    rows, samples = len(sequences), len(sequences[0]) if sequences else 0
    if any(len(row) != samples for row in sequences):
        raise ValueError("responses_from_lists: every prompt needs the same number of responses")
    width = max((len(s) for row in sequences for s in row), default=0)
    tokens = torch.full((rows, samples, width), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((rows, samples, width), dtype=torch.bool)
    values = None if logprobs is None else torch.zeros((rows, samples, width), dtype=torch.float32)
    for b, row in enumerate(sequences):
        for k, seq in enumerate(row):
            tokens[b, k, :len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[b, k, :len(seq)] = True
            if values is not None:
                values[b, k, :len(seq)] = torch.as_tensor(list(logprobs[b][k]), dtype=torch.float32)
    result = TokenResponses(tokens, mask, tuple(prompts), tokenizer, values)
    return result if device is None else result.to(device)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id


def _pad_last(x: Tensor, width: int, value) -> Tensor:
    if x.shape[-1] == width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]), value=value)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[Tensor, Tensor]:
    """(N, P) left-padded ids and a bool mask for lists of token ids."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = True
    return ids.to(device), mask.to(device)
