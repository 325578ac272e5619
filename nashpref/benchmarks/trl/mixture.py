"""``check-mixture``: Nash-MD's opponent sampler, TRL's and ours, checked against the exact geometric mixture, and
its cost as responses grow (runs in .venv-trl-nashmd)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nashpref.benchmarks.trl.orchestrate import read_setup
from nashpref.benchmarks.trl.plan import MIXTURE
from nashpref.benchmarks.trl.worker import mixture_wrapper_class, without_cache


def valid_positions(tokens, eos_ids: list[int]):
    """(B, T) bool: response positions up to and including the first end token (later ones are padding)."""
    import torch

    is_end = torch.isin(tokens, torch.tensor(eos_ids))
    ended_before = (is_end.long().cumsum(-1) - is_end.long()) > 0
    return ~ended_before


def exact_mixture_log_probs(policy, reference, prompt_ids, prompt_mask, tokens, beta: float):
    """(B, T) log π^(1−β)μ^β (y_t | x, y_<t) of the response tokens, teacher-forced with no cache: the truth the
    samplers are checked against. Prompts are left-padded, positions follow the attention mask."""
    import torch

    ids = torch.cat([prompt_ids, tokens], 1)
    mask = torch.cat([prompt_mask.long(), torch.ones_like(tokens)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = [m(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits.float()
                  for m in (policy, reference)]
    mixed = torch.log_softmax((1 - beta) * logits[0] + beta * logits[1], -1)[:, prompt_ids.shape[1] - 1:-1]
    return mixed.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def check_mixture(args: argparse.Namespace) -> None:
    """Two facts about Nash-MD's opponent sampler, written to --result:

    * correctness: the largest |log-prob error| of the sampled tokens against the exact mixture (teacher-forced)
      for TRL's GeometricMixtureWrapper with a generation config that says use_cache=True (the trainer's with
      gradient_checkpointing=False) and use_cache=False (TRL's default), and for ours
      (nashpref.lm.samplers.hf.sample_mixture); the policy is the setup's model plus noise, so π ≠ μ;
    * cost: seconds to sample one mixture response for each of the 8 held-out prompts at several lengths (the
      end token is masked so every response runs to the limit), for the setup's model and a wider random one.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.responses import left_pad
    from nashpref.lm.samplers.base import SamplingConfig
    from nashpref.lm.samplers.hf import sample_mixture

    wrapper_class = mixture_wrapper_class()
    patched = type("UncachedMixture", (wrapper_class,), {})
    without_cache(patched)
    setup = read_setup(Path(args.setup), args.preference)
    path = str(Path(args.setup) / "policy")
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = setup["heldout"]
    cpu = torch.device("cpu")

    def models(width: int | None, layers: int | None):
        reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if width is not None:
            config = copy.deepcopy(reference.config)
            config.hidden_size, config.num_hidden_layers, config.intermediate_size = width, layers, 2 * width
            config.num_attention_heads = width // config.head_dim
            torch.manual_seed(0)
            reference = AutoModelForCausalLM.from_config(config).float()
        policy = copy.deepcopy(reference)
        torch.manual_seed(1)
        with torch.no_grad():
            for parameter in policy.parameters():
                parameter.add_(0.02 * torch.randn_like(parameter))
        return policy.eval(), reference.eval()

    def run_trl(cls, policy, reference, prompt_ids, prompt_mask, n: int, eos: list[int]):
        config = GenerationConfig(max_new_tokens=n, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, use_cache=True,
                                  output_logits=True, return_dict_in_generate=True)
        wrapper = cls(policy, reference, config, mixture_coef=MIXTURE, device=cpu)
        start = time.perf_counter()
        out = wrapper.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
        seconds = time.perf_counter() - start
        tokens = out.sequences[:, prompt_ids.shape[1]:]
        log_probs = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)
        return tokens, log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), seconds

    def run_ours(policy, reference, n: int):
        ours = LMPolicy(policy, tokenizer, prompts, sampling=SamplingConfig(max_new_tokens=n))
        ref = LMPolicy(reference, tokenizer, prompts, sampling=ours.sampling)
        start = time.perf_counter()
        out = sample_mixture(ours, ref, torch.arange(len(prompts)), 1, MIXTURE, ours.sampling,
                             torch.Generator().manual_seed(0))
        return out.tokens[:, 0], out.logprobs[:, 0], time.perf_counter() - start, ours

    torch.manual_seed(0)
    policy, reference = models(None, None)
    tokens, log_probs, _, ours = run_ours(policy, reference, args.max_new_tokens)
    prompt_ids, prompt_mask = left_pad(ours.prompt_ids, ours.pad_id, cpu)
    eos = ours.eos_ids

    def error(tokens, log_probs) -> float:
        exact = exact_mixture_log_probs(policy, reference, prompt_ids, prompt_mask, tokens, MIXTURE)
        valid = valid_positions(tokens, eos)
        return float(((log_probs - exact).abs() * valid).max())

    correctness = {"ours (KV caches on)": error(tokens, log_probs)}
    for name, cls in (("TRL, generation config use_cache=True (gradient_checkpointing=False)", wrapper_class),
                      ("TRL, use_cache=False (TRL's default gradient_checkpointing=True)", patched)):
        tokens, log_probs, _ = run_trl(cls, policy, reference, prompt_ids, prompt_mask, args.max_new_tokens, eos)
        correctness[name] = error(tokens, log_probs)

    scaling = []
    for label, width, layers in (("setup model", None, None), ("random weights", 256, 4)):
        policy, reference = models(width, layers)
        for model in (policy, reference):       # no end token: every response runs to max_new_tokens
            model.lm_head.register_forward_hook(
                lambda module, inputs, output: output.index_fill(-1, torch.tensor(eos), float("-inf")))
        lengths = (32, 128, 224) if width is None else (32, 128)
        for n in lengths:
            row = {"model": label, "hidden": policy.config.hidden_size, "layers": policy.config.num_hidden_layers,
                   "max_new_tokens": n, "prompts": len(prompts)}
            row["ours_seconds"] = run_ours(policy, reference, n)[2]
            row["trl_cache_off_seconds"] = run_trl(patched, policy, reference, prompt_ids, prompt_mask, n, eos)[2]
            row["trl_use_cache_seconds"] = run_trl(wrapper_class, policy, reference, prompt_ids, prompt_mask, n,
                                                 eos)[2]
            scaling.append(row)
            print(f"  mixture, {label}, {n} tokens: ours {row['ours_seconds']:.2f} s, TRL cache off "
                  f"{row['trl_cache_off_seconds']:.2f} s", flush=True)
    import transformers
    import trl

    result = {"correctness_max_abs_log_prob_error": correctness, "scaling": scaling, "trl": trl.__version__,
              "transformers": transformers.__version__, "max_new_tokens": args.max_new_tokens, "beta": MIXTURE}
    Path(args.result).write_text(json.dumps(result, indent=1), encoding="utf-8")
