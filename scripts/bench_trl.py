#!/usr/bin/env python
"""Side by side with TRL (issue 5, item 3): ``nashpref train`` (Nash-MD, iterative DPO) against TRL's online DPO
(trl 1.16, ``trl.experimental.online_dpo``) and TRL's Nash-MD (trl 1.13, the newest release that ships it) on the
same tiny model, prompts and ground-truth oracle: time per iteration and final win-rates.

    bash scripts/setup_trl_venvs.sh                                   # .venv-trl, .venv-trl-nashmd (once)
    .venv-lm/bin/python scripts/bench_trl.py                          # everything; writes bench/trl/

Sub-commands (the first argument; ``run`` when it is left out):

* ``run``: every contender as a subprocess in its own venv, alternating round robin over seeds; then one
  attempt at TRL's vLLM colocate mode, then ``check-mixture``, then ``evaluate`` in .venv-lm.
* ``trl-worker``: one TRL training run (inside .venv-trl or .venv-trl-nashmd), with per-step times written by a
  TrainerCallback.
* ``check-mixture``: Nash-MD's opponent sampler, TRL's and ours: the error of its draws against the exact
  geometric mixture, and its cost as responses grow (inside .venv-trl-nashmd).
* ``evaluate``: win-rates of every final policy under the oracle on the held-out prompts, then results.json,
  the plot and README.md.

The module's top level imports only the standard library, so tests can import its pure helpers without TRL
(CI does not install it) and the orchestrator starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]

# ---- the contenders -------------------------------------------------------------------------------------------
# side "trl": run by `trl-worker` in its venv; side "ours": `nashpref train` in .venv-lm.
# TRL rows: "trl-…" run TRL's defaults, where gradient_checkpointing=True also turns the KV cache off for every
# generation (each new token re-runs the model over the whole prefix); "trl-…-nogc" set gradient_checkpointing=False
# (KV cache on for the policy's samples) and, for Nash-MD, keep the mixture's cache off as TRL intends: with the
# cache on, trl 1.13's mixture wrapper shares one KV cache between its two models and draws from the wrong
# distribution under transformers 5.19 (see `check-mixture`).
METHODS: dict[str, dict] = {
    "trl-nash-md": {"side": "trl", "venv": ".venv-trl-nashmd", "algorithm": "nash-md",
                    "gradient_checkpointing": True, "mixture_cache": "as-configured"},
    "trl-nash-md-nogc": {"side": "trl", "venv": ".venv-trl-nashmd", "algorithm": "nash-md",
                         "gradient_checkpointing": False, "mixture_cache": "off"},
    "ours-nash-md-vllm": {"side": "ours", "algorithm": "nash-md", "sampler": "vllm"},
    "ours-nash-md-hf": {"side": "ours", "algorithm": "nash-md", "sampler": "hf"},
    "trl-online-dpo": {"side": "trl", "venv": ".venv-trl", "algorithm": "online-dpo", "gradient_checkpointing": True},
    "trl-online-dpo-nogc": {"side": "trl", "venv": ".venv-trl", "algorithm": "online-dpo",
                            "gradient_checkpointing": False},
    "ours-iterative-dpo-vllm": {"side": "ours", "algorithm": "iterative-dpo", "sampler": "vllm"},
    "ours-iterative-dpo-hf": {"side": "ours", "algorithm": "iterative-dpo", "sampler": "hf"},
}
OUR_VENV = ".venv-lm"
# win-rate opponents besides the reference: our iterative DPO (default sampler) and TRL's online DPO
OPPONENTS = ("ours-iterative-dpo-vllm", "trl-online-dpo")
# speed-up pairs: (ours, TRL) doing the same algorithm
SPEEDUPS = (("ours-nash-md-vllm", "trl-nash-md"), ("ours-nash-md-vllm", "trl-nash-md-nogc"),
            ("ours-nash-md-hf", "trl-nash-md"), ("ours-nash-md-hf", "trl-nash-md-nogc"),
            ("ours-iterative-dpo-vllm", "trl-online-dpo"), ("ours-iterative-dpo-vllm", "trl-online-dpo-nogc"),
            ("ours-iterative-dpo-hf", "trl-online-dpo"), ("ours-iterative-dpo-hf", "trl-online-dpo-nogc"))
PHASES = ("sampling", "judging", "training", "sync")

# Shared hyper-parameters (both sides): KL strength τ = DPO β, Nash-MD mixture β, cDPO smoothing off (TRL's online
# DPO has none), temperature 1 with no top-k / top-p, AdamW (0.9, 0.999, 1e-8) at a constant lr, no weight
# decay, gradients clipped to norm 1.
TAU = 0.1
MIXTURE = 0.125
MAX_GRAD_NORM = 1.0


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


# ---- pure helpers (tested in tests/test_bench_trl.py) -----------------------------------------------------------
def iteration_plan(algorithm: str, prompts_per_iteration: int, iterations: int, train_prompts: int) -> dict:
    """How one iteration (one generation + update pass over one batch of P prompts, one optimizer step) maps to
    each side's options, for one algorithm.

    TRL: a Trainer step is one iteration: per_device_train_batch_size = P, gradient_accumulation_steps = 1,
    max_steps = T. Online DPO draws 2 completions per prompt (fixed in TRL); Nash-MD draws 1 from the policy and
    1 from the geometric mixture. Ours: --prompts-per-round P, --epochs 1, --minibatches 1,
    --grad-accumulation 1, --iterations T, and --samples K with K = 2 for iterative DPO (two policy samples per
    prompt, one pair) and K = 1 for Nash-MD (one policy sample against one mixture sample). Both sides thus draw
    2 responses per prompt, ask the oracle P questions and take T optimizer steps of P prompts each.
    """
    if algorithm not in ("nash-md", "iterative-dpo", "online-dpo"):
        raise ValueError(f"unknown algorithm {algorithm!r}")
    for name, value in (("prompts_per_iteration", prompts_per_iteration), ("iterations", iterations),
                        ("train_prompts", train_prompts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if prompts_per_iteration > train_prompts:
        raise ValueError(f"prompts_per_iteration {prompts_per_iteration} exceeds the {train_prompts} training "
                         "prompts")
    samples = 1 if algorithm == "nash-md" else 2
    return {
        "trl": {"per_device_train_batch_size": prompts_per_iteration, "gradient_accumulation_steps": 1,
                "max_steps": iterations, "dataloader_drop_last": True},
        "ours": {"prompts_per_round": prompts_per_iteration, "epochs": 1, "minibatches": 1,
                 "grad_accumulation": 1, "iterations": iterations, "samples": samples},
        "responses_per_prompt": 2,
        "oracle_queries_per_iteration": prompts_per_iteration,
        "optimizer_steps": iterations,
    }


def optimizer_steps(side: str, options: dict, train_prompts: int) -> int:
    """Optimizer steps that the given options make (checks ``iteration_plan`` from the other direction)."""
    if side == "trl":
        return options["max_steps"]
    return options["iterations"] * options["epochs"] * options["minibatches"]


def our_command(method: str, setup: Path, preference: str, out: Path, seed: int, iterations: int,
                prompts_per_iteration: int, train_prompts: int, max_new_tokens: int, lr: float) -> list[str]:
    """`nashpref train` arguments for one of our contenders (see ``iteration_plan`` for the mapping)."""
    spec = METHODS[method]
    plan = iteration_plan(spec["algorithm"], prompts_per_iteration, iterations, train_prompts)["ours"]
    command = ["train", "--policy", str(setup / "policy"), "--preference", preference,
               "--prompts", str(setup / "prompts-train.jsonl"), "--solver", spec["algorithm"], "--out", str(out),
               "--iterations", str(plan["iterations"]), "--samples", str(plan["samples"]),
               "--prompts-per-round", str(plan["prompts_per_round"]), "--epochs", str(plan["epochs"]),
               "--minibatches", str(plan["minibatches"]), "--grad-accumulation", str(plan["grad_accumulation"]),
               "--lr", repr(lr), "--max-new-tokens", str(max_new_tokens), "--sampler", spec["sampler"],
               "--heldout", "0", "--seed", str(seed), "--tau", repr(TAU), "--max-grad-norm", repr(MAX_GRAD_NORM),
               "--weight-decay", "0", "--temperature", "1", "--top-k", "0", "--top-p", "1", "--dtype", "float32",
               "--labels", "exact"]
    if spec["algorithm"] == "nash-md":
        command += ["--nash-md.mixture", repr(MIXTURE), "--nash-md.loss", "pg"]
    else:
        command += ["--iterative-dpo.label-smoothing", "0", "--iterative-dpo.reference", "initial"]
    return command


def our_iteration_times(rows: list[dict]) -> list[dict]:
    """Per-iteration seconds from `nashpref train`'s metrics.jsonl rows: sampling, judging, training and sync
    (weight sync + its verification); evaluation (0 with --heldout 0) and checkpoint writing are not part of an
    iteration."""
    out = []
    for row in rows:
        phases = {phase: float(row.get(f"{phase}_seconds", 0.0)) for phase in PHASES}
        out.append({"iteration": int(row["iteration"]), "seconds": sum(phases.values()), **phases})
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def trl_step_times(timing: dict) -> list[dict]:
    """Per-step seconds from a TRL timing file (``trl-worker``'s StepTimer): the step's wall time between
    on_step_begin and on_step_end, with its sampling / judging share and the rest as training."""
    out = []
    for step in timing["steps"]:
        phases = {phase: float(step.get(phase, 0.0)) for phase in PHASES}
        phases["training"] = float(step["seconds"]) - phases["sampling"] - phases["judging"] - phases["sync"]
        out.append({"iteration": int(step["step"]), "seconds": float(step["seconds"]), **phases})
    return out


def median_after_first(values: list[float]) -> float:
    """Median over iterations 2..T (the first carries one-off warm-up); the only value when T = 1."""
    if not values:
        return math.nan
    return statistics.median(values[1:] if len(values) > 1 else values)


def split_after_first(times: list[dict]) -> dict:
    """Mean seconds per phase over iterations 2..T (for the stacked bars)."""
    rest = times[1:] if len(times) > 1 else times
    return {phase: statistics.fmean(t[phase] for t in rest) for phase in PHASES} if rest else {}


def t_interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean and two-sided Student-t confidence interval over seeds: mean ± t_{(1+c)/2, n−1}·s/√n with the sample
    standard deviation s. With one value the interval is undefined (NaN)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan, "half_width": math.nan}
    mean = statistics.fmean(values)
    if n == 1:
        half = math.nan
    else:
        from scipy.stats import t

        half = float(t.ppf((1 + confidence) / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "half_width": half}


def error_line(text: str) -> str | None:
    """The exception line of the last traceback in ``text`` ('SomeError: message'), or None. Exceptions whose
    message continues on indented lines (pydantic's ValidationError) get the first of those appended after ' | '."""
    # torch.distributed prefixes every line of a rank's traceback with "[rank0]: "
    lines = [re.sub(r"^\[rank\d+\]: ", "", line) for line in text.splitlines()]
    pattern = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt))(: .*)?$")
    for index in range(len(lines) - 1, -1, -1):
        if pattern.match(lines[index]):
            line = lines[index].strip()
            if index + 1 < len(lines) and lines[index + 1].startswith((" ", "\t")) and lines[index + 1].strip():
                line += " | " + lines[index + 1].strip()
            return line
    return None


