"""A transformers causal language model as a self-play policy (the LM side of the ``Policy`` protocol).

Contexts are **indices into the policy's prompt list** (a (B,) LongTensor, as for tabular policies): the loop,
minibatching and checkpoints then treat both kinds of policy alike. Prompts (text or chat messages) are
rendered once with the tokenizer's chat template (``add_generation_prompt=True``); a tokenizer without a chat
template gets the plain text.

``log_prob`` teacher-forces prompt + response through the model in one padded batch — prompts left-padded,
responses right-padded, position ids from the attention mask — and sums the response tokens' log-probs (prompt
and padding masked out); ``normalize`` divides by the response length. The model stays in eval mode (no
dropout), so the log-probs of π_t and of the trained policy agree at θ_t.

``frozen()`` returns π_t as a *snapshot view* that shares the live weights: every use of π_t in a round happens
inside the solver's ``collect``, before the first optimizer step, so no copy is needed; a view whose weights
have changed since it was taken refuses to answer instead of returning wrong numbers. With LoRA the reference μ
is a separate module tree sharing the (frozen) base weights — never "the adapter switched off".
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from nashpref.errors import BadInput
from nashpref.lm.loading import load_causal_lm
from nashpref.lm.responses import TokenResponses, left_pad
from nashpref.lm.samplers.base import SamplingConfig
from nashpref.validate import check_prompt_lengths

Prompt = str | list[dict]


def render_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt as the model should see it before its answer."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)
    text = "\n".join(m["content"] for m in messages)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


class LMPolicy(torch.nn.Module):
    """π(y | x) of a causal LM over a fixed list of prompts; implements the ``Policy`` protocol.

    ``sampler`` draws ``sample`` (an ``HFSampler`` on this model by default, or a ``VLLMSampler``); the
    geometric mixture of ``sample_mixture`` runs in the sampler when it has ``sample_mixture`` (the vLLM
    mixture engine), else in transformers with both KV caches on. With a sampler that holds its own weights
    (vLLM), ``frozen()`` makes sure it holds the current ones (``ensure_synced``: a sync only when they changed)
    and, if ``verify_every_sync``, checks them.
    """

    def __init__(self, model, tokenizer, prompts: Sequence[Prompt], *, sampler=None,
                 sampling: SamplingConfig | None = None, eval_batch_size: int = 64, verify_every_sync: bool = True):
        super().__init__()
        if not prompts:
            raise BadInput("LMPolicy: the prompt list is empty")
        self.model = model
        self.model.eval()
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        if not getattr(tokenizer, "chat_template", None):
            warnings.warn(f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'the policy')} has no chat "
                          "template: prompts are given to the model as plain text", stacklevel=2)
        self.prompt_ids = [render_prompt(tokenizer, p) for p in self.prompts]
        self.sampling = sampling or getattr(sampler, "config", None) or SamplingConfig()
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(context, int):
            check_prompt_lengths(self.prompts, [len(ids) for ids in self.prompt_ids], self.sampling.max_new_tokens,
                                 context)
        if sampler is None:
            from nashpref.lm.samplers.hf import HFSampler
            sampler = HFSampler(self.sampling)
        self.sampler = sampler
        self.eval_batch_size = eval_batch_size
        self.verify_every_sync = verify_every_sync
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise BadInput("LMPolicy: the tokenizer has neither a pad nor an eos token")

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, prompts: Sequence[Prompt], *, device: str | None = None,
                        dtype: str | torch.dtype = "auto", lora: dict | None = None, reference: str | None = None,
                        trust_remote_code: bool = False, **kwargs) -> tuple["LMPolicy", "LMPolicy"]:
        """(policy, reference) from a model id or local path.

        ``dtype="auto"`` is bf16 on a bf16-capable GPU, else fp32. ``lora`` (peft ``LoraConfig`` keyword
        arguments, e.g. ``{"r": 8, "target_modules": "all-linear"}``) trains only an adapter; the reference then
        shares the frozen base weights. Without LoRA the reference is a separate frozen copy. ``reference``
        loads μ from another model id or path instead (it must use the same tokenizer).
        """
        model, tokenizer = load_causal_lm(name_or_path, device=device, dtype=dtype,
                                          trust_remote_code=trust_remote_code)
        if reference is not None:
            reference_model, reference_tokenizer = load_causal_lm(reference, device=device, dtype=dtype,
                                                                  trust_remote_code=trust_remote_code)
            if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
                raise BadInput(f"{reference}: the reference model's tokenizer differs from {name_or_path}'s")
            if lora is not None:
                model = _wrap_lora(model, lora)
        elif lora is None:
            reference_model = copy.deepcopy(model)
        else:
            # Share every base tensor with the reference (no memory), then wrap only the policy with the adapter.
            reference_model = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
            model = _wrap_lora(model, lora)
        reference_model.requires_grad_(False)
        policy = cls(model, tokenizer, prompts, **kwargs)
        reference = cls(reference_model, tokenizer, prompts, sampling=policy.sampling,
                        eval_batch_size=policy.eval_batch_size)
        return policy, reference

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end a response: the generation config's eos ids and the tokenizer's eos."""
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    # ---- the Policy protocol --------------------------------------------------------------------------------
    def log_prob(self, contexts: Tensor, responses: TokenResponses, normalize: bool = False) -> Tensor:
        """(B, K) sum (or, with ``normalize``, mean) of the response tokens' log-probs, with gradients when
        grad is enabled; float32 whatever the model's dtype."""
        contexts = _as_index(contexts)
        if responses.shape[0] != contexts.shape[0]:
            raise ValueError(f"log_prob: {contexts.shape[0]} contexts for responses of shape {responses.shape}")
        batch, samples, width = responses.tokens.shape
        device = self.device
        tokens = responses.tokens.to(device).reshape(batch * samples, width)
        mask = responses.mask.to(device).reshape(batch * samples, width)
        prompt_rows = [self.prompt_ids[c] for c in contexts.repeat_interleave(samples).tolist()]
        step = batch * samples if torch.is_grad_enabled() else self.eval_batch_size
        parts = [self._token_log_probs(prompt_rows[i:i + step], tokens[i:i + step], mask[i:i + step])
                 for i in range(0, batch * samples, step)]
        per_token = torch.cat(parts) if parts else tokens.new_zeros((0, width), dtype=torch.float32)
        total = per_token.sum(-1)
        if normalize:
            total = total / mask.sum(-1).clamp(min=1)
        return total.reshape(batch, samples)

    def token_log_probs(self, contexts: Tensor, responses: TokenResponses) -> Tensor:
        """(B, K, T) per-token log-probs of the responses (0 on padding)."""
        contexts = _as_index(contexts)
        batch, samples, width = responses.tokens.shape
        tokens = responses.tokens.to(self.device).reshape(batch * samples, width)
        mask = responses.mask.to(self.device).reshape(batch * samples, width)
        rows = [self.prompt_ids[c] for c in contexts.repeat_interleave(samples).tolist()]
        return self._token_log_probs(rows, tokens, mask).reshape(batch, samples, width)

    def sample(self, contexts: Tensor, n: int, generator: torch.Generator | None = None) -> TokenResponses:
        """(B, n) responses drawn by this policy's sampler with its sampling options."""
        out = self.sampler.sample(self, _as_index(contexts), n, generator)
        self._note("policy", self.sampler)
        return out

    def sample_mixture(self, contexts: Tensor, n: int, reference: "LMPolicy", beta: float,
                       generator: torch.Generator | None = None) -> TokenResponses:
        """(B, n) responses from the token-level geometric mixture π^(1−β) μ^β: in the sampler's engine when it
        holds both models (vLLM mixture engine), else in transformers with both KV caches on."""
        if hasattr(self.sampler, "sample_mixture"):
            out = self.sampler.sample_mixture(self, reference, _as_index(contexts), n, beta, generator)
            self._note("mixture", self.sampler)
            return out
        from nashpref.lm.samplers.hf import sample_mixture

        out = sample_mixture(self, reference, _as_index(contexts), n, beta, self.sampling, generator)
        self._note("mixture", None)
        return out

    provenance = None
    """(SampleLedger, role) while a trainer records who drew each sample from which weights."""

    def _note(self, call: str, sampler) -> None:
        if self.provenance is not None:
            ledger, role = self.provenance
            ledger.note(role, call, sampler)

    def frozen(self) -> "FrozenLMPolicy":
        """π_t: a no-grad view of the current weights (see the module docstring); a sampler holding its own
        weights gets them here if it lacks them (and checks them when ``verify_every_sync``)."""
        if hasattr(self.sampler, "ensure_synced"):
            self.sampler.ensure_synced(self)
            if self.verify_every_sync:
                self.sampler.verify_sync(self)
        return FrozenLMPolicy(self)

    def snapshot(self) -> "LMPolicy":
        """A frozen copy of the current weights that later optimizer steps do not change (an anchor that outlives
        the round: COMAL's prox centre, MPO's magnet). Frozen base weights (LoRA) are shared, not copied."""
        model = copy.deepcopy(self.model, memo={id(p): p for p in self.model.parameters() if not p.requires_grad})
        model.requires_grad_(False)
        return LMPolicy(model, self.tokenizer, self.prompts, sampling=self.sampling,
                        eval_batch_size=self.eval_batch_size)

    # ---- trainable state ------------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, Tensor]:
        """The parameters that training changes (all of them, or only the LoRA adapter)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs) -> dict[str, Tensor]:
        """Only the trainable parameters (what a checkpoint needs; frozen base weights come from the model path)."""
        if args or kwargs:
            return super().state_dict(*args, **kwargs)
        return {name: p.clone() for name, p in self.trainable_state().items()}

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = True, assign: bool = False):
        expected = set(self.trainable_state())
        if strict and set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"LMPolicy.load_state_dict: missing {missing[:3]}, unexpected {extra[:3]}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)
        return torch.nn.modules.module._IncompatibleKeys([], [])

    def full_state(self) -> dict[str, Tensor]:
        """The model's weights under their transformers names, LoRA merged out of place (for vLLM and saving)."""
        return merged_state_dict(self.model)

    def save_pretrained(self, path: str | Path) -> None:
        """A plain transformers checkpoint (safetensors; LoRA merged) loadable with ``from_pretrained``."""
        base = self.model.get_base_model() if _is_peft(self.model) else self.model
        base.save_pretrained(path, state_dict=self.full_state(), safe_serialization=True)
        self.tokenizer.save_pretrained(path)

    # ---- internals ------------------------------------------------------------------------------------------
    def _token_log_probs(self, prompt_rows: list[list[int]], tokens: Tensor, mask: Tensor) -> Tensor:
        rows, width = tokens.shape
        if rows == 0 or width == 0:
            return tokens.new_zeros((rows, width), dtype=torch.float32)
        prompts, prompt_mask = left_pad(prompt_rows, self.pad_id, tokens.device)
        input_ids = torch.cat([prompts, tokens], dim=1)
        attention = torch.cat([prompt_mask, mask], dim=1).long()
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        # Only the last width+1 positions predict response tokens: skip the LM head on the prompt.
        logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                            logits_to_keep=width + 1, use_cache=False).logits[:, :-1].float()
        picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        return picked * mask


