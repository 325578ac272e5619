"""An instruction model as judge: it reads (x, a, b), answers "A" or "B", and is asked in both orders.

P(a ≻ b | x) = ½ ([verdict on (a, b) is A] + [verdict on (b, a) is B]), an unparseable verdict counting ½. The
position swap cancels a judge's bias toward either slot (a judge that always answers "A" gives ½) and makes
the oracle antisymmetric: P(a ≻ b) + P(b ≻ a) = 1.

The judge generates greedily, through transformers (``backend="hf"``) or its own in-process vLLM engine
(``backend="vllm"``); any ``generate(list of user messages) -> list of completions`` callable also works.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
from torch import Tensor

from nashpref.errors import BadInput
from nashpref.preferences.base import Prompt, TextOracle, check_lengths, prompt_text, register
JUDGE_TEMPLATE = ("Which response answers the user's prompt better?\n\n[Prompt]\n{prompt}\n\n[Response A]\n{a}\n\n"
                  "[Response B]\n{b}\n\nAnswer with a single letter: A or B.")
# A verdict letter must stand alone: "A", "B.", "**A**", "[B]", "A\n…", "Response B is better" — not the article
# in "A good answer would…".
_ALONE = r"(?=\s*$|\s*[.,:;!)\]*_`'\"]|\s+(?:is|wins|was|over)\b|\n)"
_LEAD = re.compile(r"^[\s*_`'\"(\[]*(?:(?i:response|answer|verdict|option)\s*)?([AB])" + _ALONE)
_STATED = re.compile(r"(?i:verdict|answer|winner|better(?: response)?|prefer(?:red)?|choose|choice)"
                     r"\s*(?:is|:|=)?\s*[*_`'\"(\[]*(?:(?i:response)\s*)?([AB])" + _ALONE)


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or None. Accepts a leading letter ("A", "B.", "**B**", "[A]", "Response B is better") or a
    stated verdict ("The answer is A", "Verdict: [[B]]"); None when nothing (or both letters) is stated."""
    lead = _LEAD.match(text)
    if lead:
        return lead.group(1)
    stated = {m.group(1) for m in _STATED.finditer(text)}
    return stated.pop() if len(stated) == 1 else None


def verdict_score(verdict: str | None, a_slot: str) -> float:
    """Credit to response a, shown in slot ``a_slot``: 1 if the verdict picks that slot, 0 if the other, ½ if none."""
    if verdict is None:
        return 0.5
    return 1.0 if verdict == a_slot else 0.0


@register
class JudgeOracle(TextOracle):
    """Position-swapped verdicts of a generative judge."""

    prefix = "judge"

    def __init__(self, generate: Callable[[list[str]], list[str]], template: str = JUDGE_TEMPLATE):
        self.generate = generate
        self.template = template
        self.unparsed = 0
        """Verdicts that could not be parsed so far (each counted as a tie)."""

    @classmethod
    def from_spec(cls, arg: str, *, device: str | None = None, dtype: str = "auto") -> "JudgeOracle":
        """``judge:PATH`` answers through transformers; ``judge:vllm:PATH`` through its own in-process vLLM engine
        (under torchrun one per rank, beside the sampler's)."""
        backend, sep, path = arg.partition(":")
        if sep and backend in ("hf", "vllm"):
            if not path:
                raise BadInput(f"--preference judge:{arg}: expected judge:{backend}:PATH (a model directory or hub id)")
            return cls.from_pretrained(path, device=device, dtype=dtype, backend=backend)
        return cls.from_pretrained(arg, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path: str, *, device: str | None = None, dtype: str = "auto",
                        backend: str = "hf", max_new_tokens: int = 16, **engine) -> "JudgeOracle":
        if backend == "vllm":
            return cls(vllm_generator(path, max_new_tokens, dtype=dtype, **engine))
        return cls(hf_generator(path, max_new_tokens, device=device, dtype=dtype))

    def requests(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[str]:
        """The judge's user messages: every pair in order (a, b), then every pair swapped (b, a)."""
        first = [self.template.format(prompt=prompt_text(p), a=x, b=y) for p, x, y in zip(prompts, a, b)]
        second = [self.template.format(prompt=prompt_text(p), a=y, b=x) for p, x, y in zip(prompts, a, b)]
        return first + second

    def prefer_texts(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> Tensor:
        n = check_lengths("JudgeOracle", prompts, a, b)
        verdicts = [parse_verdict(text) for text in self.generate(self.requests(prompts, a, b))]
        self.unparsed += sum(v is None for v in verdicts)
        return torch.tensor([(verdict_score(verdicts[i], "A") + verdict_score(verdicts[n + i], "B")) / 2
                             for i in range(n)], dtype=torch.float32)


def hf_generator(path: str, max_new_tokens: int, *, device: str | None = None, dtype: str = "auto"):
    """Greedy transformers generation of the judge's answers to user messages."""
    from nashpref.lm.loading import load_causal_lm
    from nashpref.lm.policy import render_prompt
    from nashpref.lm.samplers.hf import generate_texts

    model, tokenizer = load_causal_lm(path, device=device, dtype=dtype)

    def generate(messages: list[str]) -> list[str]:
        return generate_texts(model, tokenizer, [render_prompt(tokenizer, m) for m in messages], max_new_tokens)
    return generate


def vllm_generator(path: str, max_new_tokens: int, *, dtype: str = "auto", **engine):
    """Greedy generation by a second in-process vLLM engine holding the judge. Under torchrun (the process group
    joined) each rank gets its own engine, as the sampler does (``per_rank_options``), with the tensor-parallel
    size of vLLM's groups in this process: vLLM keeps one set per process, so a judge next to a tensor-parallel
    sampler is tensor-parallel too, and then the ranks of a group judge their union of pairs together."""
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from nashpref.lm.loading import check_model_path
    from nashpref.lm.policy import render_prompt
    from nashpref.lm.samplers.base import SamplingConfig, in_step
    from nashpref.lm.samplers.vllm import VLLMSampler, per_rank_options, running_tensor_parallel_size

    check_model_path(path)                              # a bad path fails here, before any engine starts
    tokenizer = AutoTokenizer.from_pretrained(path)

    def start() -> VLLMSampler:
        # At the first verdict, not here: `train` loads the oracle before its sampler's engine, and an engine made
        # first would fix vLLM's per-process groups at tensor parallel 1 under the sampler.
        if dist.is_initialized() and dist.get_world_size() > 1:
            size = engine.setdefault("tensor_parallel_size", running_tensor_parallel_size())
            engine["engine_kwargs"] = engine.get("engine_kwargs", {}) | per_rank_options(dist.get_world_size(), size)
        generate.sampler = VLLMSampler(path, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0),
                                       dtype=dtype, **engine)
        return generate.sampler

    def answer(messages: list[str]) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        outputs = generate.sampler.llm.generate([{"prompt_token_ids": render_prompt(tokenizer, m)} for m in messages],
                                                params, use_tqdm=False)
        return [out.outputs[0].text for out in outputs]

    def generate(messages: list[str]) -> list[str]:
        sampler = generate.sampler or start()
        return in_step(sampler.group, messages, answer)
    generate.sampler = None             # the engine once started, for callers that inspect it
    return generate
