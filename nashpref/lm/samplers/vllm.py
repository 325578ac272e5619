"""An in-process vLLM engine as the policy's sampler, with weight sync after every iteration and a check of it.

The engine lives in the training process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set unless the caller chose
otherwise), so new weights go in without a restart:

* single worker (the usual case; always on CPU): the policy's tensors are handed to vLLM's own
  ``reload_weights`` as an in-memory iterator — no disk, no serialisation;
* several workers (``tensor_parallel_size > 1``): tensors cannot cross the process boundary (they crash the
  engine), so the weights are written as safetensors to a directory owned by the sampler and reloaded from there.

Under torchrun (``per_rank_options``) every rank holds its own engine, started with vLLM's
``external_launcher`` executor in the training processes, samples its own prompts and loads the weights
the backend gathers from the FSDP shards; the engines are then made independent of each other (``_decouple``).
With ``tensor_parallel_size`` K > 1 the ranks form groups of K (ranks kK … kK+K−1) that run one engine together,
each rank holding a shard of its weights. vLLM runs every rank's share of that engine in lockstep, so the ranks of
a group must send it the same requests in the same order: ``EngineGroup.union`` gives each of them the group's
union of prompts (or judge messages), and each keeps its own rows of the result. Each rank still loads the full
weights (``reload_weights``), and vLLM's loader keeps this rank's shard of each tensor.

After a sync the prefix cache is reset (its KV blocks were computed with the old weights). ``verify_sync``
teacher-forces a fixed probe through the engine (``prompt_logprobs``) and through the policy and raises
:class:`WeightSyncError` when the mean per-token log-prob difference exceeds the tolerance.

With ``enable_lora`` in the engine and a LoRA policy, a sync publishes only the adapter, as a new
``LoRARequest`` (``nashpref.lm.samplers.vllm_lora``); no merged copy of the weights is made.

Nash-MD's geometric mixture is not sampled by this engine (a logits processor sees only the engine's own
logits): ``nashpref.lm.samplers.vllm_mixture.VLLMMixtureSampler`` is a subclass whose engine holds the policy
and the reference as two decoder stacks.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import weakref
from pathlib import Path

import torch
from torch import Tensor

from nashpref.lm.responses import TokenResponses, responses_from_lists
from nashpref.lm.samplers.base import SamplingConfig, draw_seed
from nashpref.errors import WeightSyncError
from nashpref.lm.startup import paused_gc
from nashpref.quiet import verbose

from nashpref.lm.samplers.vllm_ranks import (EngineGroup, _decouple, per_rank_options,
                                             running_tensor_parallel_size)

__all__ = ["VLLMSampler", "WeightSyncError", "per_rank_options", "EngineGroup", "running_tensor_parallel_size"]


class VLLMSampler:
    """``sample(policy, contexts, n, generator)`` from a colocated ``vllm.LLM`` engine.

    ``version`` counts syncs; a frozen policy remembers it and refuses to sample once the engine has moved on.
    ``sample`` first makes sure the engine holds the policy's current weights (``ensure_synced``): a sync happens
    only when the weights changed since the last one, and with ``verify`` each new sync is checked once;
    ``sync_seconds`` adds up the time spent syncing and checking.
    Engine options pass through: ``gpu_memory_utilization``, ``tensor_parallel_size``, ``enable_sleep_mode``
    (the engine then sleeps after each ``sample`` and wakes for the next sync or sample), ``max_model_len`` and
    any other ``vllm.LLM`` keyword in ``engine_kwargs``. On CPU ``kv_cache_memory_bytes`` defaults to what
    ``MAX_SEQUENCES`` full-length sequences need, at most 1 GiB (:func:`cpu_kv_cache_bytes`), and ``enforce_eager``
    to True.
    """

    backend = "vllm"
    adapter_prefix = ""                 # where a LoRA adapter's modules sit in the engine's model

    def __init__(self, model: str, config: SamplingConfig | None = None, *, dtype: str = "auto", seed: int = 0,
                 tolerance: float | None = None, probe_size: int = 4, gpu_memory_utilization: float = 0.5,
                 tensor_parallel_size: int = 1, enable_sleep_mode: bool = False, sleep_level: int = 1,
                 max_model_len: int | None = None, kv_cache_memory_bytes: int | None = None,
                 enforce_eager: bool | None = None, engine_kwargs: dict | None = None, verify: bool = False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        with paused_gc():
            from vllm import LLM

        self.config = config or SamplingConfig()
        on_gpu = torch.cuda.is_available()
        if dtype == "auto":
            dtype = "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
        self.dtype = dtype
        self.tolerance = tolerance if tolerance is not None else (1e-3 if dtype == "float32" else 3e-2)
        """Largest mean |Δ log-prob| per probe token that ``verify_sync`` accepts."""
        self.probe_size = probe_size
        self.enable_sleep_mode = enable_sleep_mode
        self.sleep_level = sleep_level
        kwargs = dict(engine_kwargs or {})
        if not on_gpu:
            kwargs.setdefault("kv_cache_memory_bytes", kv_cache_memory_bytes or cpu_kv_cache_bytes(model, dtype,
                                                                                                max_model_len))
            kwargs.setdefault("enforce_eager", True if enforce_eager is None else enforce_eager)
        else:
            if kv_cache_memory_bytes is not None:
                kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes
            if enforce_eager is not None:
                kwargs["enforce_eager"] = enforce_eager
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        kwargs.setdefault("use_tqdm_on_load", verbose())      # vLLM's loading bar only with --verbose
        if enable_sleep_mode and not on_gpu:
            raise ValueError("enable_sleep_mode needs a GPU: vLLM rejects sleep mode on CPU")
        # On CPU the engine runs eagerly, and so do vLLM's few torch.compile'd helpers (the log-prob ranks): an
        # inductor build of them took 4 s before the first sample, for one tensor comparison
        self.eager = not on_gpu and bool(kwargs.get("enforce_eager"))
        start = time.perf_counter()
        with paused_gc(), self._stance():
            self.llm = LLM(model, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                           tensor_parallel_size=tensor_parallel_size, enable_sleep_mode=enable_sleep_mode, **kwargs)
        self.group: EngineGroup | None = None
        """Under torchrun with tensor parallelism: the ranks sharing this engine (see ``EngineGroup``)."""
        if kwargs.get("distributed_executor_backend") == "external_launcher":
            _decouple(self.llm)
            if tensor_parallel_size > 1:
                self.group = EngineGroup.of_engine()
        self.start_seconds = time.perf_counter() - start
        self.tensor_parallel_size = tensor_parallel_size
        self.version = 0
        self.last_sync_seconds = 0.0
        self.last_verify_seconds = 0.0
        self.last_verify_error = 0.0
        self._asleep = False
        self._probe: list[list[int]] | None = None
        self._recent: list[list[int]] = []
        self._weights_dir: tempfile.TemporaryDirectory | None = None
        self.verify = verify
        self.sync_seconds = 0.0
        self._held: tuple | None = None         # (weak reference to the synced policy, its tensors' versions)
        self._verified: int | None = None
        self.lora_request = None        # with enable_lora: the policy's adapter, republished at every sync
        self.ledger = None              # a SampleLedger (nashpref.lm.provenance): labels each sync's weights
        self.synced_step: int | None = None
        self._adapters = None
        if kwargs.get("enable_lora"):
            from nashpref.lm.samplers.vllm_lora import AdapterPublisher

            self._adapters = AdapterPublisher(self.adapter_prefix)

    # ---- sampling -------------------------------------------------------------------------------------------
    def sample(self, policy, contexts: Tensor, n: int, generator: torch.Generator | None = None) -> TokenResponses:
        self.ensure_synced(policy)
        return self._draw(policy, contexts, n, generator)

    def _draw(self, policy, contexts: Tensor, n: int, generator: torch.Generator | None) -> TokenResponses:
        """Responses from the engine's weights as they are (no sync)."""
        from vllm import SamplingParams

        self._wake(policy)
        seed = draw_seed(generator)
        config = self.config
        ids = [policy.prompt_ids[c] for c in contexts.tolist()]
        params = [SamplingParams(n=n, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                 max_tokens=config.max_new_tokens, seed=s, logprobs=0,
                                 stop_token_ids=list(policy.eos_ids), detokenize=False)
                  for s in request_seeds(seed, len(ids), n)]
        with self._stance():
            outputs = self.llm.generate([{"prompt_token_ids": row} for row in ids], params, use_tqdm=False,
                                        lora_request=self.lora_request)
        sequences, logprobs = [], []
        for out in outputs:
            seqs = [list(c.token_ids) for c in out.outputs]
            sequences.append(seqs)
            logprobs.append([[step[token].logprob for step, token in zip(c.logprobs, c.token_ids)]
                             for c in out.outputs])
        self._recent = [row + seqs[0] for row, seqs in zip(ids, sequences)][: self.probe_size]
        self._sleep()
        return responses_from_lists(sequences, [policy.prompts[c] for c in contexts.tolist()], policy.tokenizer,
                                    logprobs)

    def _stance(self):
        return torch.compiler.set_stance("force_eager") if self.eager else contextlib.nullcontext()

    # ---- weight sync ----------------------------------------------------------------------------------------
    def sync_weights(self, policy) -> float:
        """Push ``policy``'s current weights into the engine (LoRA merged, or with ``enable_lora`` only the
        adapter, as a new ``LoRARequest``); returns the seconds it took."""
        start = time.perf_counter()
        self._wake(policy, resync=False)
        self._load(policy)
        self.version += 1
        self.synced_step = None if self.ledger is None else self.ledger.weights_step
        self._held = (weakref.ref(policy), _versions(policy))
        self.last_sync_seconds = time.perf_counter() - start
        return self.last_sync_seconds

    def _load_adapter(self, policy) -> bool:
        """With LoRA in the engine and in the policy: publish only the adapter (no merged weights)."""
        from nashpref.lm.samplers.vllm_lora import has_adapter

        if self._adapters is None or not has_adapter(policy.model):
            return False
        self.lora_request = self._adapters.publish(policy)
        self.llm.reset_prefix_cache()
        return True

    def ensure_synced(self, policy) -> None:
        """Sync ``policy`` unless the engine already holds its current weights; with ``verify``, check each sync
        once. Both count in ``sync_seconds``."""
        policy = getattr(policy, "live", policy)
        start = time.perf_counter()
        held = self._held
        if held is None or held[0]() is not policy or held[1] != _versions(policy):
            self.sync_weights(policy)
        if self.verify and self._verified != self.version:
            self.verify_sync(policy)
            self._verified = self.version
        self.sync_seconds += time.perf_counter() - start

    def _load(self, policy) -> None:
        if self._load_adapter(policy):
            return
        state = policy.full_state()
        if self._single_inprocess_worker():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
        else:
            path = self._write_weights(state)
            policy.model.config.to_json_file(path / "config.json")
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        self.llm.reset_prefix_cache()

    def _write_weights(self, state: dict) -> Path:
        """``state`` as model.safetensors (written aside, then renamed) in the sampler's own directory."""
        from safetensors.torch import save_file

        if self._weights_dir is None:
            self._weights_dir = tempfile.TemporaryDirectory(prefix="nashpref-vllm-weights-")
        path = Path(self._weights_dir.name)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, path / "model.safetensors.tmp")
        os.replace(path / "model.safetensors.tmp", path / "model.safetensors")
        return path

    def _single_inprocess_worker(self) -> bool:
        core = getattr(self.llm.llm_engine, "engine_core", None)
        executor = getattr(getattr(core, "engine_core", None), "model_executor", None)
        from vllm.v1.executor.uniproc_executor import UniProcExecutor

        return isinstance(executor, UniProcExecutor)      # or its torchrun subclass ExecutorWithExternalLauncher

    # ---- verification ---------------------------------------------------------------------------------------
    def engine_log_probs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Per-token log-probs of tokens 1… of each sequence under the engine's weights (teacher forcing)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        with self._stance():
            outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False,
                                        lora_request=self.lora_request)
        return [[out.prompt_logprobs[i][seq[i]].logprob for i in range(1, len(seq))]
                for out, seq in zip(outputs, sequences)]

    def probe_errors(self, model, probe: list[list[int]]) -> Tensor:
        """|engine − model| log-prob of every probe token after the first (teacher forcing)."""
        engine = self.engine_log_probs(probe)
        mine = policy_sequence_log_probs(model, probe)
        return torch.cat([(torch.tensor(e) - m).abs() for e, m in zip(engine, mine)])

    def verify_sync(self, policy, probe: list[list[int]] | None = None, tolerance: float | None = None) -> float:
        """Mean |engine − policy| per-token log-prob on the probe; raises :class:`WeightSyncError` above the
        tolerance. The default probe is fixed at the first call: the first prompts with a sampled response (or
        the prompts alone when nothing was sampled yet)."""
        start = time.perf_counter()
        self._wake(policy)
        if probe is None:
            if self._probe is None:
                self._probe = self._recent or [list(p) for p in policy.prompt_ids[: self.probe_size]]
            probe = self._probe
        diffs = self.probe_errors(policy, probe)
        error, worst = diffs.mean().item(), diffs.max().item()
        self.last_verify_error = error
        self.last_verify_seconds = time.perf_counter() - start
        limit = self.tolerance if tolerance is None else tolerance
        if not error <= limit:
            raise WeightSyncError(f"vLLM engine log-probs differ from the policy's by {error:.3g} per token on "
                                  f"average ({worst:.3g} at most) on a {diffs.numel()}-token probe, above the "
                                  f"tolerance {limit:g}: the engine is not running the policy's weights")
        return error

    # ---- sleep mode -----------------------------------------------------------------------------------------
    def _sleep(self) -> None:
        if self.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = True

    def _wake(self, policy, resync: bool = True) -> None:
        if not self._asleep:
            return
        if self.sleep_level >= 2:
            # Level 2 dropped the weights: re-allocate them, reload the current ones, then the KV cache.
            self.llm.wake_up(tags=["weights"])
            if resync:
                self._load(policy)
            self.llm.wake_up(tags=["kv_cache"])
        else:
            self.llm.wake_up()
        self._asleep = False

    def close(self) -> None:
        """Drop the engine (and the weights directory, if one was made)."""
        self.llm = None
        if self._weights_dir is not None:
            self._weights_dir.cleanup()
        if self._adapters is not None:
            self._adapters.close()


