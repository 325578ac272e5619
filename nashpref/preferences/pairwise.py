"""A learned pairwise preference: a sequence classifier that reads (x, a, b) together, made antisymmetric.

The classifier's score s(x, a, b) is its single logit (``num_labels = 1``: the log-odds that A wins) or the
difference of its two logits (``num_labels = 2``: [A wins, B wins]). Scoring both orders and taking

    P(a ≻ b | x) = σ((s(x, a, b) − s(x, b, a)) / 2)

makes the oracle exactly antisymmetric — P(a ≻ b) + P(b ≻ a) = 1 and P(a ≻ a) = ½ — and cancels any
position bias; for a model that is already antisymmetric (s(x, b, a) = −s(x, a, b)) it returns σ(s(x, a, b)).
``nashpref fit-preference`` must train with this same ``format_pair`` and this same formula.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from nashpref.preferences.base import (ClassifierOracle, Prompt, check_lengths, classifier_logits, prompt_text,
                                       register)


PAIR_TEMPLATE = "{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}"


def format_pair(tokenizer, prompt: Prompt, a: str, b: str) -> str:
    """The text the pairwise model reads: PAIR_TEMPLATE, as a user turn when the tokenizer has a chat template."""
    text = PAIR_TEMPLATE.format(prompt=prompt_text(prompt), a=a, b=b)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
    return text


@register
class PairwiseOracle(ClassifierOracle):
    """σ((s(x, a, b) − s(x, b, a)) / 2) from a sequence classifier on the pair."""

    prefix = "pairwise"
    what = "pairwise model"
    labels = (1, 2)

    def scores(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        """(n,) s(x, a, b): log-odds that the response shown as A wins."""
        texts = [format_pair(self.tokenizer, p, x, y) for p, x, y in zip(prompts, a, b)]
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        logits = classifier_logits(self.model, self.tokenizer, texts, self.batch_size, chat)
        return logits[:, 0] if logits.shape[1] == 1 else logits[:, 0] - logits[:, 1]

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        n = check_lengths("PairwiseOracle", prompts, a, b)
        s = self.scores(list(prompts) * 2, list(a) + list(b), list(b) + list(a))
        return torch.sigmoid((s[:n] - s[n:]) / 2)
