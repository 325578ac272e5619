"""The options of `nashpref train`: one dataclass (its field docstrings are `--help`), validated on itself."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

from nashpref.checks import choice, integer, number
from nashpref.errors import BadInput
from nashpref.io import jsonable
from nashpref.solvers import REGISTRY, Solver, option_field

__all__ = ["TrainConfig", "make_solver", "describe_config", "RESUMABLE_CHANGES", "changed_options"]


@dataclasses.dataclass
class TrainConfig:
    """Train a causal language model by self-play under a preference oracle with one of the registered solvers.
    Writes OUT/metrics.jsonl, OUT/rounds/, OUT/checkpoints/ and OUT/final/ (a transformers checkpoint)."""

    policy: str
    """The policy to train: a transformers causal-LM hub id or a local directory (with its tokenizer)."""
    preference: str
    """Preference oracle P(a ≻ b | x): reward:PATH (Bradley-Terry over a reward model), pairwise:PATH (a pairwise
    classifier read in both orders), judge:PATH (an instruction model, position-swapped; judge:vllm:PATH answers with its own vLLM engine, one per
    rank under torchrun), rule:NAME (length, warm,
    cyclic), python:FILE.py:NAME (your function (prompts, a, b) -> list of P(a ≻ b)), mix:W1=SPEC1;W2=SPEC2 (a
    weighted mixture of oracles), ensemble:min:PATH1,PATH2 / ensemble:mean-std@C:PATH1,PATH2 (reward models
    aggregated pessimistically, then Bradley-Terry) or maxmin:SPEC1;SPEC2 (user groups: each query batch weighs
    the groups whose win-rate against the reference is lowest; maxmin:hedge@ETA:…, maxmin:argmin:…) or linear:DIR
    (a fit-preference --model bt-linear|skew-bilinear fit)."""
    prompts: str
    """Prompts: a local .jsonl / .json / .parquet / .csv file, a directory written by datasets' save_to_disk, or a
    hub dataset id."""
    solver: str
    """Solver (its own options are --<solver>.<option>)."""
    out: Path
    """Output directory (created once every input has been checked)."""
    reference: str | None = None
    """The reference policy μ of the KL term: a causal-LM id or directory with the policy's tokenizer. Default:
    the policy's initial weights (a separate frozen copy; with LoRA the frozen base model)."""
    prompt_column: str = "prompt"
    """Column holding the prompts (text, or a list of chat messages with 'role' and 'content')."""
    prompt_split: str = "train"
    """Dataset split to read when --prompts is a hub id or a saved DatasetDict."""
    max_prompts: int | None = None
    """Use only the first this many prompts of the file (default: all)."""
    heldout: int = 8
    """Prompts held out (drawn with --seed) to evaluate each iterate on; they are never trained on. 0: no
    evaluation."""
    tau: float = 0.1
    """KL strength τ of the game max_π min_π' P(π ≻ π') − τ KL(π‖μ) + τ KL(π'‖μ) (solvers of the unregularised
    game, SPPO and DNO, ignore it)."""
    sampler: Literal["auto", "vllm", "hf"] = "auto"
    """Who generates the responses: an in-process vLLM engine (weights synced after every iteration) or
    transformers generate. auto: vllm when it is installed, else hf."""
    iterations: int = 3
    """Self-play iterations (rounds). With --resume: the total, counting the iterations already done."""
    samples: int = 4
    """K: responses sampled per prompt per round (solvers that compare pairs use K of them, or K pairs)."""
    prompts_per_round: int | None = None
    """Training prompts drawn (without replacement) per round; default: every training prompt."""
    payoff: Literal["probability", "log-odds"] = "probability"
    """What the game pays: the oracle's P(a ≻ b), or its log-odds log(P/(1 − P)) (under Bradley-Terry the
    equilibrium is then the RLHF policy μ·exp(r/τ)/Z). log-odds is played as the equivalent probability game
    ½ + c·log-odds at strength c·τ, with P clipped to [ε, 1 − ε] (ε of float32) and c = 1/(2 log((1 − ε)/ε))
    ≈ 0.0314, recorded as payoff_scale in config.json (docs/theory.md)."""
    labels: Literal["exact", "bernoulli"] = "exact"
    """Preference signal given to the solver: the oracle's probability P(a ≻ b), or one Bernoulli 0/1 label."""
    epochs: int = 1
    """Passes over each round's batch."""
    minibatches: int = 1
    """Optimizer steps per epoch (the round's prompts are shuffled and split into this many parts)."""
    grad_accumulation: int = 1
    """Micro-batches per optimizer step: each minibatch's loss is computed and back-propagated in this many
    parts, so only one part's activations are in memory (the gradient is the same up to rounding)."""
    lr: float = 1e-6
    """Learning rate of AdamW."""
    lr_decay: float = 1.0
    """Multiply the learning rate by this after every iteration (iteration t trains at lr · lr_decay^(t−1));
    1: constant. Below 1 it lets self-play settle instead of circling an intransitive preference's equilibrium."""
    lr_warmup: int = 0
    """Ramp the learning rate up over this many first iterations: iteration t ≤ lr_warmup trains at
    lr · t/(lr_warmup + 1) (times the decay). Adam's first steps move every weight by about lr whatever the noise in
    its gradient (m̂/√v̂ = sign(g) at step 1); the ramp keeps that noise from reshaping the policy."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay β1. Each round takes one optimizer step (per epoch and minibatch), so β1 carries
    earlier rounds' gradients into this round's update: momentum on the game's dynamics, which overshoots an
    equilibrium it has reached; 0 makes each step depend on its own round only."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this before each step (None: no clipping)."""
    seed: int = 0
    """Seed of every random draw: the held-out split, prompts per round, minibatches, samples and labels."""
    max_new_tokens: int = 128
    """Maximum response length in tokens."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy). The solvers' theory assumes 1: samples from π itself."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1: off)."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    eval_samples: int = 4
    """Responses per held-out prompt and policy; win-rates compare all eval_samples² pairs."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype for the policy, the reference, the oracle model and vLLM. auto: bf16 on a GPU that
    supports it, else float32."""
    device: str | None = None
    """Torch device of the models (default: cuda when available, else cpu)."""
    lora_rank: int = 0
    """LoRA rank (peft); 0 trains every weight. With LoRA the reference is the frozen base model (or
    --reference), never "the adapter switched off"."""
    lora_alpha: float | None = None
    """LoRA scaling α (default: 2 × rank)."""
    lora_target_modules: str = "all-linear"
    """Modules that get adapters: 'all-linear' or a comma-separated list of module names."""
    gpu_memory_utilization: float = 0.5
    """[vllm] Share of GPU memory the engine may take (the policy, reference and optimizer need the rest)."""
    tensor_parallel_size: int = 1
    """[vllm] Devices the engine shards the model over; under torchrun, ranks per engine (must divide the ranks)."""
    enable_sleep_mode: bool = False
    """[vllm] Free the engine's GPU memory between rounds (sleep after sampling, wake for the next sync)."""
    vllm_compile: bool = False
    """[vllm] On CPU, compile the engine's model (torch.compile) instead of running it eagerly: 30-80 s more at
    start for 1.0-1.5x the sampling speed (bench/vllm-mixture). On a GPU vLLM compiles by default."""
    max_model_len: int | None = None
    """[vllm] Longest prompt + response the engine accepts (default: the model's)."""
    verify_sync: bool = True
    """[vllm] After every weight sync, compare the engine's log-probs with the policy's on a probe batch and stop
    with an error above the tolerance."""
    sync_tolerance: float | None = None
    """[vllm] Largest accepted mean |Δ log-prob| per probe token (default: 1e-3 in float32, 3e-2 in bf16)."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint (the other options must match the first run's)."""
    backend: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    """Processes: single (one process), fsdp (FSDP2: parameters, gradients and optimizer sharded over the torchrun
    ranks) or ddp (a full replica per rank). auto: fsdp under torchrun, else single. A resumed fsdp/ddp run may
    use another number of ranks."""
    timeout: float = 600.0
    """[ddp/fsdp] Seconds a collective waits for the other ranks before the job stops with an error (a rank
    that died or hangs)."""

    def validate(self) -> None:
        """Raise BadInput (one line naming the option) for any option out of range."""
        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        for name in ("iterations", "samples", "epochs", "minibatches", "grad_accumulation", "max_new_tokens",
                     "eval_samples", "tensor_parallel_size"):
            integer(getattr(self, name), flag(name), 1)
        for name in ("heldout", "top_k", "lora_rank"):
            integer(getattr(self, name), flag(name), 0)
        for name in ("prompts_per_round", "max_prompts", "max_model_len"):
            integer(getattr(self, name), flag(name), 1, allow_none=True)
        number(self.lr, "--lr")
        number(self.lr_decay, "--lr-decay", 0.0, 1.0)
        number(self.adam_beta1, "--adam-beta1", 0.0, 0.999, low_open=False)
        integer(self.lr_warmup, "--lr-warmup", 0)
        number(self.timeout, "--timeout")
        for name in ("weight_decay", "tau", "temperature"):
            number(getattr(self, name), flag(name), low_open=False)
        for name in ("top_p", "gpu_memory_utilization"):
            number(getattr(self, name), flag(name), 0.0, 1.0)
        for name in ("max_grad_norm", "sync_tolerance", "lora_alpha"):
            number(getattr(self, name), flag(name), allow_none=True)
        for name, allowed in {"sampler": ("auto", "vllm", "hf"), "labels": ("exact", "bernoulli"),
                              "payoff": ("probability", "log-odds"),
                              "backend": ("auto", "single", "ddp", "fsdp"),
                              "dtype": ("auto", "float32", "bfloat16", "float16")}.items():
            choice(getattr(self, name), flag(name), allowed)


