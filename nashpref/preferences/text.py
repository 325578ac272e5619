"""What every text preference oracle shares, and the ``--preference KIND:ARG`` loader.

A text oracle implements ``prefer_texts(prompts, responses_a, responses_b) -> (n,) P(a ≻ b | x)`` on flat lists;
``prefer(contexts, a, b)`` adapts it to the self-play loop: ``a`` and ``b`` are (B, M) ``TokenResponses`` that
carry their prompts, and the answer is (B, M). Probabilities are float32 on the CPU.

Prompts are what the prompt dataset holds: plain text or a list of chat messages ({"role", "content"}).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import Tensor

from nashpref.game import GameError

Prompt = str | list[dict]
KINDS = ("reward", "pairwise", "judge", "rule", "python")


def chat_messages(prompt: Prompt) -> list[dict]:
    """The prompt as chat messages (plain text is one user message)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt: Prompt) -> str:
    """The prompt as plain text: the text itself, a lone user message's content, or "role: content" lines."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


class TextOracle(ABC):
    """P(a ≻ b | x) for batches of text pairs."""

    @abstractmethod
    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        """(n,) probabilities that a[i] is preferred to b[i] as an answer to prompts[i]."""

    def __call__(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        return self.prefer_texts(prompts, a, b)

    def prefer(self, contexts: Tensor, a, b) -> Tensor:
        """(B, M) P(a ≻ b | x) for (B, M) TokenResponses of the B contexts (the self-play loop's call)."""
        if a.shape != b.shape or a.shape[0] != len(contexts):
            raise ValueError(f"{type(self).__name__}: responses of shapes {a.shape} and {b.shape} for "
                             f"{len(contexts)} contexts; expected equal (B, M) shapes")
        if a.prompts != b.prompts:
            raise ValueError(f"{type(self).__name__}: the two response sets answer different prompts")
        rows, cols = a.shape
        prompts = [p for p in a.prompts for _ in range(cols)]
        flat_a = [t for row in a.texts for t in row]
        flat_b = [t for row in b.texts for t in row]
        return self.prefer_texts(prompts, flat_a, flat_b).reshape(rows, cols)


def check_lengths(name: str, prompts, a, b) -> int:
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"{name}: {len(prompts)} prompts, {len(a)} and {len(b)} responses; expected equal lengths")
    return len(prompts)


def load_text_oracle(spec: str, *, device: str | None = None, dtype: str = "auto") -> TextOracle:
    """An oracle from ``reward:PATH``, ``pairwise:PATH``, ``judge:PATH``, ``rule:NAME`` or ``python:FILE.py:NAME``."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise GameError(f"--preference {spec!r}: expected KIND:ARG with KIND one of {', '.join(KINDS)}")
    if kind == "reward":
        from nashpref.preferences.reward import RewardOracle
        return RewardOracle.from_pretrained(arg, device=device, dtype=dtype)
    if kind == "pairwise":
        from nashpref.preferences.pairwise import PairwiseOracle
        return PairwiseOracle.from_pretrained(arg, device=device, dtype=dtype)
    if kind == "judge":
        from nashpref.preferences.judge import JudgeOracle
        return JudgeOracle.from_pretrained(arg, device=device, dtype=dtype)
    if kind == "rule":
        from nashpref.preferences.rule import rule_oracle
        return rule_oracle(arg)
    if kind == "python":
        from nashpref.preferences.python_hook import PythonOracle
        return PythonOracle(arg)
    raise GameError(f"--preference {spec!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")


def load_sequence_classifier(path: str, *, device: str | None = None, dtype: str = "auto", what: str = "model"):
    """(model, tokenizer) of an AutoModelForSequenceClassification, eval mode, right padding, a pad token set."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nashpref.policies.lm import _check_model_path, _dtype, default_dtype

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _check_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=default_dtype(target) if dtype == "auto" else _dtype(dtype))
    except (OSError, ValueError) as exc:
        raise GameError(f"{path}: cannot load a sequence-classification {what}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    return model.to(target).eval(), tokenizer


@torch.no_grad()
def classifier_logits(model, tokenizer, texts: list[str], batch_size: int, chat: bool) -> Tensor:
    """(n, labels) float32 logits; texts rendered by a chat template already carry their special tokens."""
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=not chat).to(device)
        out.append(model(**enc).logits.float().cpu())
    return torch.cat(out) if out else torch.zeros((0, model.config.num_labels))