def prompt_plain(prompt) -> str:
    """A prompt as the oracle sees it in `nashpref train`: the text of the file's row (TRL gets it wrapped as one
    user message, so that both sides render it with the chat template)."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def completion_plain(completion) -> str:
    """TRL hands conversational completions as [{"role": "assistant", "content": text}]."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion)


def round_robin(methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Run order: seed by seed, each seed's methods rotated by one place, so that no method always runs first
    (warm caches) or right after the same neighbour."""
    order = []
    for index, seed in enumerate(seeds):
        shift = index % len(methods)
        order += [(method, seed) for method in methods[shift:] + methods[:shift]]
    return order


# ---- set-up ---------------------------------------------------------------------------------------------------
def read_setup(setup: Path, preference: str | None) -> dict:
    """Paths and the oracle spec of a setup directory (policy/, prompts-train.jsonl, prompts-heldout.jsonl,
    optional setup.json whose "preference" names the oracle)."""
    for name in ("policy", "prompts-train.jsonl", "prompts-heldout.jsonl"):
        if not (setup / name).exists():
            fail(f"--setup {setup}: missing {name}")
    info = {}
    if (setup / "setup.json").is_file():
        info = json.loads((setup / "setup.json").read_text(encoding="utf-8"))
    spec = preference or info.get("preference") or "rule:raters"
    train = read_jsonl(setup / "prompts-train.jsonl")
    heldout = read_jsonl(setup / "prompts-heldout.jsonl")
    return {"preference": spec, "train": [row["prompt"] for row in train],
            "heldout": [row["prompt"] for row in heldout], "info": info}


def bench_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                "OMP_NUM_THREADS": str(threads), "VLLM_CPU_KVCACHE_SPACE": "1", "WANDB_DISABLED": "true",
                "PYTHONUNBUFFERED": "1"})
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


# ---- TRL worker (runs inside a TRL venv) --------------------------------------------------------------------------
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


# ---- the geometric mixture: correctness and cost (runs in .venv-trl-nashmd) -----------------------------------
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


# ---- orchestrator ---------------------------------------------------------------------------------------------
def venv_python(venv: str) -> Path:
    return ROOT / venv / "bin" / "python"


def run_one(method: str, seed: int, args: argparse.Namespace, setup: dict, env: dict) -> dict:
    """Train one contender in its own venv; returns wall seconds (start-up included) and the exit status."""
    spec = METHODS[method]
    run_dir = Path(args.out) / "runs" / method / f"seed-{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if spec["side"] == "trl":
        command = [str(venv_python(spec["venv"])), str(Path(__file__).resolve()), "trl-worker", "--method", method,
                   "--setup", str(args.setup), "--preference", setup["preference"], "--seed", str(seed),
                   "--iterations", str(args.iterations), "--prompts-per-iteration", str(args.prompts_per_iteration),
                   "--max-new-tokens", str(args.max_new_tokens), "--lr", repr(args.lr), "--run-dir", str(run_dir)]
    else:
        command = [str(ROOT / OUR_VENV / "bin" / "nashpref")] + our_command(
            method, Path(args.setup), setup["preference"], run_dir, seed, args.iterations,
            args.prompts_per_iteration, len(setup["train"]), args.max_new_tokens, args.lr)
    log = Path(args.out) / "logs" / f"{method}-seed-{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        try:
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False,
                                  timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = time.perf_counter() - start
    if spec["side"] == "ours" and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")      # resumable state; final/ is the result
    if (run_dir / "trl").is_dir() and not any((run_dir / "trl").iterdir()):
        (run_dir / "trl").rmdir()                   # TRL's output_dir, empty with save_strategy="no"
    result = {"method": method, "seed": seed, "wall_seconds": wall, "returncode": code,
              "command": command, "log": str(log.relative_to(args.out))}
    (run_dir).mkdir(parents=True, exist_ok=True)
    (run_dir / "wall.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    status = "ok" if code == 0 else f"FAILED ({code}), see {log}"
    print(f"  {method:26s} seed {seed}: {wall:6.1f} s wall  {status}", flush=True)
    return result


def try_vllm_colocate(args: argparse.Namespace, setup: dict, env: dict) -> dict:
    """TRL online DPO with use_vllm=True, vllm_mode='colocate' for two steps; on this CPU backend it is expected
    to fail at the first weight sync. Returns the exact error line."""
    run_dir = Path(args.out) / "runs" / "trl-online-dpo-vllm-colocate" / "seed-0"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    command = [str(venv_python(".venv-trl")), str(Path(__file__).resolve()), "trl-worker", "--method",
               "trl-online-dpo", "--vllm-colocate", "--setup", str(args.setup), "--preference",
               setup["preference"], "--seed", "0", "--iterations", "2", "--prompts-per-iteration",
               str(args.prompts_per_iteration), "--max-new-tokens", str(args.max_new_tokens), "--lr", repr(args.lr),
               "--run-dir", str(run_dir)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout,
                              check=False)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = (exc.stdout or "") + (exc.stderr or "") if isinstance(exc.stdout, str) else "", "timeout"
    log = Path(args.out) / "logs" / "trl-online-dpo-vllm-colocate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("$ " + " ".join(command) + "\n" + output, encoding="utf-8")
    steps = 0
    if (run_dir / "timing.json").is_file():
        steps = len(json.loads((run_dir / "timing.json").read_text(encoding="utf-8"))["steps"])
    result = {"returncode": code, "error": error_line(output), "steps_completed": steps,
              "failed_in_weight_sync": "_move_model_to_vllm" in output,
              "seconds": time.perf_counter() - start, "log": str(log.relative_to(args.out)), "command": command}
    print(f"  vLLM colocate: exit {code}, {steps} steps, error: {result['error']}", flush=True)
    return result


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2: bad input, caught before anything is built or written."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its usage errors as one `error:` line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}")


def run(args: argparse.Namespace) -> None:
    methods = args.methods.split(",") if args.methods else list(METHODS)
    for method in methods:
        if method not in METHODS:
            fail(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")
        venv = METHODS[method].get("venv", OUR_VENV)
        if not venv_python(venv).exists():
            fail(f"{venv} is missing; build it with: bash scripts/setup_trl_venvs.sh")
    if not Path(args.setup).exists():          # deterministic: the same files as `nashpref bench llm` builds
        from nashpref.benchmarks.llm_setup import build_setup

        print(f"building the {args.size} setup in {args.setup}", flush=True)
        build_setup(args.setup, args.size, 0)
    setup = read_setup(Path(args.setup), args.preference)
    for method in methods:
        try:
            iteration_plan(METHODS[method]["algorithm"], args.prompts_per_iteration, args.iterations,
                           len(setup["train"]))
        except ValueError as err:
            fail(str(err))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = bench_env(args.threads)
    seeds = list(range(args.seeds))
    began = time.time()
    print(f"bench_trl: {len(methods)} methods x {len(seeds)} seeds, {args.iterations} iterations, "
          f"oracle {setup['preference']}", flush=True)
    runs = [run_one(method, seed, args, setup, env) for method, seed in round_robin(methods, seeds)]
    colocate = try_vllm_colocate(args, setup, env) if not args.skip_colocate else None
    if not args.skip_mixture_check:
        print("  geometric mixture: correctness and cost (TRL vs ours)", flush=True)
        command = [str(venv_python(".venv-trl-nashmd")), str(Path(__file__).resolve()), "check-mixture", "--setup",
                   str(args.setup), "--preference", setup["preference"], "--max-new-tokens",
                   str(args.max_new_tokens), "--result", str(out / "mixture_check.json")]
        with open(out / "logs" / "check-mixture.log", "w", encoding="utf-8") as handle:
            subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True)
    training_wall = time.time() - began
    state = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
             "argv": sys.argv, "methods": methods, "seeds": seeds, "runs": runs, "vllm_colocate": colocate,
             "training_wall_seconds": training_wall, "preference": setup["preference"]}
    (out / "runs.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    print(f"training done in {training_wall:.0f} s; evaluating", flush=True)
    command = [str(venv_python(OUR_VENV)), str(Path(__file__).resolve()), "evaluate", "--setup", str(args.setup),
               "--out", str(out), "--eval-samples", str(args.eval_samples), "--max-new-tokens",
               str(args.max_new_tokens), "--total-start", repr(began)]
    subprocess.run(command, cwd=ROOT, env=env, check=True)


# ---- evaluation (in .venv-lm) ---------------------------------------------------------------------------------
def sample_texts(path: Path, prompts: list[str], samples: int, max_new_tokens: int, seed: int) -> list[list[str]]:
    """K responses per prompt at temperature 1 (transformers generate through nashpref's HF sampler)."""
    import torch

    from nashpref.lm.loading import load_causal_lm
    from nashpref.lm.policy import LMPolicy
    from nashpref.lm.samplers.base import SamplingConfig

    model, tokenizer = load_causal_lm(str(path), device="cpu", dtype="float32")
    policy = LMPolicy(model, tokenizer, prompts, sampling=SamplingConfig(max_new_tokens=max_new_tokens))
    with torch.no_grad():
        responses = policy.sample(torch.arange(len(prompts)), samples, torch.Generator().manual_seed(seed))
    return [list(row) for row in responses.texts]


def evaluate(args: argparse.Namespace) -> None:
    from nashpref.benchmarks.llm import win_rate
    from nashpref.preferences import load_text_oracle

    out = Path(args.out)
    state = json.loads((out / "runs.json").read_text(encoding="utf-8"))
    setup = read_setup(Path(args.setup), state["preference"])
    oracle = load_text_oracle(setup["preference"])
    prompts = setup["heldout"]
    started = time.perf_counter()
    texts = {"reference": sample_texts(Path(args.setup) / "policy", prompts, args.eval_samples,
                                       args.max_new_tokens, args.eval_seed)}
    ok = {(r["method"], r["seed"]) for r in state["runs"] if r["returncode"] == 0}
    for method, seed in sorted(ok):
        final = out / "runs" / method / f"seed-{seed}" / "final"
        texts[(method, seed)] = sample_texts(final, prompts, args.eval_samples, args.max_new_tokens, args.eval_seed)
    methods = {}
    for method in state["methods"]:
        seeds = [seed for seed in state["seeds"] if (method, seed) in ok]
        entry = {"seeds": seeds, "win_rate": {}}
        opponents = {"reference": lambda seed: "reference"}
        for opponent in OPPONENTS:
            opponents[opponent] = lambda seed, o=opponent: (o, seed) if (o, seed) in ok else None
        for name, pick in opponents.items():
            values = {}
            for seed in seeds:
                other = pick(seed)
                if other is not None:
                    values[seed] = win_rate(oracle, prompts, texts[(method, seed)], texts[other])
            entry["win_rate"][name] = {"per_seed": values, **t_interval(list(values.values()))}
        entry["mean_words"] = statistics.fmean(
            len(t.split()) for seed in seeds for row in texts[(method, seed)] for t in row) if seeds else math.nan
        methods[method] = entry
    evaluation_seconds = time.perf_counter() - started
    same_weights = {}
    for default in ("trl-nash-md", "trl-online-dpo"):
        seeds = [s for s in state["seeds"] if (default, s) in ok and (f"{default}-nogc", s) in ok]
        if seeds:
            same_weights[f"{default} vs {default}-nogc"] = max(
                max_weight_difference(out / "runs" / default / f"seed-{s}" / "final",
                                      out / "runs" / f"{default}-nogc" / f"seed-{s}" / "final") for s in seeds)
    timing = collect_timing(out, state)
    total = time.time() - args.total_start if args.total_start else None
    results = {"machine": machine_info(), "versions": versions(), "setup": str(args.setup),
               "setup_info": setup["info"], "preference": setup["preference"], "settings": state["args"],
               "train_prompts": len(setup["train"]), "heldout_prompts": len(prompts),
               "plans": {m: iteration_plan(METHODS[m]["algorithm"], state["args"]["prompts_per_iteration"],
                                           state["args"]["iterations"], len(setup["train"]))
                         for m in state["methods"]},
               "hyperparameters": {"tau_beta": TAU, "nash_md_mixture": MIXTURE, "max_grad_norm": MAX_GRAD_NORM,
                                   "optimizer": "AdamW(0.9, 0.999, eps 1e-8), constant lr, no weight decay",
                                   "temperature": 1.0, "top_k": 0, "top_p": 1.0},
               "timing": timing, "speedups": speedups(timing), "win_rates": methods,
               "prompt_token_mismatches": max((v["prompt_token_mismatches"] for t in timing.values()
                                               for v in t["per_seed"].values()
                                               if v.get("prompt_token_mismatches") is not None), default=None),
               "max_weight_difference_with_and_without_gradient_checkpointing": same_weights,
               "eval": {"samples_per_prompt": args.eval_samples, "seed": args.eval_seed,
                        "seconds": evaluation_seconds},
               "vllm_colocate": state["vllm_colocate"], "training_wall_seconds": state["training_wall_seconds"],
               "mixture_check": (json.loads((out / "mixture_check.json").read_text(encoding="utf-8"))
                                 if (out / "mixture_check.json").is_file() else None),
               "total_wall_seconds": total, "argv": state["argv"],
               "responses_example": {m: texts[(m, s)][0][:3] for (m, s) in sorted(ok) if s == 0}
               | {"reference": texts["reference"][0][:3]}}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    plot(results, out / "bench_trl.png")
    (out / "README.md").write_text(render_readme(results), encoding="utf-8")
    print(f"wrote {out / 'results.json'}, {out / 'bench_trl.png'}, {out / 'README.md'}", flush=True)


def max_weight_difference(a: Path, b: Path) -> float:
    """Largest |Δ| between two saved checkpoints' tensors."""
    from safetensors.torch import load_file

    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def collect_timing(out: Path, state: dict) -> dict:
    """Per method: per-seed iteration times (median after the first, split), wall seconds, and their summary."""
    timing = {}
    for method in state["methods"]:
        per_seed = {}
        for run in state["runs"]:
            if run["method"] != method or run["returncode"] != 0:
                continue
            run_dir = out / "runs" / method / f"seed-{run['seed']}"
            if METHODS[method]["side"] == "trl":
                record = json.loads((run_dir / "timing.json").read_text(encoding="utf-8"))
                times = trl_step_times(record)
                extra = {"import_seconds": record["import_seconds"], "setup_seconds": record["setup_seconds"],
                         "train_seconds": record["train_seconds"],
                         "prompt_token_mismatches": record.get("prompt_token_mismatches")}
            else:
                times = our_iteration_times(read_jsonl(run_dir / "metrics.jsonl"))
                extra = {}
            per_seed[run["seed"]] = {"iterations": times, "median": median_after_first([t["seconds"] for t in times]),
                                     "split": split_after_first(times), "wall_seconds": run["wall_seconds"], **extra}
        medians = [v["median"] for v in per_seed.values()]
        walls = [v["wall_seconds"] for v in per_seed.values()]
        splits = [v["split"] for v in per_seed.values() if v["split"]]
        timing[method] = {
            "per_seed": per_seed,
            "median_seconds_per_iteration": statistics.median(medians) if medians else math.nan,
            "wall_seconds": statistics.median(walls) if walls else math.nan,
            "split": {p: statistics.fmean(s[p] for s in splits) for p in PHASES} if splits else {}}
    return timing


def speedups(timing: dict) -> dict:
    """TRL's median seconds per iteration ÷ ours (above 1: ours is faster), per (ours, TRL) pair."""
    out = {}
    for ours, theirs in SPEEDUPS:
        if ours in timing and theirs in timing:
            a = timing[ours]["median_seconds_per_iteration"]
            b = timing[theirs]["median_seconds_per_iteration"]
            wall_a, wall_b = timing[ours]["wall_seconds"], timing[theirs]["wall_seconds"]
            out[f"{ours} vs {theirs}"] = {"per_iteration": b / a if a > 0 else math.nan,
                                          "wall": wall_b / wall_a if wall_a > 0 else math.nan}
    return out


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2 ** 20:.1f} GiB"
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "python": platform.python_version(),
            "os": platform.platform()}