def make_solver(config: TrainConfig) -> Solver:
    """The solver named by ``config.solver`` with its options (``config.<solver>`` when present)."""
    if config.solver not in REGISTRY:
        raise BadInput(f"--solver {config.solver!r}: unknown solver; choose one of: {', '.join(REGISTRY)}")
    cls = REGISTRY[config.solver]
    options = getattr(config, option_field(config.solver), None)
    if options is not None and not isinstance(options, cls.Config):
        raise BadInput(f"--solver {config.solver}: options must be a {cls.__name__}.Config, "
                       f"got {type(options).__name__}")
    solver = cls(options)
    if cls.needs_tau and not config.tau > 0:
        raise BadInput(f"--solver {config.solver} needs --tau > 0 (it solves the KL-regularised game), "
                       f"got {config.tau}")
    return solver


def describe_config(config: TrainConfig, solver: Solver) -> dict:
    """The run's options as JSON (OUT/config.json), with the solver's options under ``solver_options``."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    if config.payoff == "log-odds":
        from nashpref.preferences.payoff import log_odds_scale

        fields["payoff_scale"] = log_odds_scale()
    return jsonable(fields | {"solver_options": dataclasses.asdict(solver.config)})


# Options that may differ between a run and its resumption: they do not change the trajectory.
RESUMABLE_CHANGES = ("iterations", "resume", "out", "device", "timeout")
# Options added after runs were already written, with the value those runs trained with (their config.json lacks
# the key): ``changed_options`` fills them in, so such a run still resumes and is still recognised.
LATER_OPTIONS = {"adam_beta1": 0.9}


def changed_options(stored: Path, described: dict) -> list[str]:
    """The options, other than RESUMABLE_CHANGES, on which the run whose config.json is ``stored`` differs from
    ``described`` (a ``describe_config``), compared as JSON; options added since that run (LATER_OPTIONS) count at
    the values it trained with."""
    before = LATER_OPTIONS | json.loads(stored.read_text(encoding="utf-8"))
    now = json.loads(json.dumps(described))
    return sorted(key for key in set(before) | set(now)
                  if key not in RESUMABLE_CHANGES and before.get(key) != now.get(key))
