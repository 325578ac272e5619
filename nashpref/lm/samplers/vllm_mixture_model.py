"""The vLLM model behind Nash-MD's mixture sampler: the policy π and the frozen reference μ as two Llama-family
decoder stacks in one engine, sampled from softmax((1−β)·z_π + β·z_μ).

Each stack is vLLM's own ``LlamaForCausalLM`` built under its own prefix (``policy.`` / ``reference.``), so every
attention layer has its own name and vLLM gives it its own paged KV cache: a request's prompt is prefilled
through both stacks once and every decode step runs one token through each, exactly the transformers decoder's
two-cache scheme, batched and paged. ``forward`` returns both stacks' last hidden states side by side,
(tokens, 2·hidden); vLLM picks the rows it samples from and hands them to ``compute_logits``, which mixes the
two heads' logits. Per token the renormalised geometric mixture π^(1−β) μ^β is exactly the softmax of that.

β lives in a float32 buffer: changing it is one ``fill_`` between rounds, no restart, no re-capture (the
logits are computed outside any CUDA graph). This module imports vLLM at import time; only the engine
(``nashpref.lm.samplers.vllm_mixture``) imports it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.model_executor.models.interfaces import SupportsLoRA
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import maybe_prefix

HALVES = ("policy", "reference")


class NashMixtureForCausalLM(nn.Module, SupportsLoRA):
    """Two ``LlamaForCausalLM`` stacks (``policy``, ``reference``) whose logits are (1−β)·z_π + β·z_μ."""

    packed_modules_mapping = dict(LlamaForCausalLM.packed_modules_mapping)
    # LoRA adapters touch only the linear layers of the policy half (the names carry the ``policy.`` prefix).
    embedding_modules: dict[str, str] = {}

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__()
        self.config = vllm_config.model_config.hf_config
        self.policy = LlamaForCausalLM(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "policy"))
        self.reference = LlamaForCausalLM(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "reference"))
        self.hidden_size = self.config.hidden_size
        self.register_buffer("beta", torch.zeros((), dtype=torch.float32), persistent=False)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Only the policy's embeddings can be returned here; forward() never takes embeddings (see below).
        return self.policy.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids is None:
            raise ValueError(f"{type(self).__name__} needs token ids: the two stacks embed them differently")
        hidden_policy = self.policy(input_ids, positions)
        hidden_reference = self.reference(input_ids, positions)
        return torch.cat([hidden_policy, hidden_reference], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        hidden_policy, hidden_reference = hidden_states.split(self.hidden_size, dim=-1)
        policy = self.policy.compute_logits(hidden_policy.contiguous())
        reference = self.reference.compute_logits(hidden_reference.contiguous())
        if policy is None or reference is None:         # a tensor-parallel rank that does not hold the logits
            return None
        beta = self.beta
        # The same expression as the transformers decoder: β = 0 gives z_π and β = 1 gives z_μ exactly.
        return (1.0 - beta) * policy.float() + beta * reference.float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """``policy.<name>`` / ``reference.<name>`` go to that half; a plain transformers name (the policy's own
        checkpoint, which the engine starts from) goes to both, so μ starts as the policy's initial weights."""
        parts: dict[str, list] = {half: [] for half in HALVES}
        for name, tensor in weights:
            half, _, rest = name.partition(".")
            for target in ([half] if half in HALVES else HALVES):
                parts[target].append((rest if half in HALVES else name, tensor))
        loaded = set()
        for half in HALVES:
            if parts[half]:
                loaded |= {f"{half}.{name}" for name in getattr(self, half).load_weights(parts[half])}
        return loaded


def set_beta(model: nn.Module, beta: float) -> float:
    """``apply_model`` target: the mixture weight of every request from now on."""
    model.beta.fill_(beta)
    return float(model.beta)


def reload_half(worker, half: str, weights_iterator=None, weights_path: str | None = None) -> int:
    """``collective_rpc`` target: reload one half's weights in place with vLLM's own layerwise reload (which
    restores what CPU/GPU weight processing replaced), without touching the other half. Weights come as
    (transformers name, tensor) pairs, or from the ``*.safetensors`` files in ``weights_path``. Returns how
    many tensors were loaded."""
    from pathlib import Path

    from vllm.model_executor.model_loader.reload.inplace import reload_weights

    if half not in HALVES:
        raise ValueError(f"unknown half {half!r}")
    if weights_iterator is None:
        from safetensors.torch import load_file

        weights_iterator = (item for file in sorted(Path(weights_path).glob("*.safetensors"))
                            for item in load_file(file).items())
    count = 0

    def counted():
        nonlocal count
        for item in weights_iterator:
            count += 1
            yield item

    runner = worker.model_runner
    reload_weights(runner.vllm_config, getattr(runner.get_model(), half), weights_iterator=counted(),
                   weights_path=None, is_checkpoint_format=True)
    return count


def engine_memory(worker) -> dict[str, int]:
    """``collective_rpc`` target: bytes of the model's parameters and buffers (both halves; on CPU the linear
    layers' weights are repacked into oneDNN handles that are not tensors, so this undercounts there) and of
    the KV cache."""
    model = worker.model_runner.get_model()
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    seen, kv_cache = set(), 0
    for tensor in getattr(worker.model_runner, "kv_caches", []) or []:
        for part in tensor if isinstance(tensor, (list, tuple)) else [tensor]:
            if isinstance(part, torch.Tensor) and part.data_ptr() not in seen:
                seen.add(part.data_ptr())
                kv_cache += part.numel() * part.element_size()
    return {"tensor_bytes": weights, "kv_cache_bytes": kv_cache}
