"""The options of ``nashpref bench llm`` and the per-run budget they resolve to."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from nashpref.benchmarks.llm.setup import SIZES
from nashpref.errors import BadInput
from nashpref.lm.build import sampler_kind
from nashpref.solvers import REGISTRY


@dataclass
class LLMBenchConfig:
    """Race every solver against iterative DPO on a tiny language model under a known intransitive preference.
    Presets quick / full: the known-answer race (rule:cycle, μ far from the equilibrium, the exact class-game gap
    per iteration; OUT/results.json, OUT/README.md, OUT/gap.png, OUT/target.png, OUT/league.png); raters: the
    earlier race under rule:raters (OUT/llm.png). Finished runs in OUT/runs are reused, so a killed benchmark resumes."""

    preset: Literal["quick", "full", "pairwise", "raters"] = "quick"
    """quick: 1 seed × 24 iterations (≤ 10 min on 2 CPU cores); full: 3 seeds × 24 iterations (reuses quick's
    runs); pairwise: the open-ended race under a learned pairwise classifier (OUT/win-rate.png), 1 seed;
    raters: the earlier rule:raters race (μ near its equilibrium)."""
    out: Path | None = None
    """Output directory: setup/ (the model and prompts), runs/ (one training run per method and seed), and the
    report. Default: bench/llm (quick, full), bench/llm-pairwise (pairwise), bench/llm-raters (raters)."""
    size: Literal["tiny", "small", "base"] = "tiny"
    """tiny: a 64-wide 2-layer Llama, 0.3–7 s per iteration on a 2-core CPU (the default run took 19.5 min there);
    small (256 wide, 4 layers) and base (512 wide, 8 layers): more prompts, samples and iterations, for a GPU."""
    methods: tuple[str, ...] = tuple(REGISTRY)
    """Methods to race (solver names); iterative-dpo is the baseline every other is compared with."""
    seeds: tuple[int, ...] | None = None
    """Training seeds (each method runs once per seed; intervals are over seeds). Default: the preset's."""
    iterations: int | None = None
    """Self-play iterations per run (default: the size's)."""
    samples: int | None = None
    """Responses per prompt per iteration (default: the size's)."""
    lr: float | None = None
    """AdamW learning rate (default: the size's)."""
    lr_decay: float | None = None
    """quick / full: multiply the learning rate by this after every iteration (default: the preset's, 0.95 from
    1e-3: 3.1e-4 at iteration 24)."""
    tuned: bool = True
    """quick / full: train each solver with its race setting (lr schedule, AdamW β1, solver options; listed in
    nashpref/benchmarks/llm/race.py RACE_SETTINGS, chosen on seeds 3–6, never on the reported 0–2). --no-tuned:
    every solver at the preset's schedule and its default options. --lr / --lr-decay, when given, apply to every
    solver."""
    tau: float = 0.1
    """KL-regularisation strength τ of the game."""
    max_new_tokens: int | None = None
    """Longest response, in tokens (default: the size's)."""
    eval_samples: int | None = None
    """Responses per held-out prompt for scoring each final policy (default: the size's)."""
    sampler: Literal["auto", "vllm", "hf"] = "auto"
    """Sampling engine: vllm (one engine shared by every run), hf (transformers generate), auto (vllm if
    installed)."""
    device: str | None = None
    """Torch device of the trained models (default: cuda if available, else cpu)."""
    setup_seed: int = 0
    """Seed of the setup: the model, its SFT corpus and the prompts."""
    fresh: bool = False
    """Discard finished runs in OUT/runs and train again."""
    progress: bool = True
    """Show progress bars on stderr."""


@dataclass
class Budget:
    """The resolved per-run budget."""

    iterations: int
    samples: int
    lr: float
    max_new_tokens: int
    eval_samples: int


def resolve_defaults(config: LLMBenchConfig) -> LLMBenchConfig:
    """``out`` and ``seeds`` filled in from the preset."""
    out = config.out or Path({"raters": "bench/llm-raters", "pairwise": "bench/llm-pairwise"}.get(config.preset,
                                                                                                  "bench/llm"))
    seeds = config.seeds or ((0,) if config.preset in ("quick", "pairwise") else (0, 1, 2))
    return replace(config, out=out, seeds=seeds)


def resolve_budget(config: LLMBenchConfig) -> Budget:
    spec = SIZES[config.size]
    return Budget(iterations=config.iterations or spec.iterations, samples=config.samples or spec.samples,
                  lr=config.lr or spec.lr, max_new_tokens=config.max_new_tokens or spec.max_new_tokens,
                  eval_samples=config.eval_samples or spec.eval_samples)


def validate(config: LLMBenchConfig) -> None:
    """BadInput for bad options, before anything is written."""
    unknown = [m for m in config.methods if m not in REGISTRY]
    if unknown:
        raise BadInput(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(REGISTRY)}")
    if not config.methods or len(set(config.methods)) != len(config.methods):
        raise BadInput("--methods: give one or more distinct solver names")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise BadInput("--seeds: give one or more distinct seeds")
    for name in ("iterations", "samples", "max_new_tokens", "eval_samples"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise BadInput(f"--{name.replace('_', '-')} {value}: must be ≥ 1")
    if config.samples is not None and config.samples < 2:
        raise BadInput(f"--samples {config.samples}: self-play needs ≥ 2 responses per prompt")
    if config.lr is not None and not config.lr > 0:
        raise BadInput(f"--lr {config.lr}: must be > 0")
    if config.lr_decay is not None and not 0 < config.lr_decay <= 1:
        raise BadInput(f"--lr-decay {config.lr_decay}: must be in (0, 1]")
    if not config.tau > 0:
        raise BadInput(f"--tau {config.tau}: must be > 0")
    if config.out.exists() and not config.out.is_dir():
        raise BadInput(f"--out {config.out}: exists and is not a directory")
    from nashpref.lm.loading import require_lm_extra

    require_lm_extra("bench llm")
    sampler_kind(config)                # --sampler vllm without vllm installed fails here
