"""Bradley–Terry preference over a scalar reward model: P(a ≻ b | x) = σ(r(x, a) − r(x, b)).

The reward model is an ``AutoModelForSequenceClassification`` with one label. It reads the conversation as the
tokenizer's chat template renders it (prompt messages + the response as the assistant's turn), or
"prompt\\nresponse" for a tokenizer without a template. The model *is* Bradley–Terry, so scoring each
response once and taking differences is exact; every distinct (prompt, response) is scored once per call.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from nashpref.preferences.base import (ClassifierOracle, Prompt, chat_messages, check_lengths, classifier_logits,
                                       prompt_text, register)


def format_conversation(tokenizer, prompt: Prompt, response: str) -> str:
    """The text a reward model scores for one response."""
    if getattr(tokenizer, "chat_template", None):
        messages = chat_messages(prompt) + [{"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"{prompt_text(prompt)}\n{response}"


@register
class RewardOracle(ClassifierOracle):
    """σ(r(x, a) − r(x, b)) with r the single logit of a sequence classifier."""

    prefix = "reward"
    what = "reward model"
    labels = (1,)

    def rewards(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Tensor:
        """(n,) float32 rewards r(x, y)."""
        texts = [format_conversation(self.tokenizer, p, r) for p, r in zip(prompts, responses)]
        unique = list(dict.fromkeys(texts))
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        scores = classifier_logits(self.model, self.tokenizer, unique, self.batch_size, chat)[:, 0]
        index = {text: i for i, text in enumerate(unique)}
        return scores[torch.tensor([index[t] for t in texts], dtype=torch.long)]

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        n = check_lengths("RewardOracle", prompts, a, b)
        r = self.rewards(list(prompts) * 2, list(a) + list(b))
        return torch.sigmoid(r[:n] - r[n:])