MAX_SEQUENCES = 512          # sequences of the model's full length that the default CPU KV cache holds at once


def cpu_kv_cache_bytes(model: str, dtype: str, max_model_len: int | None) -> int:
    """The CPU engine's default KV cache: keys and values of ``MAX_SEQUENCES`` sequences of ``max_model_len`` (or
    the model's context), at most 1 GiB. Allocating and zeroing 1 GiB took 0.35 s of CPU and 2.5 s of wall time
    on a busy 2-core machine, for a tiny model whose 256-token context needs 512 bytes per token; a model whose
    shape cannot be read gets the 1 GiB."""
    limit = 1 << 30
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
        config = getattr(config, "text_config", None) or config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        length = max_model_len or config.max_position_embeddings
        per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * (4 if dtype == "float32" else 2)
        return min(limit, MAX_SEQUENCES * int(length) * per_token)
    except Exception:       # vLLM reads the model itself, and names what is wrong with it
        return limit


def _versions(policy) -> tuple[int, ...]:
    # Every in-place update of a tensor (optimizer step, copy_) bumps its version counter.
    return tuple(p._version for p in policy.model.parameters())


def policy_sequence_log_probs(policy, sequences: list[list[int]]) -> list[Tensor]:
    """Per-token log-probs of tokens 1… of each sequence under the policy (no grad, float32)."""
    live = getattr(policy, "live", policy)
    with torch.no_grad():
        result = []
        for seq in sequences:
            tokens = torch.tensor([seq[1:]], device=live.device)
            values = live._token_log_probs([seq[:1]], tokens, torch.ones_like(tokens, dtype=torch.bool))
            result.append(values[0].cpu())
    return result


def request_seeds(seed: int, rows: int, n: int) -> list[int]:
    """One seed per prompt. vLLM gives the k-th of a request's n samples the seed ``seed + k``, so prompts' seeds
    are n apart: with ``seed + i`` prompt i's sample k and prompt i+1's sample k−1 would share one random stream."""
    return [seed + i * n for i in range(rows)]
