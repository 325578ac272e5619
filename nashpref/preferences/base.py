"""What every text preference oracle shares, and the registry of ``--preference KIND:ARG`` kinds.

A text oracle implements ``prefer_texts(prompts, responses_a, responses_b) -> (n,) P(a ≻ b | x)`` on flat lists;
``prefer(contexts, a, b)`` adapts it to the self-play loop: ``a`` and ``b`` are (B, M) ``TokenResponses`` that
carry their prompts, and the answer is (B, M). Probabilities are float32 on the CPU.

Prompts are what the prompt dataset holds: plain text or a list of chat messages ({"role", "content"}).

Each oracle class names its KIND (``prefix``) and builds itself from ARG (``from_spec``); ``@register`` adds it to
``REGISTRY``. This module imports none of them: ``nashpref.preferences`` does; ``load_text_oracle`` loads a spec.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from nashpref.errors import BadInput
from nashpref.lm.loading import load_sequence_classifier


Prompt = str | list[dict]


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

    prefix: ClassVar[str]
    """KIND of the ``--preference KIND:ARG`` specs this class answers."""

    @classmethod
    def from_spec(cls, arg: str, *, device: str | None = None, dtype: str = "auto") -> "TextOracle":
        """The oracle of ``--preference KIND:ARG`` (ARG: a model path by default)."""
        return cls.from_pretrained(arg, device=device, dtype=dtype)

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


class ClassifierOracle(TextOracle):
    """A text oracle read off a sequence classifier (reward and pairwise models): the model, its tokenizer and a
    check of its number of labels."""

    what: ClassVar[str]
    """What the model is, in messages: "reward model", "pairwise model"."""
    labels: ClassVar[tuple[int, ...]]
    """The numbers of labels the oracle can read."""

    def __init__(self, model, tokenizer, batch_size: int = 16, where: str | None = None):
        if model.config.num_labels not in self.labels:
            allowed = "= 1" if self.labels == (1,) else " or ".join(map(str, self.labels))
            raise BadInput(f"{where or self.what}: a {self.what} needs num_labels {allowed}, "
                           f"got {model.config.num_labels}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def from_pretrained(cls, path: str, *, device: str | None = None, dtype: str = "auto",
                        batch_size: int = 16) -> "ClassifierOracle":
        model, tokenizer = load_sequence_classifier(path, device=device, dtype=dtype, what=cls.what)
        return cls(model, tokenizer, batch_size, where=path)


REGISTRY: dict[str, type[TextOracle]] = {}


def register(cls: type[TextOracle]) -> type[TextOracle]:
    """Class decorator: ``--preference <cls.prefix>:ARG`` builds ``cls.from_spec(ARG, ...)``."""
    REGISTRY[cls.prefix] = cls
    return cls


def load_text_oracle(spec: str, *, device: str | None = None, dtype: str = "auto") -> TextOracle:
    """An oracle from ``reward:PATH``, ``pairwise:PATH``, ``judge:PATH``, ``rule:NAME``, ``python:FILE.py:NAME``,
    ``mix:W=SPEC;…``, ``ensemble:AGG:PATH,…``, ``maxmin:SPEC;…``, ``linear:DIR`` (or any other registered
    KIND); the kinds are registered when ``nashpref.preferences`` is imported."""
    kind, sep, arg = spec.partition(":")
    kinds = ", ".join(REGISTRY)
    if not sep or not arg:
        raise BadInput(f"--preference {spec!r}: expected KIND:ARG with KIND one of {kinds}")
    if kind not in REGISTRY:
        raise BadInput(f"--preference {spec!r}: unknown kind {kind!r}; use one of {kinds}")
    return REGISTRY[kind].from_spec(arg, device=device, dtype=dtype)