def versions() -> dict:
    """Package versions in each venv (asked from the venv's own interpreter)."""
    probe = ("import importlib.metadata as m, json\n"
             "names = ['trl', 'transformers', 'torch', 'accelerate', 'datasets', 'vllm-cpu']\n"
             "v = {}\n"
             "for n in names:\n"
             "    try: v[n] = m.version(n)\n"
             "    except m.PackageNotFoundError: pass\n"
             "print(json.dumps(v))")
    out = {}
    for venv in (OUR_VENV, ".venv-trl", ".venv-trl-nashmd"):
        if venv_python(venv).exists():
            done = subprocess.run([str(venv_python(venv)), "-c", probe], capture_output=True, text=True,
                                  check=False)
            out[venv] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-200:]}
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timing = results["timing"]
    methods = [m for m in timing if timing[m]["per_seed"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.2))
    colors = {"sampling": "#4c72b0", "judging": "#dd8452", "training": "#55a868", "sync": "#c44e52"}
    for index, method in enumerate(methods):
        bottom = 0.0
        for phase in PHASES:
            value = timing[method]["split"].get(phase, 0.0)
            left.bar(index, value, bottom=bottom, color=colors[phase], label=phase if index == 0 else None)
            bottom += value
        left.plot(index, timing[method]["median_seconds_per_iteration"], "ko",
                  label="median total" if index == 0 else None)
    left.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("seconds per iteration")
    left.set_title("Time per iteration (bars: mean split over iterations 2..T)", fontsize=10)
    left.legend(fontsize=8)
    opponents = ("reference",) + OPPONENTS
    width = 0.8 / len(opponents)
    for k, opponent in enumerate(opponents):
        means, errors = [], []
        for method in methods:
            stats = results["win_rates"][method]["win_rate"][opponent]
            means.append(stats["mean"])
            errors.append(0.0 if not math.isfinite(stats["half_width"]) else stats["half_width"])
        left_edge = [i - 0.4 + width * (k + 0.5) for i in range(len(methods))]
        right.bar(left_edge, means, width, yerr=errors, capsize=3, label=f"vs {opponent}")
    right.axhline(0.5, color="grey", lw=0.8, ls="--")
    spread = [abs(stats["mean"] - 0.5) + (stats["half_width"] if math.isfinite(stats["half_width"]) else 0.0)
              for method in methods for stats in results["win_rates"][method]["win_rate"].values()
              if math.isfinite(stats["mean"])]
    reach = max(spread, default=0.1) + 0.03
    right.set_ylim(0.5 - reach, 0.5 + reach)
    right.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("win-rate (ground-truth oracle, held-out prompts)")
    right.set_title("Final win-rates, 95% t interval over seeds", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def ci_text(stats: dict) -> str:
    if stats["n"] == 0:
        return "–"
    if not math.isfinite(stats["half_width"]):
        return f"{stats['mean']:.3f} (1 seed)"
    return f"{stats['mean']:.3f} ± {stats['half_width']:.3f}"


DIFFERENCES = """\
* **Judge.** trl 1.13 and 1.16 ship no judges at all (no pairwise-judge base class to subclass): both trainers take
  `reward_funcs`. TRL online DPO: a reward function that gets the batch's 2P completions ([all first, all second])
  returns P(c ≻ its pair) and 1 − P; TRL keeps the larger as chosen, i.e. it **thresholds** the exact probability at
  ½, and a tie (P = ½) still trains, with the first completion as chosen. Ours (iterative DPO, K = 2) also takes the
  better of the two by the exact probability but **drops ties**. TRL Nash-MD: a subclass overrides
  `_compute_rewards` to return (logit P, 0); TRL forms σ(s − s′), which is the **exact probability** P (±inf for
  P ∈ {0, 1} gives exactly 0 / 1; TRL's own `rewards/*` logs would then show inf). Judges
  (`BasePairwiseJudge` & co.) were moved to `trl.experimental.judges` before 1.0 and are absent from both wheels.
* **KV cache in generation.** TRL 1.x configs default to `gradient_checkpointing=True`, and then online DPO and
  Nash-MD generate with `use_cache=False`: every new token re-runs the model over the whole prefix, for the
  policy's samples too. Rows `trl-…` keep TRL's defaults; rows `trl-…-nogc` set `gradient_checkpointing=False`,
  which turns the cache on for the policy's samples (and drops activation recomputation in the backward pass).
  Ours always samples with the cache on (transformers `generate`, or vLLM in the `-vllm` rows).
* **Nash-MD mixture sampling.** TRL samples the opponent from `GeometricMixtureWrapper`, which asks for no cache
  only inside `prepare_inputs_for_generation`. With TRL's defaults the generation config already says
  `use_cache=False`, so the mixture is recomputed over the whole prefix per token and is exact. With
  `gradient_checkpointing=False` the config says `use_cache=True`: transformers 5.19 then builds one
  `DynamicCache`, feeds one new token per step, and **both models write into that one cache**, so each attends to
  the other's keys and values and the draws are not from π^(1−β)μ^β (errors of several nats per token, table
  below). Row `trl-nash-md-nogc` therefore makes the wrapper's `generate` use `use_cache=False` (a few lines in
  this script, what TRL intends), and stays exact. Ours samples the mixture token by token with one KV cache per
  model (`nashpref.lm.samplers.hf`), exact to ~2e-6. vLLM cannot sample the mixture on either side; in the `-vllm`
  rows only the policy's own samples come from vLLM.
* **Nash-MD responses per prompt.** TRL draws 1 policy and 1 mixture completion per prompt per step; ours runs
  with `--samples 1` (the same 1 + 1). Both use β = 0.125 for the mixture (TRL's default is 0.5) and τ = β_KL = 0.1.
* **Nash-MD KL term.** TRL: Σ_t sg(log π/μ at t)·log π(y_t) (per-token REINFORCE of the KL). Ours: τ·sg(Σ_t log
  π/μ)·Σ_t log π(y_t) (sequence-level). Both use the ½ control variate on P.
* **DPO.** Same sigmoid loss with β = τ = 0.1 and reference μ (the initial policy); label smoothing 0 on our side
  (our default is 0.1, RLHFlow's cDPO).
* **Batching.** TRL's dataloader walks shuffled epochs of the training prompts (drop_last); ours draws P prompts
  without replacement each round, independently of the last round.
* **Per-iteration work outside the step.** Ours writes a resumable checkpoint (weights, optimizer, RNG) after
  every iteration and, with vLLM, syncs and verifies the engine's weights (counted in `sync`); TRL runs with
  `save_strategy="no"`. Checkpoint writing is *not* in our per-iteration time, but it is in our total wall.
* **Start-up.** Ours with `--sampler vllm` imports vLLM and starts an engine: compare the total wall of the
  `-vllm` and `-hf` rows. The `-hf` rows use transformers generate (KV cache on) and never import vLLM; TRL's
  rows run with vLLM hidden from TRL (`.venv-trl` holds vllm-cpu only for the colocate attempt), so TRL does not
  import it either.
"""


def render_readme(r: dict) -> str:
    settings = r["settings"]
    versions_ = r["versions"]
    lines = ["# Side by side with TRL (issue 5, item 3)", "",
             "Ours (`nashpref train`) against TRL's online DPO (trl "
             f"{versions_.get('.venv-trl', {}).get('trl', '?')}, `trl.experimental.online_dpo`) and TRL's Nash-MD "
             f"(trl {versions_.get('.venv-trl-nashmd', {}).get('trl', '?')}, `trl.experimental.nash_md`) on one tiny "
             f"Llama, the same prompts and the ground-truth oracle `{r['preference']}`. Generated by "
             "`scripts/bench_trl.py`; the numbers below are from `results.json`.", "",
             "## Commands", "", "```",
             "bash scripts/setup_trl_venvs.sh        # .venv-trl (trl 1.16.0 + vllm-cpu 0.32.0), "
             ".venv-trl-nashmd (trl 1.13.0)",
             "VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-lm/bin/python " + " ".join(
                 ["scripts/bench_trl.py"] + r["argv"][1:]),
             "```", "",
             "Every contender is a subprocess in its own venv; they alternate round robin over seeds (each seed's "
             "order rotated by one), so load from other processes on the machine hits all of them alike. Our runs are "
             "`nashpref train` with the options in `results.json` (`logs/*.log` start with the exact command line).",
             "", "## Machine", ""]
    m = r["machine"]
    lines += [f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, Python {m['python']}, no GPU"]
    for venv, vs in versions_.items():
        lines.append(f"- `{venv}`: " + ", ".join(f"{k} {v}" for k, v in vs.items()))
    lines += [f"- Every run uses `OMP_NUM_THREADS={settings['threads']}`. The machine is shared with other jobs; "
              "with two OpenMP threads per run, a busy neighbour stalls a run badly (in a development run TRL's first "
              "step took 18 s instead of 0.1 s), and the tiny model gains nothing from a second thread. Timings "
              "still vary between runs by tens of percent: compare rows of one run, not across runs."]
    plan = next(iter(r["plans"].values()))
    lines += ["", "## What one iteration is", "",
              f"One iteration = one generation + update pass over one batch of P = {settings['prompts_per_iteration']} "
              f"training prompts (of {r['train_prompts']}), ending in **one** AdamW step; T = {settings['iterations']} "
              f"iterations, seeds {', '.join(map(str, range(settings['seeds'])))}, at most "
              f"{settings['max_new_tokens']} new tokens, lr {settings['lr']}, temperature 1, fp32.", "",
              "| | TRL | ours |", "|---|---|---|",
              f"| batch | `per_device_train_batch_size={plan['trl']['per_device_train_batch_size']}`, "
              "`gradient_accumulation_steps=1`, `dataloader_drop_last=True` | "
              f"`--prompts-per-round {plan['ours']['prompts_per_round']} --epochs 1 --minibatches 1 "
              "--grad-accumulation 1` |",
              f"| iterations | `max_steps={settings['iterations']}` (one Trainer step) | "
              f"`--iterations {settings['iterations']}` |",
              "| responses per prompt | online DPO: 2 (fixed by TRL); Nash-MD: 1 policy + 1 mixture | iterative DPO: "
              "`--samples 2`; Nash-MD: `--samples 1` (1 policy + 1 mixture) |",
              f"| oracle queries per iteration | P = {plan['oracle_queries_per_iteration']} | P |",
              "| optimizer | `optim=adamw_torch`, `lr_scheduler_type=constant`, `max_grad_norm=1`, no weight decay "
              "| AdamW, constant lr, `--max-grad-norm 1` |",
              "| KL / DPO β | `beta=0.1` | `--tau 0.1` |",
              "| prompt tokens | chat template; " + (
                  "not checked" if r["prompt_token_mismatches"] is None else
                  f"ids differ from ours on {r['prompt_token_mismatches']} of {r['train_prompts']} training "
                  "prompts (checked in every TRL run)") + " | chat template |",
              "| gradient checkpointing | `True` (TRL's default) in rows `trl-…`, `False` in rows `trl-…-nogc` "
              "| none |",
              "| threads | `OMP_NUM_THREADS=" + str(settings["threads"]) + "` | the same |", "",
              "Time per iteration: TRL: wall time between the `on_step_begin` and `on_step_end` callbacks (a "
              "TrainerCallback writes them to `runs/<method>/seed-<k>/timing.json`; sampling and judging are timed "
              "inside a trainer subclass, training is the rest). Ours: `sampling + judging + training + sync` seconds "
              "of each `metrics.jsonl` row. The median is over iterations 2..T (the first carries warm-up) and then "
              "over seeds; **total wall** is the whole subprocess, start-up (imports, model loading, vLLM engine) and "
              "final save included.", "",
              "## Time per iteration", "",
              "Rows: `trl-nash-md`, `trl-online-dpo`: TRL with its defaults (gradient checkpointing on, hence no KV "
              "cache in generation); `trl-…-nogc`: `gradient_checkpointing=False` (policy samples with the cache; "
              "Nash-MD's mixture still without, see below); `ours-…-vllm`: `nashpref train --sampler vllm` (policy "
              "samples from an in-process vLLM engine, synced and verified every iteration); `ours-…-hf`: "
              "`--sampler hf` (transformers generate with the cache).", "",
              "| method | median s / iteration | per-seed medians | sampling | judging | training | sync "
              "| total wall s (start-up incl.) |",
              "|---|---|---|---|---|---|---|---|"]
    for method, t in r["timing"].items():
        if not t["per_seed"]:
            lines.append(f"| {method} | failed | | | | | | |")
            continue
        s = t["split"]
        seeds = [v["median"] for v in t["per_seed"].values()]
        lines.append(f"| {method} | {fmt(t['median_seconds_per_iteration'])} | {fmt(min(seeds))}–{fmt(max(seeds))} | "
                     + " | ".join(
            fmt(s.get(p)) for p in PHASES) + f" | {fmt(t['wall_seconds'], 1)} |")
    lines += ["", "Split columns: mean over iterations 2..T and seeds (they need not add up to the median).", "",
              "| ours vs TRL | speed-up per iteration (TRL ÷ ours) | speed-up in total wall |", "|---|---|---|"]
    for pair, value in r["speedups"].items():
        lines.append(f"| {pair} | {fmt(value['per_iteration'], 2)}× | {fmt(value['wall'], 2)}× |")
    def ratio(ours: str, theirs: str):
        return r["speedups"].get(f"{ours} vs {theirs}", {}).get("per_iteration")

    found = [v for v in (ratio(f"ours-nash-md-{s}", t) for s in ("vllm", "hf") for t in ("trl-nash-md",))
             if v is not None and math.isfinite(v)]
    if found:
        verdict = "met" if max(found) >= 3 else "**not met** at this size"
        lines += ["", f"Issue target (ours ≥ 3× faster per iteration than TRL Nash-MD): {verdict}. Ours with vLLM / "
                      f"with transformers sampling: {fmt(ratio('ours-nash-md-vllm', 'trl-nash-md'), 2)}× / "
                      f"{fmt(ratio('ours-nash-md-hf', 'trl-nash-md'), 2)}× against TRL's defaults, "
                      f"{fmt(ratio('ours-nash-md-vllm', 'trl-nash-md-nogc'), 2)}× / "
                      f"{fmt(ratio('ours-nash-md-hf', 'trl-nash-md-nogc'), 2)}× against TRL without gradient "
                      "checkpointing."]
    lines += ["", "![time per iteration and win-rates](bench_trl.png)", "",
              "## Final win-rates (ground-truth oracle)", "",
              f"{r['heldout_prompts']} held-out prompts, K = {r['eval']['samples_per_prompt']} responses per prompt "
              "and policy at temperature 1 (transformers generate), win-rate = mean P(a ≻ b) over all K×K pairs and "
              "prompts. Mean ± half-width of the 95% Student-t interval over seeds; opponents are paired by seed.", "",
              "| method | vs reference μ | vs ours iterative DPO (vLLM) | vs TRL online DPO | mean words |",
              "|---|---|---|---|---|"]
    for method, w in r["win_rates"].items():
        lines.append(f"| {method} | " + " | ".join(ci_text(w["win_rate"][o]) for o in ("reference",) + OPPONENTS)
                     + f" | {fmt(w['mean_words'], 1)} |")
    for pair, value in r.get("max_weight_difference_with_and_without_gradient_checkpointing", {}).items():
        lines += ["", f"{pair}: largest weight difference of the final policies {value:.2g} (same seeds): the two "
                      "rows compute the same updates and differ only in speed."]
    lines += ["", "Per seed (vs reference):", ""]
    for method, w in r["win_rates"].items():
        per = w["win_rate"]["reference"]["per_seed"]
        lines.append(f"- {method}: " + ", ".join(f"seed {k}: {v:.3f}" for k, v in per.items()))
    check = r.get("mixture_check")
    if check:
        lines += ["", "## Nash-MD's opponent: the geometric mixture π^(1−β)μ^β", "",
                  f"Largest |log-prob error| of the sampled tokens against the exact mixture (teacher-forced, no "
                  f"cache), β = {check['beta']}, the setup's model plus noise as π (so π ≠ μ), the held-out "
                  f"prompts, ≤ {check['max_new_tokens']} tokens (`check-mixture`, trl {check['trl']}, transformers "
                  f"{check['transformers']}):", "", "| sampler | max error (nats) |", "|---|---|"]
        lines += [f"| {name} | {value:.2g} |" for name, value in check["correctness_max_abs_log_prob_error"].items()]
        lines += ["", "Seconds to sample one mixture response for each held-out prompt when every response runs to "
                      "the length limit (end token masked): the cost of recomputing the prefix without a cache grows "
                      "with length and width. This is the sampler alone; the training runs above stop at the "
                      "end token after a few words.", "",
                  "| model | tokens | ours (caches on) | TRL cache off | TRL use_cache=True (wrong draws) | "
                  "TRL off ÷ ours |",
                  "|---|---|---|---|---|---|"]
        for row in check["scaling"]:
            lines.append(f"| {row['model']} (hidden {row['hidden']}, {row['layers']} layers) | "
                         f"{row['max_new_tokens']} | {row['ours_seconds']:.2f} | {row['trl_cache_off_seconds']:.2f} | "
                         f"{row['trl_use_cache_seconds']:.2f} | "
                         f"{row['trl_cache_off_seconds'] / row['ours_seconds']:.1f}× |")
    lines += ["", "## Differences between the trainers", "", DIFFERENCES, "## What could not run here", ""]
    colocate = r.get("vllm_colocate")
    if colocate is None:
        lines.append("- TRL's vLLM colocate mode was not attempted in this run (`--skip-colocate`).")
    else:
        state = "failed" if colocate["returncode"] != 0 else "ran"
        where = (" at the first weight sync (`_move_model_to_vllm`, before the first generation)"
                 if colocate.get("failed_in_weight_sync") else "")
        lines.append(f"- TRL online DPO with `use_vllm=True, vllm_mode='colocate'` {state} on this CPU{where} "
                     f"(exit {colocate['returncode']}, {colocate['steps_completed']} steps completed, "
                     f"{colocate['seconds']:.0f} s). Error line:")
        lines += ["", "  ```", f"  {colocate['error']}", "  ```", "",
                  f"  Full output: `{colocate['log']}`. The TRL rows above therefore use TRL's transformers-generate "
                  "path (see *KV cache in generation* for when it caches)."]
    lines += ["- TRL's Nash-MD has no vLLM path: trl 1.13's `NashMDTrainer` generates both completions with "
              "transformers in its own `_generate_completions`, whatever `use_vllm` says.",
              "- Nash-MD was removed in trl 1.14.0 (huggingface/trl#7255); trl 1.13.0 is the newest release that "
              "ships it (checked in the wheels of 1.16.0, 1.15.0, 1.14.2, 1.14.0: absent; 1.13.0, 1.12.0: "
              "present).", "",
              "## Run time", "",
              f"Training (all runs + the colocate attempt): {fmt(r['training_wall_seconds'], 0)} s; evaluation: "
              f"{fmt(r['eval']['seconds'], 0)} s; whole script: {fmt(r['total_wall_seconds'], 0)} s.", ""]
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    top = OneLineParser(description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command")

    def shared(p: argparse.ArgumentParser) -> None:
        p.add_argument("--setup", type=Path, default=Path("bench/llm/setup"),
                       help="setup directory (policy/, prompts-*.jsonl); `run` builds the default one, the same "
                            "that `nashpref bench llm` uses, when it is missing")
        p.add_argument("--preference", default=None,
                       help="oracle spec (default: setup.json's 'preference', else rule:raters)")
        p.add_argument("--max-new-tokens", type=int, default=32)

    r = sub.add_parser("run", help="the whole benchmark (default)")
    shared(r)
    r.add_argument("--size", default="tiny", choices=("tiny", "small", "base"),
                   help="model size of the setup that `run` builds when --setup is missing (nashpref bench llm's sizes)")
    r.add_argument("--iterations", type=int, default=10)
    r.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    r.add_argument("--prompts-per-iteration", type=int, default=8)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--out", type=Path, default=ROOT / "bench" / "trl")
    r.add_argument("--methods", default=None, help=f"comma-separated subset of {', '.join(METHODS)}")
    r.add_argument("--eval-samples", type=int, default=16)
    r.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of every run (1: the tiny model gains nothing from a second thread, and "
                        "two OpenMP threads on a shared 2-core machine stall badly when another process runs)")
    r.add_argument("--timeout", type=int, default=900, help="seconds per training subprocess")
    r.add_argument("--skip-colocate", action="store_true", help="do not attempt TRL's vLLM colocate mode")
    r.add_argument("--skip-mixture-check", action="store_true",
                   help="do not check / time the Nash-MD mixture samplers (check-mixture)")
    r.set_defaults(func=run)

    w = sub.add_parser("trl-worker", help="one TRL run (inside a TRL venv)")
    shared(w)
    w.add_argument("--method", choices=[m for m, s in METHODS.items() if s["side"] == "trl"], required=True)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--iterations", type=int, default=10)
    w.add_argument("--prompts-per-iteration", type=int, default=8)
    w.add_argument("--lr", type=float, default=1e-3)
    w.add_argument("--run-dir", type=Path, required=True)
    w.add_argument("--vllm-colocate", action="store_true")
    w.set_defaults(func=trl_worker)

    c = sub.add_parser("check-mixture", help="Nash-MD mixture sampler: correctness and cost (.venv-trl-nashmd)")
    shared(c)
    c.add_argument("--result", type=Path, required=True, help="JSON file to write")
    c.set_defaults(func=check_mixture)

    e = sub.add_parser("evaluate", help="win-rates + report (in .venv-lm)")
    shared(e)
    e.add_argument("--out", type=Path, default=ROOT / "bench" / "trl")
    e.add_argument("--eval-samples", type=int, default=16)
    e.add_argument("--eval-seed", type=int, default=12345)
    e.add_argument("--total-start", type=float, default=None, help=argparse.SUPPRESS)
    e.set_defaults(func=evaluate)
    return top


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "trl-worker", "check-mixture", "evaluate", "-h", "--help"):
        argv = ["run"] + argv
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