class FrozenLMPolicy:
    """π_t: answers ``log_prob`` (without gradients), ``sample`` and ``sample_mixture`` with the live policy's
    weights as they were when it was taken, and raises once those weights (or the sampler's) have moved on."""

    def __init__(self, live: LMPolicy):
        self.live = live
        self.prompts, self.prompt_ids, self.tokenizer = live.prompts, live.prompt_ids, live.tokenizer
        self._versions = _versions(live)
        self._sync_version = getattr(live.sampler, "version", None)

    def _check_current(self) -> None:
        if _versions(self.live) != self._versions:
            raise RuntimeError("frozen LM policy: the live weights changed after frozen() was taken; take a new "
                               "frozen() (π_t is only valid until the next optimizer step)")
        if getattr(self.live.sampler, "version", None) != self._sync_version:
            raise RuntimeError("frozen LM policy: the sampler's weights were synced to a newer policy")

    def log_prob(self, contexts: Tensor, responses: TokenResponses, normalize: bool = False) -> Tensor:
        self._check_current()
        with torch.no_grad():
            return self.live.log_prob(contexts, responses, normalize)

    def sample(self, contexts: Tensor, n: int, generator: torch.Generator | None = None) -> TokenResponses:
        self._check_current()
        return self.live.sample(contexts, n, generator)

    def sample_mixture(self, contexts: Tensor, n: int, reference: LMPolicy, beta: float,
                       generator: torch.Generator | None = None) -> TokenResponses:
        self._check_current()
        return self.live.sample_mixture(contexts, n, reference, beta, generator)

    def frozen(self) -> "FrozenLMPolicy":
        return self

    def snapshot(self) -> LMPolicy:
        self._check_current()
        return self.live.snapshot()

    def __getattr__(self, name: str) -> Any:
        # Read-only facts of the live policy (model, pad_id, eos_ids, sampling, ...).
        if name.startswith("_") or name == "live":
            raise AttributeError(name)
        return getattr(self.live, name)


def _versions(policy: LMPolicy) -> list[int]:
    # Every in-place update (optimizer step, load_state_dict, copy_) bumps a tensor's version counter.
    return [p._version for p in policy.model.parameters()]


def _as_index(contexts) -> Tensor:
    return torch.as_tensor(contexts, dtype=torch.long).reshape(-1).cpu()


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _wrap_lora(model, options: dict):
    from peft import LoraConfig, get_peft_model

    options = {"task_type": "CAUSAL_LM", **options}
    return get_peft_model(model, LoraConfig(**options))


def merged_state_dict(model) -> dict[str, Tensor]:
    """Weights under the base model's names; LoRA deltas are added to copies, never in place (in-place
    merge/unmerge would drift the base weights shared with the reference)."""
    if not _is_peft(model):
        return {name: t.detach() for name, t in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.get_delta_weight(adapter).detach()
                    deltas[f"{name}.weight"] = deltas.get(f"{name}.weight", 0) + delta
    state = {}
    for name, tensor in model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        state[clean] = tensor.detach() + deltas[clean].to(tensor.dtype) if clean in deltas else tensor.detach()
    return state
