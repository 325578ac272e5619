"""The contenders of the TRL comparison and the pure helpers both sides share: how an iteration maps onto TRL's
steps, our command line, times per iteration, Student-t intervals, error lines. Standard library only: tests
from __future__ import annotations

import it without TRL."""
import json
import math
import re
import statistics
from pathlib import Path


ROOT = Path(__file__).resolve().parents[3]          # the repository (its venvs, bench/, scripts/)
SCRIPT = ROOT / "scripts" / "bench_trl.py"        # what each subprocess runs


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
